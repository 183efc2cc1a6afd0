/*
 * sidekick/plugin.h — the one header a sidekick plugin needs.
 *
 * A plugin is a shared object that exports exactly one symbol,
 * `sidekick_plugin`, a `const sk_plugin` describing it:
 *
 *     #include <sidekick/plugin.h>
 *
 *     static sk_status on_request(void *inst, void *wdata, sk_req *req) { ... }
 *
 *     SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
 *         .abi_major = SK_PLUGIN_ABI_MAJOR,
 *         .abi_minor = SK_PLUGIN_ABI_MINOR,
 *         .name = "example",
 *         .create = create,
 *         .on_request = on_request,
 *     };
 *
 * Build it with:
 *     cc -shared -fPIC $(pkg-config --cflags sidekick-plugin) -o example.so example.c
 *
 * A plugin never links against sidekick: everything it may call comes
 * through the `sk_host_api` table handed to `create`. All handles are
 * opaque. This header includes only standard C headers.
 *
 * Compatibility: the host loads a plugin whose abi_major equals the host's
 * and whose abi_minor is not newer than the host's. Minor versions only
 * append members to the end of sk_plugin and sk_host_api.
 *
 * Threads: `create` and `destroy` run on the main thread; `worker_init` and
 * `worker_fini` on each worker thread; request hooks on the request's
 * worker. A request never moves between workers.
 *
 * ABI 1.1 (this header) appended to sk_host_api: request_id, request_info,
 * set_endpoints_weighted, labelled counters and gauges; and to sk_plugin:
 * on_cluster. A plugin built with abi_minor 0 still loads: the host never
 * reads a sk_plugin member past on_cancel of such a plugin. A plugin that
 * uses a 1.1 host member checks host->abi_minor >= 1 first if it wants to
 * run on a 1.0 host too (which refuses it anyway when it says abi_minor 1).
 *
 * ABI 1.2 appended to sk_host_api: set_endpoints_from (endpoints with a
 * weight and a source), cluster_state (a discovery instance says whether a
 * cluster's endpoints are current), counter_vec and gauge_vec (metrics with
 * up to SK_METRIC_MAX_LABELS labels); and SK_HTTP_UNLIMITED for the body
 * of streamed HTTP client responses; the HTTP client speaks https:// (the
 * server's certificate always verified, against [sidekick] http_client_ca
 * or the system's CA bundle) and reports SK_HTTP_ETLS; to sk_req_info:
 * generation and tls; and to sk_plugin: on_drain (the instance's last
 * chance to finish its HTTP calls, e.g. a final span export, before
 * destroy). A plugin built for 1.1 or 1.0 still loads: the host never reads
 * sk_plugin members past on_cluster of a plugin built with abi_minor < 2.
 *
 * Lifetimes the host guarantees:
 *  - `self` (sk_instance) and the string instance_name(self) returns: from
 *    create until destroy returns.
 *  - main_loop(): from create until the process exits (after every destroy).
 *    A worker's loop (worker_init's argument, request_loop()): from
 *    worker_init until worker_fini returns on that worker.
 *  - Timers and fd watchers belong to the instance whose hook or callback
 *    started them (create, worker_init, a request hook, a timer or watcher
 *    callback, a posted callback). Those still pending when worker_fini
 *    returns (for that worker's loop) or destroy returns (for the main loop)
 *    are stopped and freed by the host, with a warning: their callbacks
 *    never run after the instance is gone, and the handles must not be used
 *    any more. The host never closes a watched fd: the plugin owns it, and
 *    unwatches it before closing it.
 */
#ifndef SIDEKICK_PLUGIN_H
#define SIDEKICK_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SK_PLUGIN_ABI_MAJOR 1
#define SK_PLUGIN_ABI_MINOR 2

#if defined(__GNUC__)
#define SK_PLUGIN_EXPORT       __attribute__((visibility("default")))
#define SK_PLUGIN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define SK_PLUGIN_EXPORT
#define SK_PLUGIN_PRINTF(f, a)
#endif

