/*
 * metrics.h — per-worker counters and the renderers used by the admin
 * endpoint. Each worker owns one sk_metrics and is its only writer (SK_INC /
 * SK_ADD, relaxed atomics); the admin thread sums all workers when it
 * renders, so the hot path never takes a lock or a locked instruction.
 */
#ifndef SK_METRICS_H
#define SK_METRICS_H

#include "config.h"
#include "sk.h"

/* Status codes 100..599 map to slot status - 100. */
#define SK_STATUS_SLOTS 500
/* Upper bounds of the request duration histogram, in microseconds. */
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
    /* requests by route and status: (nroutes + 1) rows of SK_STATUS_SLOTS;
     * row nroutes counts requests that matched no route */
    uint64_t *route_status;
    size_t nroutes;    /* rows the table has (row 0: no route) */
    void **old_tables; /* tables replaced by sk_metrics_reserve */
    size_t nold;
    uint64_t downstream_active;                 /* open client connections (gauge) */
    uint64_t downstream_total;                  /* accepted client connections */
    uint64_t upstream_active;                   /* open upstream connections (gauge) */
    uint64_t upstream_opened;                   /* upstream connections opened */
    uint64_t upstream_reused;                   /* requests sent on a pooled connection */
    uint64_t upstream_connect_failures;         /* failed connects (refused, timeout) */
    uint64_t bytes_received;                    /* bytes read from clients */
    uint64_t bytes_sent;                        /* bytes written to clients */
    uint64_t duration_buckets[SK_HIST_BUCKETS]; /* non-cumulative bucket counts */
    uint64_t duration_sum_us;                   /* sum of request durations */
    uint64_t duration_count;                    /* number of requests observed */
    uint64_t tls_handshakes[2][SK_TLS_RESULTS]; /* TLS handshakes by side and outcome */
    uint64_t h2_active;                         /* open HTTP/2 client connections (gauge) */
    uint64_t h2_total;                          /* client connections that spoke HTTP/2 */
    uint64_t h2_streams;                        /* HTTP/2 request streams opened by clients */
    uint64_t h2_errors[SK_H2_ERRORS];           /* HTTP/2 protocol errors and floods, by reason */
} sk_metrics;

/* Reloads that published a generation / that were refused (main thread writes). */
extern uint64_t sk_config_reloads, sk_config_reload_failures;

/* Allocates a zeroed sk_metrics sized for the route rows named so far; NULL on OOM. */
sk_metrics *sk_metrics_new(void);
/* Gives every route of cfg its row, by name (main thread, before publishing cfg). */
void sk_metrics_assign_rows(sk_config *cfg);
/* Rows a route table needs for every route named so far. */
size_t sk_metrics_rows_needed(void);
/* Grows m's route table to `rows` rows (its worker thread). 0 or -1. */
int sk_metrics_reserve(sk_metrics *m, size_t rows);
/* Frees it. */
void sk_metrics_free(sk_metrics *m);
/* Counts one finished request (worker thread only). route may be NULL. */
void sk_metrics_request(sk_metrics *m, const sk_route *route, int status, uint64_t duration_us);

/*
 * Renders the sum of the `n` workers' metrics as Prometheus text (prefix
 * sidekick_) or JSON into `out`. Runs on the admin (main) thread.
 * Returns 0 or -1 on allocation failure.
 */
int sk_metrics_render_prometheus(sk_buf *out, const sk_config *cfg, sk_metrics *const *m, size_t n);
int sk_metrics_render_json(sk_buf *out, const sk_config *cfg, sk_metrics *const *m, size_t n);

#endif
