/*
 * metrics.h — per-worker counters and the renderers used by the admin
 * endpoint. Each worker owns one sk_metrics and is its only writer (SK_INC /
 * SK_ADD, relaxed atomics); the admin thread sums all workers when it
 * renders, so the hot path never takes a lock or a locked instruction.
 *
 * Labelled figures live in rows (sk_mrow): one row per label set — a
 * (listener, route) pair, a listener's "no route", a cluster, or a
 * (cluster, endpoint) pair. Rows are named by their label values in a
 * process-wide registry (metrics_rows.c). A reload that keeps a name keeps
 * its row, so its counters go on. Listener, route and cluster rows stay
 * for the life of the process (the config file bounds them); an endpoint
 * row is held by the endpoint objects of its address, and once the last
 * one is freed it is zeroed and reused. Every worker's table has a row
 * before the object that names it is published to the workers, so the
 * hot path only indexes.
 */
#ifndef SK_METRICS_H
#define SK_METRICS_H

#include "config.h"
#include "sk.h"

struct json_t;

/* Status codes 100..599 map to slot status - 100. */
#define SK_STATUS_SLOTS 500
/* Upper bounds of the duration histograms, in microseconds. */
#define SK_HIST_BOUNDS_US                                                                              \
    {                                                                                                  \
        500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, \
            10000000                                                                                   \
    }
#define SK_HIST_BUCKETS 15 /* the bounds above plus +Inf */
/* TLS handshake outcomes (net/tls.h enum sk_tls_result), by side: 0 = server
 * (a listener terminates), 1 = client (a cluster originates). */
#define SK_TLS_RESULTS 12
extern const char *const sk_tls_result_names[SK_TLS_RESULTS];

/* Counters of a row: cluster rows use the upstream ones,
 * route rows the Lua ones. */
enum sk_mcounter {
    SK_MC_CONNECT_FAILURES = 0, /* upstream connects that failed (refused, timed out, TLS peer refused) */
    SK_MC_TIMEOUTS,             /* route timeouts that ran out while waiting on the upstream */
    SK_MC_RESETS,               /* attempts cut by the upstream (reset, closed, malformed response) */
    SK_MC_RETRIES,              /* attempts after the first */
    SK_MC_CX_CREATED,           /* upstream connections opened */
    SK_MC_CX_REUSED,            /* requests sent on a pooled (idle) connection */
    SK_MC_OVERFLOW_CONNECTIONS, /* refused by max_connections */
    SK_MC_OVERFLOW_PENDING,     /* refused by max_pending */
    SK_MC_OVERFLOW_REQUESTS,    /* refused by max_requests */
    SK_MC_EJECTIONS,            /* outlier ejections (the traffic-management work counts them) */
    SK_MC_LUA_ERROR,            /* Lua filter failures, by kind: a Lua error, */
    SK_MC_LUA_BUDGET,           /* past lua_budget, */
    SK_MC_LUA_MEMORY,           /* past lua_memory */
    SK_MC_COUNT
};
/* Gauges of a row: each worker keeps its part, the renderer sums them. */
enum sk_mgauge {
    SK_MG_CX_ACTIVE = 0, /* upstream connections open and not idle (in use, connecting, tcp relays) */
    SK_MG_CX_IDLE,       /* upstream connections parked in a pool */
    SK_MG_COUNT
};

/* The figures of one label set on one worker. */
typedef struct sk_mrow {
    uint64_t codes[SK_STATUS_SLOTS];   /* responses by status - 100 (route rows: downstream; endpoint
                                        * rows: upstream) */
    uint64_t buckets[SK_HIST_BUCKETS]; /* duration histogram, non-cumulative (route rows: requests;
                                        * cluster rows: upstream attempts) */
    uint64_t sum_us;                   /* sum of the durations observed */
    uint64_t count;                    /* number of durations observed */
    uint64_t c[SK_MC_COUNT];           /* enum sk_mcounter */
    uint64_t g[SK_MG_COUNT];           /* enum sk_mgauge; this worker's part, may wrap below 0 */
} sk_mrow;

