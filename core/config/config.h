/*
 * config.h — the typed, validated configuration built from one INI file.
 *
 * sk_config_load() parses the file with inih and validates it into an
 * sk_config: immutable after load (except the documented runtime counters and
 * upstream state of sk_cluster) and reference-counted, so that a later reload can publish a new
 * one while requests still hold the old one. Every object below is owned by
 * its sk_config and lives exactly as long as it.
 */
#ifndef SK_CONFIG_H
#define SK_CONFIG_H

#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include "sk.h"

typedef struct sk_config sk_config;
typedef struct sk_listener sk_listener;
typedef struct sk_route sk_route;
typedef struct sk_cluster sk_cluster;
typedef struct sk_instance sk_instance; /* a [plugin NAME] instance: plugin_host.h */
typedef struct sk_tls sk_tls;

/* A socket address parsed from "host:port" or "[v6]:port". */
typedef struct sk_addr {
    struct sockaddr_storage ss; /* the address, AF_INET or AF_INET6 */
    socklen_t len;              /* its length for bind/connect */
    char text[64];              /* canonical "ip:port" / "[ip]:port" for logs and JSON */
} sk_addr;

enum sk_protocol { SK_PROTO_HTTP = 0, SK_PROTO_TCP = 1 };
/* `escaped_slashes` of a listener: what an encoded slash (%2F) in a path does. */
enum sk_escaped_slashes {
    SK_ESCAPED_SLASHES_REJECT = 0, /* 400 bad_request (default) */
    SK_ESCAPED_SLASHES_KEEP,       /* stays %2F, part of its segment */
    SK_ESCAPED_SLASHES_DECODE,     /* becomes "/" before dot-segment removal */
};
enum sk_lb { SK_LB_ROUND_ROBIN = 0, SK_LB_LEAST_REQUEST, SK_LB_RANDOM, SK_LB_RING_HASH, SK_LB_EWMA };
/* `hash_key` of a ring_hash cluster: what of a request is hashed. */
enum sk_hash_key {
    SK_HASH_NONE = 0,  /* no key: round robin */
    SK_HASH_HEADER,    /* header:NAME, the first value of that request header */
    SK_HASH_COOKIE,    /* cookie:NAME, the value of that cookie */
    SK_HASH_CLIENT_IP, /* client_ip, the downstream peer's address (without port) */
};

/* What makes a failed attempt retryable: the `retry_on` conditions of a
 * route (a bit each, SK_RETRY_BIT), and the `retry_reason` of the access
 * log and metrics. A try cut by per_try_timeout is retried under `504`. */
enum sk_retry_cond {
    SK_RETRY_NONE = 0,            /* no retry (yet) */
    SK_RETRY_CONNECT_FAILURE = 1, /* connect-failure: refused, timed out, TLS or identity failure */
    SK_RETRY_RESET,               /* reset: closed or reset before any response byte */
    SK_RETRY_502,                 /* 502: a 502 answer */
    SK_RETRY_503,                 /* 503 */
    SK_RETRY_504,                 /* 504 */
    SK_RETRY_409,                 /* retriable-4xx: a 409 answer */
    SK_RETRY_PER_TRY_TIMEOUT,     /* per_try_timeout expired (enabled by `504`) */
    SK_RETRY_CONDS                /* number of values */
};
#define SK_RETRY_BIT(c) (1u << (c))
/* `retry_on` when the route does not set it: what `retries` always retried. */
#define SK_RETRY_ON_DEFAULT                                                                               \
    (SK_RETRY_BIT(SK_RETRY_CONNECT_FAILURE) | SK_RETRY_BIT(SK_RETRY_RESET) | SK_RETRY_BIT(SK_RETRY_502) | \
     SK_RETRY_BIT(SK_RETRY_503) | SK_RETRY_BIT(SK_RETRY_504))