/* What a hook tells the host to do next. One enum for C plugins and Lua. */
typedef enum sk_status {
    SK_CONTINUE = 0, /* go on with the next filter */
    SK_RESPOND = 1,  /* a local reply was set with host->respond(): stop the chain, send it */
    SK_PAUSE = 2,    /* the plugin will call host->resume(req, ...) later, on this worker */
    SK_ERROR = 3,    /* failure: the client gets 500 with x-sidekick-reason: filter_error */
} sk_status;

/* Log levels of host->log(), as `[sidekick] log_level`. */
enum sk_log_level { SK_LOG_ERROR = 0, SK_LOG_WARN = 1, SK_LOG_INFO = 2, SK_LOG_DEBUG = 3 };

/* fd watcher events. */
enum { SK_EV_READ = 1, SK_EV_WRITE = 2 };

/* Opaque handles. None of them is ever freed by the plugin. */
typedef struct sk_req sk_req;           /* a request: valid from on_request until on_log returns
                                           (or until on_cancel returns) */
typedef struct sk_instance sk_instance; /* this plugin instance, as the host knows it: valid from
                                           create until destroy returns */
typedef struct sk_loop sk_loop;         /* an event loop: a worker's, or the main thread's */
typedef struct sk_timer sk_timer;       /* a one-shot timer */
typedef struct sk_watch sk_watch;       /* an fd watcher */
typedef struct sk_metric sk_metric;     /* a counter, gauge or histogram */

/* A length-delimited string. Never NUL-terminated by contract. */
typedef struct sk_str {
    const char *ptr; /* NULL when absent */
    size_t len;
} sk_str;

/* One `key = value` of the plugin's INI section (except `load`). */
typedef struct sk_kv {
    const char *key;   /* owned by the host, valid during create */
    const char *value; /* owned by the host, valid during create */
    int line;          /* line in the config file, for error messages */
} sk_kv;

/* ABI 1.1: the timeline, sizes and outcome of a request, filled by
 * host->request_info(). The caller sets `size` to sizeof(sk_req_info) of
 * the header it was built with; the host fills the fields that fit in
 * `size` (it never writes past it) and sets `size` to the bytes it filled,
 * so a plugin built against a later minor sees which fields an older host
 * knew. Later minors only append fields. Times are CLOCK_MONOTONIC
 * nanoseconds, 0 = not reached (yet). The upstream times are those of the
 * last attempt: 0 when that attempt did not get so far (a retry after a
 * connect failure has no connect time of its own). */
typedef struct sk_req_info {
    size_t size;                     /* in: the caller's sizeof(sk_req_info); out: bytes filled */
    uint64_t start_ns;               /* first byte of the request head received */
    uint64_t upstream_connect_ns;    /* upstream connection ready: connected, or taken from the pool */
    uint64_t upstream_first_byte_ns; /* first byte of the upstream response */
    uint64_t end_ns;                 /* response complete or aborted: set when on_log starts */
    uint64_t bytes_received;         /* request bytes read from the client, head included */
    uint64_t bytes_sent;             /* response bytes written to the client, head included */
    sk_str endpoint;                 /* "ip:port" of the last endpoint tried, ptr NULL if none */
    uint32_t attempts;               /* upstream attempts (tries) made, 0 for a local reply */
    int status;                      /* status sent to the client, 0 before */
    sk_str reason;                   /* x-sidekick-reason ("upstream_timeout"), ptr NULL if none */
    /* ABI 1.2 */
    uint64_t generation; /* the config generation the request started on (1 at start-up) */
    int tls;             /* 1 when the request came over TLS (a `tls =` listener), else 0 */
} sk_req_info;

/* ABI 1.1: one endpoint of host->set_endpoints_weighted(). */
typedef struct sk_weighted_endpoint {
    const char *address; /* "ip:port" or "[v6]:port", copied by the host */
    uint32_t weight;     /* relative weight 1..10000; 0 and larger values are refused */
} sk_weighted_endpoint;

/* ABI 1.1: at most this many values for a labelled metric. */
#define SK_METRIC_MAX_LABEL_VALUES 32