/* Rows are allocated in chunks; a table has at most SK_MROW_CHUNKS of them
 * (16,384 rows: at about 4.2 KiB a row, some 70 MiB a worker at most). */
#define SK_MROW_CHUNK  16
#define SK_MROW_CHUNKS 1024
#define SK_MROW_MAX    (SK_MROW_CHUNK * SK_MROW_CHUNKS)

/* What went wrong on an HTTP/2 connection (the `reason` label of
 * sidekick_http2_protocol_errors_total; h2_server.c counts them). */
enum sk_h2_error {
    SK_H2_RAPID_RESET = 0,    /* streams reset early faster than the bound: GOAWAY ENHANCE_YOUR_CALM */
    SK_H2_PING_FLOOD,         /* PING frames faster than the bound: GOAWAY ENHANCE_YOUR_CALM */
    SK_H2_SETTINGS_FLOOD,     /* SETTINGS frames faster than the bound: GOAWAY ENHANCE_YOUR_CALM */
    SK_H2_EMPTY_FRAMES,       /* empty DATA frames faster than the bound: GOAWAY ENHANCE_YOUR_CALM */
    SK_H2_CONTINUATION_FLOOD, /* a header block beyond the header limit: GOAWAY ENHANCE_YOUR_CALM */
    SK_H2_HEADERS_TOO_LARGE,  /* a header list beyond max_header_bytes / max_headers: 431 on the stream */
    SK_H2_COMPRESSION_ERROR,  /* HPACK that does not decode (table size abuse): GOAWAY COMPRESSION_ERROR */
    SK_H2_OUTBOUND_FLOOD,     /* frames we must answer pile up unread: connection closed */
    SK_H2_PROTOCOL_ERROR,     /* any other connection error: GOAWAY (PROTOCOL_ERROR, FRAME_SIZE_ERROR, ...) */
    SK_H2_STREAM_ERROR,       /* a malformed request: RST_STREAM PROTOCOL_ERROR */
    SK_H2_REFUSED_STREAM,     /* a stream over max_concurrent_streams: RST_STREAM REFUSED_STREAM */
    SK_H2_ERRORS
};
extern const char *const sk_h2_error_names[SK_H2_ERRORS];

typedef struct sk_metrics {
    /* rows by index: chunks[i / SK_MROW_CHUNK][i % SK_MROW_CHUNK]. Chunks
     * are allocated by the main thread (metrics_rows.c) and published with
     * a release store before any object naming one of their rows reaches a
     * worker; they never move. Row 0 is a sink for what has no row. */
    sk_mrow *chunks[SK_MROW_CHUNKS];
    struct sk_metrics *next_table;              /* in the registry's list of tables */
    uint64_t downstream_active;                 /* open client connections (gauge) */
    uint64_t downstream_total;                  /* accepted client connections */
    uint64_t bytes_received;                    /* bytes read from clients */
    uint64_t bytes_sent;                        /* bytes written to clients */
    uint64_t tls_handshakes[2][SK_TLS_RESULTS]; /* TLS handshakes by side and outcome */
    uint64_t h2_active;                         /* open HTTP/2 client connections (gauge) */
    uint64_t h2_total;                          /* client connections that spoke HTTP/2 */
    uint64_t h2_streams;                        /* HTTP/2 request streams opened by clients */
    uint64_t h2_errors[SK_H2_ERRORS];           /* HTTP/2 protocol errors and floods, by reason */
} sk_metrics;

/* Reloads that published a generation / that were refused (main thread writes). */
extern uint64_t sk_config_reloads, sk_config_reload_failures;

/* ---- tables and rows (metrics_rows.c) ---- */

/* Allocates a zeroed sk_metrics with every row named so far; NULL on OOM.
 * Main thread. Released with sk_metrics_free(). */
