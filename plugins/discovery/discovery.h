/*
 * discovery.h — the inside of discovery.so: the instance, its clusters, the
 * table of operations each source (dns.c, file.c, etcd.c) implements, and
 * the helpers every source uses (discovery.c, parse.c).
 *
 * Internal to the plugin: nothing here is part of the host ABI. Only
 * <sidekick/plugin.h> and standard headers are included.
 *
 * ---- The source contract ----
 *
 * Threads: everything of a source runs on the main thread, driven by the
 * main loop: its ops are called from the plugin's create / on_cluster /
 * destroy (main thread), and whatever else it does runs from callbacks of
 * host->timer_start(host->main_loop(), ...), host->watch_fd(host->main_loop(),
 * ...) and host->http_start(...). A source never blocks (no blocking
 * connect, read, sleep or name lookup) and never runs on a worker: workers
 * see endpoints only through the host's set_endpoints_* calls, which
 * dsc_publish makes.
 *
 * Lifetimes: the dsc_inst lives from the plugin's create until its destroy;
 * each dsc_cluster from add_cluster until destroy. A source's timers,
 * watches and HTTP calls must all be stopped by ops->destroy: the host would
 * otherwise stop them with a warning (and an HTTP call in flight gets
 * on_done(SK_HTTP_ECANCELLED) just before destroy: a source must not start
 * anything new from that callback). Timers are one-shot and freed by the
 * host just before their callback runs: clear the handle first thing in the
 * callback, never timer_stop it from there.
 *
 * Results: a source reports each answer of a cluster with exactly one of
 *   dsc_publish(cl, eps, n)   a good answer (n may be 0: an empty service),
 *   dsc_stale(cl, fmt, ...)   a failed refresh: the last good endpoints stay,
 * and counts instance-wide events with dsc_count when no cluster is concerned.
 */
#ifndef SK_DISCOVERY_H
#define SK_DISCOVERY_H

#include <sidekick/plugin.h>

#include <stddef.h>
#include <stdint.h>

#define DSC_MAX_ENDPOINTS 4096  /* endpoints of one cluster; more are dropped with a log line */
#define DSC_MAX_WEIGHT    10000 /* the host's largest weight */
#define DSC_ADDR_LEN      56    /* "[" v6 "]:" port, NUL included (INET6_ADDRSTRLEN + 8) */

typedef struct dsc_inst dsc_inst;
typedef struct dsc_cluster dsc_cluster;

/* What one answer did, the `result` label of
 * sidekick_plugin_discovery_updates_total. */
typedef enum dsc_result {
    DSC_APPLIED = 0,   /* a new endpoint set went to the host */
    DSC_UNCHANGED = 1, /* a good answer equal to the current set */
    DSC_FAILED = 2,    /* a refresh failed or its data did not parse; the last good set stays */
    DSC_NRESULTS = 3,
} dsc_result;

/*
 * A source's table of operations. One of dsc_file_ops, dsc_dns_ops,
 * dsc_etcd_ops, chosen by `source =`.
 */
typedef struct dsc_source_ops {
    /* "file", "dns", "etcd": the value of `source =`, the `source` label of
     * the metric and the source shown with each endpoint in /clusters. */
    const char *name;
    /* The instance's keys except `source` (host-owned, valid during the call
     * only: copy what is kept). Refuses unknown keys and bad values, naming
     * the key and its line (keys[i].line). May set inst->priv and start
     * instance-wide work (a shared connection). 0, or -1 with a message in
     * err (errsz bytes, "dns: line 4: ..."). After -1, ops->destroy is still
     * called: it must cope with a partly made instance (priv may be NULL). */
    int (*create)(dsc_inst *inst, const sk_kv *keys, size_t n, char *err, size_t errsz);
    /* A cluster naming this instance (`discovery = NAME ARG`), after create,
     * from the host's on_cluster. `arg` is ARG (never NULL nor empty: the
     * core refuses that first; the same string as cl->arg). Validates it,
     * may set cl->priv and start the first lookup / watch; may call
     * dsc_publish at once (the set then serves from the first request).
     * 0, or -1 with a message in err: the config is refused. After -1 the
     * cluster stays in inst->clusters and ops->destroy frees its priv. */
    int (*add_cluster)(dsc_inst *inst, dsc_cluster *cl, const char *arg, char *err, size_t errsz);
    /* Stops everything the source started (timers, watches, HTTP calls,
     * sockets, fds) and frees inst->priv and every cl->priv of
     * inst->clusters. The core frees the dsc_cluster structs and the
     * instance afterwards. Never calls dsc_publish / dsc_stale. */
    void (*destroy)(dsc_inst *inst);
} dsc_source_ops;