typedef void (*sk_callback)(void *arg);
typedef void (*sk_fd_callback)(void *arg, int fd, int events);

/* ---- ABI 1.1: asynchronous HTTP client (main loop) ----
 *
 * One HTTP/1.1 client for every plugin, driven by the main thread's loop:
 * JWKS fetches, watch streams (a long-lived response read as it arrives),
 * span export. See sk_host_api.http_start and docs/plugins.md. */

/* An HTTP client call in flight. Opaque; valid from a successful
 * http_start until its on_done returns or http_cancel is called. */
typedef struct sk_http_call sk_http_call;

/* What http_start returns and on_done reports: 0 or one of these. */
enum sk_http_error {
    SK_HTTP_OK = 0,
    SK_HTTP_ECONNECT = -1,     /* could not connect: refused, unreachable, name not resolved */
    SK_HTTP_ETIMEOUT = -2,     /* connect_timeout_ms or timeout_ms passed */
    SK_HTTP_ETOOLARGE = -3,    /* the response body went past max_body */
    SK_HTTP_ECANCELLED = -4,   /* the host cancelled it: the instance is being destroyed */
    SK_HTTP_EPROTO = -5,       /* the connection broke or the response was not valid HTTP/1.x */
    SK_HTTP_EINVAL = -6,       /* http_start: bad method, URL, header, or a limit exceeded */
    SK_HTTP_ENOMEM = -7,       /* out of memory */
    SK_HTTP_EUNSUPPORTED = -8, /* http_start: a scheme other than http:// and https:// (1.1: https too) */
    SK_HTTP_ETHREAD = -9,      /* http_start: not called on the main thread */
    SK_HTTP_EBUSY = -10,       /* http_start: too many calls in flight (SK_HTTP_MAX_CALLS) */
    SK_HTTP_ETLS = -11,        /* ABI 1.2: https:// handshake failed or the server's certificate was not trusted */
};

/* ABI 1.2: sk_http_request.max_body = SK_HTTP_UNLIMITED reads a response
 * body of any size (a watch stream that never ends): the plugin consumes it
 * in on_body and keeps no more of it than it needs; the call never fails
 * with SK_HTTP_ETOOLARGE. */
#define SK_HTTP_UNLIMITED SIZE_MAX

/* ABI 1.2: limits of counter_vec / gauge_vec. */
#define SK_METRIC_MAX_LABELS 4
#define SK_METRIC_MAX_SERIES 256

/* Limits of http_start. */
#define SK_HTTP_MAX_CALLS        1024u               /* calls in flight, all instances together */
#define SK_HTTP_MAX_HEADERS      64u                 /* request header pairs */
#define SK_HTTP_MAX_REQUEST_BODY (16u * 1024 * 1024) /* bytes of request body */

/* One HTTP client request, read by http_start (which copies everything it
 * needs: the struct and all it points to may be freed when it returns). */
typedef struct sk_http_request {
    const char *method;          /* "GET", "POST", ... (an HTTP token); NULL = "GET" */
    const char *url;             /* "http[s]://host[:port]/path?query"; required (https: ABI 1.2) */
    const char *const *headers;  /* NULL-terminated name, value pairs, or NULL */
    const char *body;            /* request body (sent with content-length), or NULL */
    size_t body_len;             /* bytes of body */
    uint64_t timeout_ms;         /* the whole call, connect to last byte; 0 = no limit (streams) */
    uint64_t connect_timeout_ms; /* the TCP connect; 0 = 10000 */
    size_t max_body;             /* response body bytes allowed; 0 = 1 MiB; more fails the call;
                                  * SK_HTTP_UNLIMITED (ABI 1.2) = no limit */

    /* Callbacks, all on the main thread from the main loop, never from
     * inside http_start; each may be NULL. Pointers handed to them are owned
     * by the host and valid only during the callback. Any of them may call
     * http_cancel on this or another call, and http_start. */

    /* The response head (after any 1xx): status, and n headers as received
     * (names[i], values[i]). */
    void (*on_head)(void *arg, int status, const sk_str *names, const sk_str *values, size_t n);
    /* A piece of the response body (de-chunked), as it arrives. */
    void (*on_body)(void *arg, const char *data, size_t len);
    /* The call is over: error 0 (the whole response was read, whatever its
     * status) or an SK_HTTP_E* code, and a one-line message for logs
     * (NUL-terminated). Called exactly once per started call, unless the
     * plugin cancelled it first. The handle is freed when it returns. */
    void (*on_done)(void *arg, int error, const char *message);
    void *arg; /* owned by the plugin, handed to the callbacks */
} sk_http_request;