sk_metrics *sk_metrics_new(void);
/* Frees it (NULL is ignored). No worker may still be writing to it. */
void sk_metrics_free(sk_metrics *m);
/*
 * The row named by `kind` ('l' listener, 'r' route, 'c' cluster, 'e'
 * endpoint) and the label values (a, b) — b may be NULL — with one more
 * reference ('e' only: the other kinds are kept for good): the existing
 * row of that name, or a new (zeroed) one with a chunk in every table.
 * Returns the row (>= 1), or 0 (the sink) when the registry is full or
 * memory runs out. Any thread (the main thread in practice: loads and
 * endpoint set changes).
 */
size_t sk_metrics_row_acquire(char kind, const char *a, const char *b);
/* Drops a reference on an endpoint row; at zero the row is free for
 * another name. Row 0 and kept rows are ignored. Any thread. */
void sk_metrics_row_release(size_t row);
/* Rows in use (named), for tests and the registry's own checks. */
size_t sk_metrics_rows_in_use(void);
/*
 * Gives cfg's listeners ("no route" rows), routes ((listener, route)) and
 * clusters their rows, by name. Main thread, before cfg is published to
 * workers.
 */
void sk_metrics_assign_rows(sk_config *cfg);

/* Worker m's row `row`, or NULL (m NULL, or no chunk). */
static inline sk_mrow *sk_metrics_row(sk_metrics *m, size_t row)
{
    if (!m || row >= SK_MROW_MAX) return NULL;
    sk_mrow *chunk = __atomic_load_n(&m->chunks[row / SK_MROW_CHUNK], __ATOMIC_ACQUIRE);
    return chunk ? &chunk[row % SK_MROW_CHUNK] : NULL;
}

/* Adds one to counter `which` (enum sk_mcounter) of row `row`. Worker thread. */
static inline void sk_metrics_count(sk_metrics *m, size_t row, int which)
{
    sk_mrow *r = sk_metrics_row(m, row);
    if (r) SK_INC(r->c[which]);
}

/* Adds delta (+1 / -1) to this worker's part of gauge `which` (enum sk_mgauge). */
static inline void sk_metrics_gauge(sk_metrics *m, size_t row, int which, int delta)
{
    sk_mrow *r = sk_metrics_row(m, row);
    if (r) SK_ADD(r->g[which], (uint64_t)(int64_t)delta);
}

/* ---- counting (metrics.c), worker thread, never allocates ---- */

/* Observes a duration in row's histogram. */
void sk_metrics_observe(sk_mrow *r, uint64_t duration_us);
/* Counts a status (100..599; others are ignored) in row's code table. */
void sk_metrics_code(sk_mrow *r, int status);
/* One finished request in row `row` (a route's, or its listener's "no
 * route" row): its status and its duration. */
void sk_metrics_request(sk_metrics *m, size_t row, int status, uint64_t duration_us);

/* ---- rendering (metrics.c), main thread ---- */

/* What the renderers show of one endpoint of a cluster's set in force
 * (the caller gathers them; strings live as long as the call). */
typedef struct sk_metrics_endpoint {
    const char *cluster; /* cluster name */
    const char *address; /* endpoint "ip:port" */
    size_t row;          /* its row (upstream requests by code) */
    bool healthy;        /* the balancers may use it */
    bool ejected;        /* ejected by outlier detection */
    unsigned active;     /* requests in flight to it, all workers */
} sk_metrics_endpoint;

/*
 * Renders the sum of the `n` workers' metrics as Prometheus text (names
 * sidekick_* and process_*) into `out`: the series of cfg's listeners,
 * routes and clusters and of the endpoints `eps[0..neps)`, then the
 * process-wide ones. Only the running config's names are shown. Returns 0,
 * or -1 on allocation failure (`out` may then hold a partial rendering).
 */
int sk_metrics_render_prometheus(sk_buf *out, const sk_config *cfg, const sk_metrics_endpoint *eps,
                                 size_t neps, sk_metrics *const *m, size_t n);
/* The same figures as a JSON object (the shape is in docs/observability.md),
 * a new reference, or NULL on OOM. */
struct json_t *sk_metrics_json(const sk_config *cfg, const sk_metrics_endpoint *eps, size_t neps,
                               sk_metrics *const *m, size_t n);

#endif