/* A share (retry_budget, mirror and fault rates) in parts per million. */
#define SK_PPM 1000000u
/* `retry_budget = off` */
#define SK_RETRY_BUDGET_OFF UINT32_MAX
/* Longest fault delay (`fault_delay`, x-sidekick-fault-delay). */
#define SK_FAULT_DELAY_MAX_MS 60000
/* Seconds of the retry budget's sliding window (Linkerd's and Finagle's ttl). */
#define SK_RETRY_BUDGET_WINDOW 10
/* The text of a retry cause, as retry_on writes it and the access log's
 * retry_reason shows it ("connect-failure", ..., "409", "per-try-timeout");
 * NULL for SK_RETRY_NONE. */
const char *sk_retry_cond_name(int cond);

/* `verify` of a [tls] section; the values of net/tls.h's sk_tls_verify. */
enum sk_verify { SK_VERIFY_NONE = 0, SK_VERIFY_OPTIONAL = 1, SK_VERIFY_REQUIRED = 2 };

/* [tls NAME]: certificates and peer checks for listeners (server side)
 * and clusters (client side) that name it. */
struct sk_tls {
    char *name;              /* section name */
    int index;               /* position in sk_config.tls */
    char *cert;              /* `cert`: absolute path of the PEM chain, or NULL */
    char *key;               /* `key`: absolute path of its PEM private key, or NULL */
    char *ca;                /* `ca`: absolute path of the PEM trust bundle, or NULL */
    int verify;              /* `verify` as written (enum sk_verify), -1 when absent */
    int verify_server;       /* resolved for listeners: as written, else required with `ca`, else none */
    int verify_client;       /* resolved for clusters: as written, else required */
    char **peer_ids;         /* `peer_identity`: exact SPIFFE IDs or prefix/-star patterns */
    size_t npeer_ids;        /* number of them (0 = anyone verified) */
    char *sni;               /* `sni` (cluster side), or NULL */
    char *alpn;              /* `alpn`, comma-separated, default "h2,http/1.1" (listener side) */
    int min_version;         /* `min_version`: 12 or 13, default 12 */
    char *ciphers;           /* `ciphers` (wolfSSL list), or NULL for the defaults */
    bool session_tickets;    /* `session_tickets` (listener side), default on */
    bool server_side;        /* a listener terminates with it */
    bool client_side;        /* a cluster originates with it */
    int line;                /* line of the section header */
    /* The net layer's live contexts (net/tls.h sk_tls_slot), made at load
     * by sk_config_ext.tls_load; freed with the config by state_free. */
    struct sk_tls_slot *state;
    void (*state_free)(struct sk_tls_slot *state);
};

/* Is `id` (a verified SPIFFE ID, or NULL) allowed by t's peer_identity?
 * Always when the list is empty. A pattern ending in "/" followed by
 * a star matches the IDs below that prefix. */
bool sk_tls_identity_allowed(const sk_tls *t, const char *id);
/* The same over a list of n patterns (true when n is 0). */
bool sk_spiffe_allowed(char *const *ids, size_t n, const char *id);

/* One `header = NAME[: VALUE]` condition of a route. */
typedef struct sk_header_match {
    char *name;  /* lower-cased header name */
    char *value; /* exact value required, or NULL: the header only has to be present */
} sk_header_match;

/* One `lua.NAME = value` of a route (NAME without "lua."). */
typedef struct sk_lua_kv {
    char *key;
    char *value;
} sk_lua_kv;

/* One entry of a route's `cluster = a 90, b 10`. */
typedef struct sk_weighted_cluster {
    sk_cluster *cluster; /* the target (owned by the config) */
    unsigned weight;     /* relative weight 0..10000 (0 = never picked); 1 when a single cluster is named */
} sk_weighted_cluster;