/*
 * The services of the host. A pointer to one static table is handed to
 * create() and stays valid until the process exits. Unless stated
 * otherwise, a function taking an sk_req must be called on that request's
 * worker, while the request is valid; strings returned by the host are
 * owned by it and valid until the request ends (sk_str of requests) or as
 * stated; strings passed in are copied by the host.
 */
typedef struct sk_host_api {
    uint32_t abi_major, abi_minor; /* the host's ABI version */

    /* ---- logging and config (any thread) ---- */
    /* Logs one line, prefixed with the instance name. */
    void (*log)(sk_instance *self, int level, const char *fmt, ...) SK_PLUGIN_PRINTF(3, 4);
    /* The instance name ("ratelimit-strict"; owned by the host, valid until
     * destroy returns) and the worker count. */
    const char *(*instance_name)(sk_instance *self);
    int (*worker_count)(void);

    /* ---- the request ---- */
    sk_str (*method)(sk_req *r);    /* "GET" */
    sk_str (*path)(sk_req *r);      /* path as received, without the query */
    sk_str (*query)(sk_req *r);     /* after '?', ptr NULL if none */
    sk_str (*authority)(sk_req *r); /* Host header, without port */
    sk_str (*client_ip)(sk_req *r); /* "127.0.0.1", "::1" */
    sk_str (*identity)(sk_req *r);  /* peer SPIFFE ID of a verified TLS client, ptr NULL if none */
    sk_str (*route)(sk_req *r);     /* name of the matched route */
    /* First request header named `name` (any case): 1 and *value, or 0. */
    int (*header)(sk_req *r, const char *name, sk_str *value);
    /* Number of request headers and the i-th one (0-based): 1, or 0 past the
     * end. Indices are positions in the current head: remove_header closes
     * the gap (later headers move down, in order) and set/add_header append
     * at the end, so re-read header_count after an edit. The strings stay
     * valid until the request ends, edits notwithstanding. */
    size_t (*header_count)(sk_req *r);
    int (*header_at)(sk_req *r, size_t i, sk_str *name, sk_str *value);
    /* Replaces every header `name` with one (set), appends one (add), removes
     * all (remove). on_request only. 0, or -1 (bad name/value, OOM, too late). */
    int (*set_header)(sk_req *r, const char *name, const char *value);
    int (*add_header)(sk_req *r, const char *name, const char *value);
    int (*remove_header)(sk_req *r, const char *name);
    /* Sends the request to another cluster of the config (on_request). 0, or
     * -1 (unknown cluster, or the request already went upstream). */
    int (*set_cluster)(sk_req *r, const char *cluster);

    /* ---- the response (on_response, on_log) ---- */
    int (*status)(sk_req *r); /* status code sent / being sent, 0 before */
    int (*response_header)(sk_req *r, const char *name, sk_str *value);
    /* Same as the request versions, on the response head; on_response only. */
    int (*set_response_header)(sk_req *r, const char *name, const char *value);
    int (*add_response_header)(sk_req *r, const char *name, const char *value);
    int (*remove_response_header)(sk_req *r, const char *name);

    /* ---- local replies ---- */
    /* Prepares a local reply: status 200..599, a body (copied, may be NULL),
     * and optional headers as NULL-terminated name, value pairs. The hook then
     * returns SK_RESPOND (or the plugin resumes with SK_RESPOND). In
     * on_response it replaces the upstream's response, which is dropped.
     * `reason` becomes x-sidekick-reason (may be NULL). 0, or -1 (status out
     * of range, a name or value with control characters, a response already
     * on the wire, OOM). */
    int (*respond)(sk_req *r, int status, const char *reason, const char *body, size_t body_len,
                   const char *const *headers);

    /* ---- per-request metadata shared by plugins and Lua ---- */
    int (*set_meta)(sk_req *r, const char *key, const char *value); /* 0 or -1 */
    /* The value, valid until the request ends or the key is set again; NULL if unset. */
    const char *(*meta)(sk_req *r, const char *key);

    /* ---- pausing ---- */
    /* Continues a request paused by SK_PAUSE with the hook result `st`
     * (SK_CONTINUE, SK_RESPOND after respond(), or SK_ERROR). On the request's
     * worker only (from a timer or watcher of that worker). The rest of the
     * chain, and even on_log, may run inside this call: `r` must not be used
     * after it returns. Calling it from inside the hook that then returns
     * SK_PAUSE is allowed (the host applies it at once). Never call it after
     * on_cancel for that request. A request paused longer than its route's
     * `timeout` (or the listener's header_timeout before routing) is
     * cancelled (on_cancel) and answered 500 filter_error. */
    void (*resume)(sk_req *r, sk_status st);
    /* The loop of the request's worker (valid until worker_fini of this
     * instance on that worker returns). */
    sk_loop *(*request_loop)(sk_req *r);

    /* ---- timers and fd watchers (on the thread that owns the loop) ---- */
    /* The main thread's loop: valid from create until the process exits. */
    sk_loop *(*main_loop)(void);
    /* One-shot timer: cb(arg) after `ms` ms. NULL on OOM, or when `loop` is
     * not the calling thread's (the main loop from a worker, a worker's loop
     * from the main thread). The host frees the timer just before cb runs,
     * so timer_stop is only for a timer that has not fired yet (never from
     * its own callback). See the lifetimes above for timers still pending at
     * worker_fini / destroy. */
    sk_timer *(*timer_start)(sk_loop *loop, uint64_t ms, sk_callback cb, void *arg);
    void (*timer_stop)(sk_timer *t);
    /* Watches fd for SK_EV_READ / SK_EV_WRITE until unwatched (which may be
     * done from the watcher's own callback). NULL on OOM or a loop of
     * another thread, as timer_start. The fd stays the plugin's: the host
     * never closes it; unwatch it before closing it. */
    sk_watch *(*watch_fd)(sk_loop *loop, int fd, int events, sk_fd_callback cb, void *arg);
    void (*unwatch_fd)(sk_watch *w);

    /* ---- main thread → workers ---- */
    /* Runs cb(arg) once on every worker's loop, soon, with the same `arg`.
     * Thread-safe. The plugin owns `arg` and keeps it alive until every
     * worker ran cb (count the calls). 0, or -1 (OOM, called before the
     * workers started, e.g. from create, or after a worker has left its
     * loop at shutdown). A worker that leaves its loop (shutdown only) with
     * a post still queued never runs that cb: a plugin that frees `arg` when
     * its count completes also frees it in destroy, which runs after every
     * worker has stopped. */
    int (*post_to_workers)(sk_callback cb, void *arg);

    /* ---- discovery (main thread) ---- */
    /* Replaces the endpoints of `cluster` ("ip:port", "[v6]:port" strings,
     * copied; n may be 0: requests then get 503 no_healthy_upstream). Each
     * worker adopts the new set at its next request to that cluster: pooled
     * connections to endpoints that stay are kept, those to endpoints that
     * left close once idle; in-flight requests finish where they are. Main
     * thread. 0, or -1 with an error logged (unknown cluster, bad address,
     * called on a worker thread). */
    int (*set_endpoints)(sk_instance *self, const char *cluster, const char *const *endpoints, size_t n);

    /* ---- metrics (create only; the metric lives as long as the instance) ---- */
    /* Names get the prefix sidekick_plugin_ and a label instance="NAME";
     * they appear in /metrics. NULL for a name that is not [A-Za-z0-9_]+ or
     * that this instance registered already with another type; the same
     * name and type again returns the existing metric. */
    sk_metric *(*counter)(sk_instance *self, const char *name, const char *help);
    sk_metric *(*gauge)(sk_instance *self, const char *name, const char *help);
    /* Histogram in seconds with the request duration buckets. */
    sk_metric *(*histogram)(sk_instance *self, const char *name, const char *help);
    /* Thread-safe updates. */
    void (*metric_add)(sk_metric *m, int64_t delta);    /* counter (delta >= 0) or gauge */
    void (*metric_set)(sk_metric *m, int64_t value);    /* gauge */
    void (*metric_observe)(sk_metric *m, double value); /* histogram, seconds */

    /* ---- ABI 1.1 (check host->abi_minor >= 1 before use on an unknown host) ---- */

    /* The request id: x-request-id as sent upstream (the client's when it
     * was sane, else generated), fixed before the first on_request; a
     * plugin's header edits do not change it. Any request hook. */
    sk_str (*request_id)(sk_req *r);
    /* Fills *info (info->size set by the caller, see sk_req_info) with the
     * request's timeline, sizes, endpoint, attempts, status and reason as
     * they are now; meant for on_log, where they are final. The strings
     * live as long as the request. 0, or -1 (info NULL or info->size below
     * sizeof(size_t)). */
    int (*request_info)(sk_req *r, sk_req_info *info);
    /* set_endpoints with a weight per endpoint (1..10000; 0 and more than
     * 10000 are refused: leave an endpoint out instead of giving it weight
     * 0). The weights are kept in the cluster's endpoint set, shown in
     * /clusters, and honoured by every `lb` policy (set_endpoints gives
     * every endpoint weight 1). Same rules and results as set_endpoints
     * otherwise. */
    int (*set_endpoints_weighted)(sk_instance *self, const char *cluster,
                                  const sk_weighted_endpoint *endpoints, size_t n);
    /* A counter / gauge with one label: `label` ([A-Za-z_][A-Za-z0-9_]*, not
     * "instance", "le" or "__"-prefixed) and its `nvalues` values (1..
     * SK_METRIC_MAX_LABEL_VALUES, distinct, 1..128 printable ASCII bytes
     * without '"' or '\\'), copied. Rendered as
     * sidekick_plugin_NAME{instance="...",LABEL="VALUE"}, one series per
     * value. create only. NULL (and an error logged) for a bad name, label
     * or value list, or a name this instance registered already in another
     * shape; the same name, type, label and values again returns the
     * existing metric. */
    sk_metric *(*counter_labelled)(sk_instance *self, const char *name, const char *help, const char *label,
                                   const char *const *values, size_t nvalues);
    sk_metric *(*gauge_labelled)(sk_instance *self, const char *name, const char *help, const char *label,
                                 const char *const *values, size_t nvalues);
    /* Thread-safe updates of the series of values[index] of a labelled
     * metric (an index out of range, or an unlabelled metric, is ignored;
     * metric_add/metric_set ignore labelled metrics). */
    void (*metric_add_at)(sk_metric *m, size_t index, int64_t delta); /* counter (delta >= 0) or gauge */
    void (*metric_set_at)(sk_metric *m, size_t index, int64_t value); /* gauge */
    /* --- end of ABI 1.1 core members --- */

    /* --- ABI 1.1: asynchronous HTTP client (main loop) --- */
    /* Starts an HTTP/1.1 call on the main loop for instance `self` and
     * stores its handle in *call (`call` may be NULL when the plugin never
     * cancels). Main thread only: from create, a main-loop timer or watcher,
     * or a client callback. On a worker it returns SK_HTTP_ETHREAD: a plugin
     * whose workers need fetched data starts the calls on main and hands the
     * results to the workers with post_to_workers (docs/plugins.md). Sends
     * exactly the given headers plus Host (unless given) and content-length
     * (with a body, or for POST/PUT/PATCH); follows no redirect, uses no
     * proxy from the environment, decodes no content-encoding. Returns 0, or
     * an SK_HTTP_E* code with a warning logged (no callback runs then).
     * Calls still in flight when `self` is destroyed (reload, shutdown,
     * `sidekick -t`) get on_done(SK_HTTP_ECANCELLED) just before destroy. */
    int (*http_start)(sk_instance *self, const sk_http_request *rq, sk_http_call **call);
    /* Stops a call: no callback of it runs afterwards, and the handle is
     * freed. Main thread; safe from inside any client callback, including
     * this call's own (from its on_done it does nothing). NULL is ignored. */
    void (*http_cancel)(sk_http_call *call);
    /* A static text for an SK_HTTP_E* code ("connect failed", ...). */
    const char *(*http_strerror)(int error);
    /* --- end of ABI 1.1 --- */

    /* ---- ABI 1.2 (check host->abi_minor >= 2 before use on an unknown host) ---- */

    /* set_endpoints_weighted, saying where the endpoints come from:
     * `source` (1..16 bytes of [a-z0-9_-], e.g. "dns", "file", "etcd";
     * NULL = "plugin") is shown with each endpoint in /clusters, next to
     * the "static" endpoints of `endpoints =` (set_endpoints and
     * set_endpoints_weighted give "plugin"). Every set_endpoints* call is
     * the cluster's answer: it makes the cluster current (cluster_state
     * ok, message cleared), ends its wait_for_endpoints, and its time is
     * the cluster's last update (/clusters,
     * sidekick_cluster_discovery_age_seconds). Same rules and results as
     * set_endpoints_weighted otherwise (n may be 0; -1 logged for a bad
     * source too). */
    int (*set_endpoints_from)(sk_instance *self, const char *cluster, const sk_weighted_endpoint *endpoints,
                              size_t n, const char *source);
    /* The discovery state of `cluster`, shown in /clusters: ok = 1 (its
     * endpoints are current) or 0 (stale: the last refresh failed and the
     * endpoints are the last good ones), with a one-line message (copied,
     * at most 256 bytes kept, bytes outside printable ASCII shown as '?';
     * NULL = none), e.g. "dns: timeout, keeping 3 endpoints from
     * 12:00:01". Does not change the endpoints, and is not an answer:
     * before the first set_endpoints* the cluster stays "waiting" (the
     * message shows). The next set_endpoints* makes it ok again. ok = 1
     * on a cluster this instance answered is a good answer as well (a
     * refresh that found the set unchanged): the cluster's last update,
     * and so its age, is now. Main
     * thread. 0, or -1 with an error logged (unknown cluster, a cluster
     * whose `discovery` does not name this instance, a worker thread). */
    int (*cluster_state)(sk_instance *self, const char *cluster, int ok, const char *message);
    /* A counter / gauge with 1..SK_METRIC_MAX_LABELS labels (names as for
     * counter_labelled, distinct) and 1..SK_METRIC_MAX_SERIES series:
     * series i has the values values[i * nlabels + j] for labels[j] (rules
     * as for counter_labelled's values; no two series alike). Every series
     * exists from the start (at 0). Rendered as
     * sidekick_plugin_NAME{instance="...",L1="V1",L2="V2"}, the labels in
     * the given order; updated with metric_add_at / metric_set_at (index =
     * series). create only. NULL (and an error logged) for bad names or
     * values, or a name this instance registered already in another shape;
     * the same name, type, labels and series again return the existing
     * metric. */
    sk_metric *(*counter_vec)(sk_instance *self, const char *name, const char *help,
                              const char *const *labels, size_t nlabels, const char *const *values,
                              size_t nseries);
    sk_metric *(*gauge_vec)(sk_instance *self, const char *name, const char *help, const char *const *labels,
                            size_t nlabels, const char *const *values, size_t nseries);
    /* --- end of ABI 1.2 --- */
} sk_host_api;