extern const dsc_source_ops dsc_file_ops, dsc_dns_ops, dsc_etcd_ops;

/* One cluster that names this instance. Owned by the core. */
struct dsc_cluster {
    dsc_inst *inst;
    dsc_cluster *next; /* in inst->clusters, in file order */
    char *name;        /* the cluster's name (copy) */
    char *arg;         /* ARG of `discovery = NAME ARG` (copy, trimmed) */
    void *priv;        /* the source's per-cluster state */

    /* the last good set (what the host has), sorted by address, deduped */
    sk_weighted_endpoint *eps; /* neps entries; addresses point into addrs */
    char (*addrs)[DSC_ADDR_LEN];
    size_t neps;
    int published;     /* 1 once a set went to the host */
    int stale;         /* 1 while the last refresh failed (as told to the host) */
    char state[256];   /* the last stale message, to log a repeated one only once */
    int64_t good_unix; /* wall-clock time of the last good answer (s), 0 = none yet */
};

/* One [plugin NAME] instance of discovery.so. */
struct dsc_inst {
    const sk_host_api *host;
    sk_instance *self;
    const char *name;             /* instance name (host-owned, valid until destroy returns) */
    const dsc_source_ops *source; /* from `source =` */
    void *priv;                   /* the source's instance state */
    dsc_cluster *clusters;        /* in file order */
    size_t nclusters;
    sk_metric *updates; /* sidekick_plugin_discovery_updates_total */
    int updates_vec;    /* 1: counter_vec {source,result}; 0: counter_labelled {result} */
    int has_from;       /* the host has set_endpoints_from and cluster_state (ABI 1.2) */
};

/* ---- helpers (discovery.c) ---- */

/* Logs one line through host->log (prefixed with the instance name by the
 * host). Any thread, but sources only log from the main thread. */
void dsc_log(dsc_inst *inst, int level, const char *fmt, ...) SK_PLUGIN_PRINTF(3, 4);

/* Adds 1 to sidekick_plugin_discovery_updates_total{result}. dsc_publish
 * and dsc_stale count for themselves; this is for answers no cluster owns. */
void dsc_count(dsc_inst *inst, dsc_result result);

/*
 * A good answer for cl: n endpoints (copied; "ip:port" / "[v6]:port",
 * weights 1..DSC_MAX_WEIGHT; n may be 0 = no endpoint, 503
 * no_healthy_upstream). Entries are sorted and duplicate addresses merged
 * (weights added, capped at DSC_MAX_WEIGHT); more than DSC_MAX_ENDPOINTS are
 * cut with a warning. A set equal to the current one is not sent again
 * (counted `unchanged`; a stale cluster is told it is current again);
 * otherwise it goes to the host with set_endpoints_from(source) on an ABI
 * 1.2 host, set_endpoints_weighted before, and is counted `applied`. Ends a
 * stale state (logged). 1 (applied), 0 (unchanged), or -1 when the host
 * refused the set (logged, counted `failed`, the previous set stays).
 */
int dsc_publish(dsc_cluster *cl, const sk_weighted_endpoint *eps, size_t n);

/*
 * A failed refresh of cl: the endpoints stay as they are. The message
 * (printf-style, e.g. "dns: timeout") gets "; keeping N endpoint(s) from
 * HH:MM:SSZ" or "; no answer yet" appended, goes to the host's
 * cluster_state (ok = 0, /clusters) when it has one, and to the log as a
 * warning when it differs from the previous message (a repeated failure is
 * logged at debug level only). Counted `failed`.
 */
void dsc_stale(dsc_cluster *cl, const char *fmt, ...) SK_PLUGIN_PRINTF(2, 3);

/* The cluster of inst named `name`, or NULL. */
dsc_cluster *dsc_cluster_find(dsc_inst *inst, const char *name);

/* Milliseconds of CLOCK_MONOTONIC. */
uint64_t dsc_now_ms(void);

/* A retry delay for the `attempt`-th failure in a row (1, 2, ...): base_ms
 * doubled per attempt, capped at max_ms, minus up to 25 % random jitter;
 * never below 1 ms. */