/* [listener NAME] */
struct sk_listener {
    char *name;                 /* section name */
    int index;                  /* position in sk_config.listeners */
    sk_addr address;            /* `address`, required */
    int protocol;               /* `protocol`, enum sk_protocol, default http */
    sk_cluster *cluster;        /* `cluster`, protocol = tcp only (required there) */
    unsigned max_connections;   /* `max_connections`, default 10000 */
    uint64_t header_timeout_ms; /* `header_timeout`, default 10s */
    uint64_t idle_timeout_ms;   /* `idle_timeout`, default 60s */
    uint64_t max_header_bytes;  /* `max_header_bytes`, default 64k */
    unsigned max_headers;       /* `max_headers`, default 100 */
    uint64_t max_body_bytes;    /* `max_body_bytes`, default 0 = unlimited */
    bool merge_slashes;         /* `merge_slashes`, default off: "//" in paths → "/" */
    int escaped_slashes;        /* `escaped_slashes`, enum sk_escaped_slashes, default reject */
    unsigned h2_max_streams;    /* `max_concurrent_streams` of an HTTP/2 connection, default 100 */
    uint64_t h2_frame_size;     /* `http2_max_frame_size` accepted, default 16k (16k..16m-1) */
    uint64_t h2_stream_window;  /* `http2_initial_window_size` of a stream, default 64k */
    uint64_t h2_conn_window;    /* `http2_connection_window_size`, default 1m */
    sk_tls *tls;                /* `tls`: terminate TLS with this section, or NULL */
    sk_instance **plugins;      /* `plugins`, in order (owned by the config) */
    size_t nplugins;            /* number of plugins */
    sk_route **routes;          /* routes naming this listener, in file order */
    size_t nroutes;             /* number of routes */
    unsigned active_conns;      /* open connections of this generation's listener (atomic) */
    size_t metrics_row;         /* row of its requests that matched no route (obs/metrics.h) */
    int line;                   /* line of the section header, for messages */
};

/* [route NAME] */
struct sk_route {
    char *name;                    /* section name */
    int index;                     /* position in sk_config.routes */
    sk_listener *listener;         /* `listener`, required */
    char *host;                    /* `host`, lower-cased; "*.suffix" matches subdomains; NULL = any */
    char *prefix;                  /* `prefix`, default "/" (NULL when `path` is set) */
    char *path;                    /* `path`, exact match, or NULL */
    char **methods;                /* `method`, upper-case names; NULL = any */
    size_t nmethods;               /* number of methods */
    sk_header_match *headers;      /* `header`, all must match */
    size_t nheaders;               /* number of header conditions */
    sk_weighted_cluster *clusters; /* `cluster`, NULL when `respond` is set */
    size_t nclusters;              /* number of clusters */
    unsigned total_weight;         /* sum of weights */
    char *rewrite_prefix;          /* `rewrite_prefix`, replaces the matched prefix, or NULL */
    uint64_t timeout_ms;           /* `timeout`, default 15s; 0 = none */
    unsigned retries;              /* `retries`, default 0 */
    sk_instance **plugins;         /* `plugins`, after the listener's, in order */
    size_t nplugins;               /* number of plugins */
    int respond_status;            /* `respond` status, or 0 */
    char *respond_body;            /* `respond` body (may be ""), or NULL */
    char *lua;                     /* `lua`: absolute path of the route script, or NULL */
    uint64_t lua_budget_ms;        /* `lua_budget`, default 50ms: Lua time per request */
    sk_lua_kv *lua_keys;           /* `lua.NAME = value` keys, for r:config() */
    size_t nlua_keys;              /* number of them */
    char *lua_src;                 /* the script as read at load (the generation's copy) */
    size_t lua_src_len;            /* its length */
    /* Traffic management (docs/traffic.md). */
    unsigned retry_on;             /* `retry_on`: SK_RETRY_BIT()s, default SK_RETRY_ON_DEFAULT */
    uint64_t per_try_timeout_ms;   /* `per_try_timeout`, 0 = none; below `timeout` */
    uint64_t retry_backoff_ms;     /* `retry_backoff` base, default 25ms; 0 = retry at once */
    sk_cluster *mirror;            /* `mirror` cluster, or NULL */
    uint32_t mirror_ppm;           /* its share of requests */
    uint64_t fault_delay_ms;       /* `fault_delay` duration, 0 = none */
    uint32_t fault_delay_ppm;      /* its share of requests */
    int fault_abort_status;        /* `fault_abort` status, 0 = none */
    uint32_t fault_abort_ppm;      /* its share of requests */
    bool fault_headers;            /* `fault_headers`: x-sidekick-fault-* headers force faults */
    size_t metrics_row;            /* row of its request and Lua counters (obs/metrics.h) */
    int line;                      /* line of the section header */
};