/* The symbol a plugin exports, named `sidekick_plugin`. */
typedef struct sk_plugin {
    uint16_t abi_major;      /* SK_PLUGIN_ABI_MAJOR of the header it was built with */
    uint16_t abi_minor;      /* SK_PLUGIN_ABI_MINOR likewise */
    const char *name;        /* short name, for logs */
    const char *description; /* one line, may be NULL */

    /*
     * Creates an instance from the INI keys of its [plugin NAME] section
     * (main thread, at config load and by `sidekick -t`). Returns the
     * instance (owned by the plugin), or NULL with a message written into
     * err (err_size bytes, NUL-terminated) — a config error that fails
     * start-up. A plugin must refuse keys it does not know. `host` stays
     * valid for the life of the process; `self` until destroy returns.
     * Required: a plugin without create is refused.
     */
    void *(*create)(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size);
    /* Frees the instance (main thread, when its config generation is released). */
    void (*destroy)(void *inst);

    /* Per worker, before it serves a request / after its last one. The
     * pointer stored in *wdata is handed to every request hook on that worker.
     * Returns 0; anything else is logged and the worker serves anyway, with
     * wdata NULL for this instance. worker_fini is called either way. */
    int (*worker_init)(void *inst, sk_loop *worker_loop, void **wdata);
    void (*worker_fini)(void *inst, void *wdata);

    /* Request head received (listener plugins first, then route plugins, in
     * INI order). */
    sk_status (*on_request)(void *inst, void *wdata, sk_req *r);
    /* Response head received from the upstream (reverse order; only plugins
     * whose on_request ran; not for local replies). SK_RESPOND after
     * respond() replaces the response. SK_PAUSE is not allowed here (treated
     * as SK_ERROR). */
    sk_status (*on_response)(void *inst, void *wdata, sk_req *r);
    /* The request is complete (or aborted), for logs and metrics: plugins
     * whose on_request ran, last first. */
    void (*on_log)(void *inst, void *wdata, sk_req *r);
    /* A request this plugin paused went away (client gone, timeout) before
     * resume: drop what is pending for it; do not call resume. on_log still
     * follows. */
    void (*on_cancel)(void *inst, void *wdata, sk_req *r);

    /* ---- ABI 1.1 (read by the host only when abi_minor >= 1) ---- */

    /* Once per [cluster] whose `discovery = NAME ARG` names this instance,
     * in file order, on the main thread right after every instance of the
     * generation was created (at config load, by `sidekick -t` and on each
     * reload, for the new instance). `cluster` is the cluster's name (valid
     * until destroy returns; it is the name set_endpoints takes), `arg` the
     * rest of the line after NAME, trimmed (valid likewise), or NULL when
     * there is none. The plugin may call set_endpoints from here (the set
     * then serves from the first request). Returns 0, or -1 with a message
     * in err (err_size bytes): the config is refused, as a create error. A
     * plugin named by `discovery` without this hook (or built for ABI 1.0)
     * is refused at load. */
    int (*on_cluster)(void *inst, const char *cluster, const char *arg, char *err, size_t err_size);
    /* --- end of ABI 1.1 core members --- */

    /* ---- ABI 1.2 (read by the host only when abi_minor >= 2) ---- */

    /* The instance will serve no more requests: every worker has run its
     * worker_fini for it, at shutdown once the workers drained, or after a
     * reload once its (retired) generation's last request is done. Main
     * thread, once, before destroy; never for an instance whose generation
     * did not serve (`sidekick -t`, a refused reload, a failed start), nor
     * when the process exits at drain_timeout with work in flight. The
     * plugin may start HTTP client calls here (a last export of what it
     * holds). The host then keeps running the main loop, and the instance
     * alive, while it has HTTP calls in flight (calls started from their
     * callbacks included): at shutdown until the drain deadline
     * (drain_timeout after the drain began), after a reload for at most
     * drain_timeout from this call. Then destroy follows as usual (calls
     * still in flight get on_done(SK_HTTP_ECANCELLED) first). Timers alone
     * do not hold the instance: those still pending are stopped at destroy. */
    void (*on_drain)(void *inst);
    /* --- end of ABI 1.2 --- */
} sk_plugin;

#ifdef __cplusplus
}
#endif

#endif