uint64_t dsc_backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t max_ms);

/* ---- parsing (parse.c: no host, no I/O; the fuzz target builds it alone) ---- */

/* A duration as in the rest of the config: a whole number with ms, s or m,
 * or bare for seconds ("50ms", "1s", "5m", "30"), in min_ms..max_ms. 0 and
 * *ms, or -1. */
int dsc_parse_duration(const char *v, uint64_t min_ms, uint64_t max_ms, uint64_t *ms);

/* on / off. 0 and *out 1 / 0, or -1. */
int dsc_parse_bool(const char *v, int *out);

/* A whole number in lo..hi, nothing else. 0 and *out, or -1. */
int dsc_parse_uint(const char *v, unsigned long long lo, unsigned long long hi, unsigned long long *out);

/* One HOST:PORT of a list. */
typedef struct dsc_hostport {
    char host[256]; /* a name or a numeric address, without [] */
    uint16_t port;  /* 1..65535 */
    int family;     /* AF_INET or AF_INET6 for a numeric address, 0 for a name */
} dsc_hostport;

/* "1.2.3.4:80", "[::1]:80" or "name:80" (s[0..len)): the port is required
 * (1..65535); an IPv6 address needs brackets; a name is [A-Za-z0-9.-_]+
 * (allow_names, else refused). 0, or -1. */
int dsc_parse_hostport(const char *s, size_t len, int allow_names, dsc_hostport *out);

/* A comma- (and/or space-) separated list of HOST:PORT, at most max
 * entries, into out[0..*n). 0, or -1 with a message in err naming the bad
 * entry (no key or line: the caller prefixes them). */
int dsc_parse_hostports(const char *list, int allow_names, dsc_hostport *out, size_t max, size_t *n,
                        char *err, size_t errsz);

/* The endpoint text of a numeric address and port: "1.2.3.4:80" or
 * "[::1]:80" (canonical form, inet_ntop) into buf (DSC_ADDR_LEN bytes).
 * family AF_INET (4 bytes at addr) or AF_INET6 (16 bytes). */
void dsc_format_addr(int family, const void *addr, uint16_t port, char buf[DSC_ADDR_LEN]);

/* ---- the endpoint file format (parse.c) ---- */

/* A parsed endpoint list: what a file's text says. */
typedef struct dsc_eplist {
    sk_weighted_endpoint *eps; /* n entries; addresses point into addrs */
    char (*addrs)[DSC_ADDR_LEN];
    size_t n, cap;
} dsc_eplist;

/*
 * Parses text[0..len) as an endpoint file: one "ADDRESS:PORT [WEIGHT]" per
 * line, ADDRESS numeric IPv4 or [IPv6] (host names are refused: a file
 * source never resolves names), WEIGHT 1..10000 (default 1); '#' starts a
 * comment (whole line or after the fields); blank lines, spaces, tabs and
 * CRLF are fine; a NUL byte is an error. At most DSC_MAX_ENDPOINTS entries.
 * On success 0 and *out filled (free with dsc_eplist_free); on the first
 * bad line -1, *bad_line = its number (1-based) and a message in err
 * ("bad port '99999'"); *out is then empty.
 */
int dsc_parse_endpoints(const char *text, size_t len, dsc_eplist *out, int *bad_line, char *err,
                        size_t errsz);
void dsc_eplist_free(dsc_eplist *l);

/* The smallest TTL (seconds) of the answer and authority records of the
 * DNS message msg[0..len) (a TTL with its top bit set counts as 0, RFC
 * 2181). The number of such records (0: *ttl = 0), or -1 when the message
 * is malformed or cut short. Used for SRV answers, whose TTL c-ares 1.18
 * does not report. */
int dsc_dns_min_ttl(const unsigned char *msg, size_t len, uint32_t *ttl);

/* The endpoint weight of each of the naddrs addresses of an SRV target of
 * weight `weight` (0..65535), in a priority group whose heaviest target
 * has max_weight: weight * 10000 / max_weight, divided among the addresses,
 * at least 1 (RFC 2782's weight 0 = the smallest share, not excluded); 1
 * when every weight of the group is 0 (equal shares). */
uint32_t dsc_srv_weight(unsigned weight, unsigned max_weight, size_t naddrs);

#endif