/* One static endpoint of a cluster, as written in `endpoints`. */
typedef struct sk_endpoint_conf {
    sk_addr address; /* where to connect */
    int index;       /* position in the cluster's `endpoints` */
} sk_endpoint_conf;

/* Weights of endpoints: 1..SK_WEIGHT_MAX (static endpoints and set_endpoints: 1). */
#define SK_WEIGHT_MAX 10000

struct sk_cluster_state;

/* [cluster NAME] */
struct sk_cluster {
    char *name;                  /* section name */
    int index;                   /* position in sk_config.clusters */
    sk_endpoint_conf *endpoints; /* `endpoints`, at least one unless `discovery` is set */
    size_t nendpoints;           /* number of endpoints */
    char *discovery;             /* `discovery = NAME [ARG]`: the instance name, or NULL */
    char *discovery_arg;         /* ARG (the rest of the line, trimmed), or NULL */
    sk_instance *discovery_inst; /* the [plugin NAME] instance it names (owned by the config) */
    uint64_t wait_for_endpoints_ms; /* `wait_for_endpoints` (discovery only): how long /ready waits for
                                     * the first answer; 0 = no wait (default) */
    int lb;                      /* `lb`, enum sk_lb, default round_robin */
    uint64_t connect_timeout_ms; /* `connect_timeout`, default 1s */
    unsigned max_connections;    /* `max_connections`, default 1024, across all workers */
    unsigned max_pending;        /* `max_pending`, default 1024 */
    unsigned max_requests;       /* `max_requests`, default 1024 */
    unsigned max_retries;        /* `max_retries`, default 1024: requests in a retry at once */
    uint32_t retry_budget_ppm;   /* `retry_budget` share of requests, default 20%; SK_RETRY_BUDGET_OFF */
    unsigned retry_budget_min;   /* `retry_budget_min` retries per second on top, default 10 */
    sk_tls *tls;                 /* `tls`: originate TLS to the endpoints with this section, or NULL */
    int line;                    /* line of the section header */
    sk_config *config;           /* the generation it belongs to (not a reference) */
    size_t metrics_row;          /* row of its upstream counters (obs/metrics.h), by name */

    /* Traffic management (docs/traffic.md), the upstream layer's part. */
    int hash_key;                  /* `hash_key` kind, enum sk_hash_key (lb = ring_hash only) */
    char *hash_key_name;           /* its header (lower-cased) or cookie name, or NULL */
    uint64_t slow_start_ms;        /* `slow_start`: a new endpoint's weight ramps up over this; 0 = off */
    uint64_t ewma_decay_ms;        /* `ewma_decay`: time constant of lb = ewma's latency average, 10s */
    char *health_check;            /* `health_check`: path (and query) of the active check, or NULL */
    uint64_t health_interval_ms;   /* `health_interval`, default 5s */
    uint64_t health_timeout_ms;    /* `health_timeout`, default 1s */
    unsigned healthy_threshold;    /* `healthy_threshold`: passes in a row to become healthy, default 2 */
    unsigned unhealthy_threshold;  /* `unhealthy_threshold`: failures in a row to become unhealthy, 3 */
    bool health_initial_unhealthy; /* `health_initial = unhealthy`: endpoints wait for a first pass */
    unsigned outlier_failures;     /* `outlier_failures`: consecutive failures that eject, 5; 0 = off */
    uint64_t outlier_ejection_ms;  /* `outlier_ejection`: base ejection time, 30s (× ejections, ≤ 300s) */
    unsigned max_ejection_percent; /* `max_ejection_percent`, default 50 (one endpoint always may be) */
    unsigned panic_threshold;      /* `panic_threshold`: % healthy below which all get traffic, 50; 0 = off */

    /* Runtime circuit-breaker counters, shared by all workers (atomics).
     * With `upstream`, the only mutable part of a config. */
    unsigned active_connections; /* open upstream connections */
    unsigned active_pending;     /* requests waiting for a connection */
    unsigned active_requests;    /* requests in flight to this cluster */
    unsigned active_retries;     /* requests in a retry attempt (or its backoff) */
    /* The retry budget's sliding window (proxy/retry.c): per second of
     * sk_now_ms() / 1000, (second << 32) | count, SK_RETRY_BUDGET_WINDOW slots. */
    uint64_t budget_requests[SK_RETRY_BUDGET_WINDOW]; /* requests sent to the cluster */
    uint64_t budget_retries[SK_RETRY_BUDGET_WINDOW];  /* retries taken from the ratio */
    uint64_t budget_min_used;                         /* retries taken from retry_budget_min, this second */
    /* The upstream layer's state of the cluster (upstream/cluster.h: the
     * endpoint objects and the set in force), opaque here. NULL until the
     * upstream layer makes it after the load; the config frees it with
     * upstream_free, which the upstream layer sets with it. */
    struct sk_cluster_state *upstream;
    void (*upstream_free)(struct sk_cluster_state *state);
};

/* The whole configuration: one generation. */
struct sk_config {
    int refcnt;          /* references (atomic); freed at 0 */
    uint64_t generation; /* generation number, 1 for the first load */
    char *file;          /* absolute path of the INI file */
    time_t loaded_at;    /* wall-clock load time */
    uint64_t started_ms; /* sk_now_ms() when the runtime published it (start-up or reload), 0 before */

    /* [sidekick] */
    int workers;               /* `workers`, resolved: auto = number of CPUs */
    bool admin_enabled;        /* false when `admin = off` */
    sk_addr admin;             /* `admin`, default 127.0.0.1:15000 */
    char *plugin_dir;          /* `plugin_dir`, resolved against the file's directory */
    char *lua_dir;             /* `lua_dir`, resolved likewise */
    uint64_t lua_memory;       /* `lua_memory`, default 64m: cap of each worker's Lua state */
    int log_level;             /* `log_level`, SK_LOG_*, default info */
    char *access_log;          /* "stdout", "stderr", "off" or an absolute path; default stdout */
    uint64_t drain_timeout_ms; /* `drain_timeout`, default 15s */
    char *http_client_ca;      /* `http_client_ca`: CA bundle for plugins' https:// calls, NULL = system's */
    char *http_client_cert;    /* `http_client_cert` / `http_client_key`: client certificate, or NULL */
    char *http_client_key;

    sk_listener **listeners; /* in file order */
    size_t nlisteners;
    sk_route **routes; /* in file order */
    size_t nroutes;
    sk_cluster **clusters; /* in file order */
    size_t nclusters;
    sk_instance **plugins; /* [plugin NAME] instances, in file order */
    size_t nplugins;
    sk_tls **tls; /* [tls NAME] sections, in file order */
    size_t ntls;
    struct sk_lua_gen *lua;          /* Lua states of this generation (lua_filter.c), NULL without scripts */
    const struct sk_config_ext *ext; /* the extension layer that made the instances and Lua states */
};

/*
 * What a config needs of the extension layer (plugin instances, Lua
 * scripts), which sits above it: the runtime hands the extension layer's
 * table to sk_config_parse (runtime/generation.c), so this layer calls it
 * without depending on it. Main thread.
 */
typedef struct sk_config_ext {
    /* A new [plugin NAME] instance declaration at section line `line`; NULL on OOM. */
    sk_instance *(*instance_new)(const char *name, int index, int line);
    /* Its section name (owned by the instance). */
    const char *(*instance_name)(const sk_instance *pi);
    /* `load = value` at `line`: 0, -1 on OOM, or the line of an earlier `load` (> 0). */
    int (*instance_set_load)(sk_instance *pi, const char *value, int line);
    /* Any other key of the section (copied), for create. 0 or -1. */
    int (*instance_add_key)(sk_instance *pi, const char *key, const char *value, int line);
    /* Loads the .so and runs create: 0, -1 when the .so cannot be used
     * (*load_line = the `load` key's line, 0 without one), -2 when create
     * refused its keys; err holds the message without a file/line prefix. */
    int (*instance_load)(sk_instance *pi, sk_config *c, char *err, size_t err_size, int *load_line);
    /* Tells a discovery instance a cluster that names it. 0 or -1 with err. */
    int (*instance_on_cluster)(sk_instance *pi, sk_cluster *cl, char *err, size_t err_size);
    /* Destroys an instance. */
    void (*instance_free)(sk_instance *pi);
    /* Reads and runs every route script once; -1 with *bad_route and err. */
    int (*lua_load)(sk_config *c, int *bad_route, char *err, size_t err_size);
    /* Frees the Lua states of a generation (NULL is ignored). */
    void (*lua_free)(struct sk_lua_gen *g);
    /* Reads a [tls] section's files into its live contexts (t->state and
     * t->state_free set): 0, or -1 with err and *key = the key to blame
     * ("cert", "key", "ca", "ciphers", ...; NULL for the section). */
    int (*tls_load)(sk_tls *t, char *err, size_t err_size, const char **key);
} sk_config_ext;

/* The cluster named `name`, or NULL. */
sk_cluster *sk_config_cluster(const sk_config *c, const char *name);

/*
 * Reads and validates `path`, then (last, once everything else is valid)
 * has `ext` load every plugin instance, tell discovery instances their
 * clusters and compile the route scripts. Returns a config with refcnt 1,
 * or NULL with *err set to a malloc'd message naming file, line, section
 * and key ("conf/x.ini:12: [route api] timeout: bad duration 'x'"); the
 * caller frees *err. Never exits, never logs. The runtime's
 * sk_config_load() (generation.h) passes the extension layer's table.
 */
sk_config *sk_config_parse(const char *path, const sk_config_ext *ext, char **err);

/* Takes a reference. Thread-safe. */
void sk_config_ref(sk_config *c);
/* Drops a reference; frees everything at zero. Thread-safe. NULL is ignored. */
void sk_config_unref(sk_config *c);

/* Parses "250ms", "10s", "2m", or a bare number of seconds. 0 or -1. */
int sk_parse_duration(const char *s, uint64_t *ms);
/* Parses "512", "64k", "10m" (k = 1024). 0 or -1. */
int sk_parse_size(const char *s, uint64_t *bytes);
/* Parses "host:port" / "[v6]:port" with a numeric host or "localhost". 0 or -1. */
int sk_parse_addr(const char *s, sk_addr *out);

/*
 * Finds the first route of listener `l` matching the request, or NULL.
 * `host` is the request authority without port (any case); `path` excludes
 * the query string. Headers are matched case-insensitively by name.
 */
const sk_route *sk_route_match(const sk_listener *l, const char *method, size_t method_len, const char *host,
                               size_t host_len, const char *path, size_t path_len, const sk_header *headers,
                               size_t nheaders);

/* Picks one cluster of a route by weight; `rnd` is any random 32-bit value. */
sk_cluster *sk_route_pick_cluster(const sk_route *r, uint32_t rnd);

#endif
