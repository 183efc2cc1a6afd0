/*
 * metrics.c — per-worker request and connection counters, and the two
 * renderers (Prometheus text, JSON) the admin endpoint serves.
 *
 * Each worker owns one sk_metrics and is its only writer; the admin (main)
 * thread reads every worker's counters with relaxed atomic loads and sums
 * them while rendering. A rendering is therefore not an atomic snapshot
 * across counters (a request may be in the histogram but not yet in the
 * per-route table), which is the usual trade-off for lock-free counters.
 *
 * Route rows are keyed by route name, process-wide (row 0 is "no route"),
 * so counters carry across reloads; a worker grows its table when a reload
 * brings new names (sk_metrics_reserve).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "metrics.h"

uint64_t sk_config_reloads, sk_config_reload_failures;

static const uint64_t hist_bounds_us[SK_HIST_BUCKETS - 1] = SK_HIST_BOUNDS_US;

/*
 * Route rows are kept by route *name*, process-wide, so that a route's
 * counters go on across reloads: row 0 counts requests that matched no
 * route, row k > 0 the route named row_names[k]. Names are only added, on
 * the main thread, before the generation that brings them is published.
 */
static char **row_names;
static size_t nrows = 1, rows_cap;

/* The row of route `name`, added if new; 0 when the table cannot grow. */
static size_t route_row(const char *name)
{
    for (size_t i = 1; i < nrows; i++)
        if (strcmp(row_names[i], name) == 0) return i;
    if (nrows >= rows_cap) {
        size_t cap = rows_cap ? rows_cap * 2 : 64;
        char **a = realloc(row_names, cap * sizeof(*a));
        if (!a) return 0;
        row_names = a;
        rows_cap = cap;
    }
    if (!(row_names[nrows] = strdup(name))) return 0;
    return nrows++;
}

/* Gives every route of cfg its row (main thread, before publishing cfg). */
void sk_metrics_assign_rows(sk_config *cfg)
{
    for (size_t i = 0; i < cfg->nroutes; i++) cfg->routes[i]->metrics_row = route_row(cfg->routes[i]->name);
}

/* Number of rows a table needs now. */
size_t sk_metrics_rows_needed(void)
{
    return nrows;
}

/*
 * sk_metrics_new() allocates a zeroed sk_metrics whose route table has room
 * for the rows named so far (and some more). Returns NULL on allocation
 * failure; the caller releases it with sk_metrics_free().
 */
sk_metrics *sk_metrics_new(void)
{
    sk_metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->nroutes = SK_MAX(nrows * 2, (size_t)64);
    m->route_status = calloc(m->nroutes * SK_STATUS_SLOTS, sizeof(uint64_t));
    if (!m->route_status) {
        free(m);
        return NULL;
    }
    return m;
}

/*
 * Makes room for `rows` rows (worker thread: the only writer). The old
 * table stays allocated (readers on the admin thread may hold it) and is
 * freed with the metrics. 0 or -1.
 */
int sk_metrics_reserve(sk_metrics *m, size_t rows)
{
    if (rows <= m->nroutes) return 0;
    size_t cap = SK_MAX(rows * 2, m->nroutes * 2);
    uint64_t *t = calloc(cap * SK_STATUS_SLOTS, sizeof(uint64_t));
    void **old = realloc(m->old_tables, (m->nold + 1) * sizeof(*old));
    if (!t || !old) {
        free(t);
        if (old) m->old_tables = old;
        return -1;
    }
    m->old_tables = old;
    memcpy(t, m->route_status, m->nroutes * SK_STATUS_SLOTS * sizeof(uint64_t));
    m->old_tables[m->nold++] = m->route_status;
    __atomic_store_n(&m->route_status, t, __ATOMIC_RELEASE);
    __atomic_store_n(&m->nroutes, cap, __ATOMIC_RELEASE);
    return 0;
}

/*
 * sk_metrics_free() releases an sk_metrics and its route table. NULL is
 * ignored. No worker may still be writing to it.
 */
void sk_metrics_free(sk_metrics *m)
{
    if (!m) return;
    free(m->route_status);
    for (size_t i = 0; i < m->nold; i++) free(m->old_tables[i]);
    free(m->old_tables);
    free(m);
}

/*
 * sk_metrics_request() counts one finished request on the calling worker's
 * metrics: its (route, status) cell and the duration histogram. `route` may
 * be NULL (no route matched); a route whose index does not fit the table
 * (another generation) is counted as "no route". A status outside 100..599
 * is left out of the status table but still observed by the histogram.
 * Worker thread only (single writer); never allocates.
 */
void sk_metrics_request(sk_metrics *m, const sk_route *route, int status, uint64_t duration_us)
{
    if (!m) return;
    size_t row = route && route->metrics_row < m->nroutes ? route->metrics_row : 0;
    if (status >= 100 && status < 100 + SK_STATUS_SLOTS)
        SK_INC(m->route_status[row * SK_STATUS_SLOTS + (size_t)(status - 100)]);

    size_t b = 0;
    while (b < SK_HIST_BUCKETS - 1 && duration_us > hist_bounds_us[b]) b++;
    SK_INC(m->duration_buckets[b]);
    SK_ADD(m->duration_sum_us, duration_us);
    SK_INC(m->duration_count);
}

const char *const sk_tls_result_names[SK_TLS_RESULTS] = {
    "ok",      "resumed",     "no_client_cert", "unknown_ca", "expired", "not_yet_valid", "bad_certificate",
    "identity_mismatch", "not_tls", "timeout", "closed", "error"};
static const char *const tls_sides[2] = {"server", "client"};
const char *const sk_h2_error_names[SK_H2_ERRORS] = {
    "rapid_reset",        "ping_flood",        "settings_flood",    "empty_frames",
    "continuation_flood", "headers_too_large", "compression_error", "outbound_flood",
    "protocol_error",     "stream_error",      "refused_stream"};

/* The sums of every worker's scalar counters and histogram. */
typedef struct totals {
    int64_t downstream_active;
    uint64_t downstream_total;
    int64_t upstream_active;
    uint64_t upstream_opened;
    uint64_t upstream_reused;
    uint64_t upstream_connect_failures;
    uint64_t bytes_received;
    uint64_t bytes_sent;
    uint64_t buckets[SK_HIST_BUCKETS]; /* non-cumulative */
    uint64_t sum_us;
    uint64_t count;
    uint64_t tls[2][SK_TLS_RESULTS];
    int64_t h2_active;
    uint64_t h2_total, h2_streams;
    uint64_t h2_errors[SK_H2_ERRORS];
} totals;

static void sum_totals(totals *t, sk_metrics *const *m, size_t n)
{
    memset(t, 0, sizeof(*t));
    for (size_t i = 0; i < n; i++) {
        const sk_metrics *w = m[i];
        if (!w) continue;
        /* gauges are summed as signed values: a worker's own gauge never
         * goes below zero, but the reader must not amplify a transient */
        t->downstream_active += (int64_t)SK_LOAD(w->downstream_active);
        t->downstream_total += SK_LOAD(w->downstream_total);
        t->upstream_active += (int64_t)SK_LOAD(w->upstream_active);
        t->upstream_opened += SK_LOAD(w->upstream_opened);
        t->upstream_reused += SK_LOAD(w->upstream_reused);
        t->upstream_connect_failures += SK_LOAD(w->upstream_connect_failures);
        t->bytes_received += SK_LOAD(w->bytes_received);
        t->bytes_sent += SK_LOAD(w->bytes_sent);
        for (size_t b = 0; b < SK_HIST_BUCKETS; b++) t->buckets[b] += SK_LOAD(w->duration_buckets[b]);
        t->sum_us += SK_LOAD(w->duration_sum_us);
        t->count += SK_LOAD(w->duration_count);
        for (int side = 0; side < 2; side++)
            for (int r = 0; r < SK_TLS_RESULTS; r++) t->tls[side][r] += SK_LOAD(w->tls_handshakes[side][r]);
        t->h2_active += (int64_t)SK_LOAD(w->h2_active);
        t->h2_total += SK_LOAD(w->h2_total);
        t->h2_streams += SK_LOAD(w->h2_streams);
        for (int e = 0; e < SK_H2_ERRORS; e++) t->h2_errors[e] += SK_LOAD(w->h2_errors[e]);
    }
}

/* Sums row `row` of the route tables into counts[SK_STATUS_SLOTS]. Returns
 * true when any cell is non-zero. */
static bool sum_row(uint64_t *counts, sk_metrics *const *m, size_t n, size_t row)
{
    bool any = false;
    memset(counts, 0, SK_STATUS_SLOTS * sizeof(uint64_t));
    for (size_t i = 0; i < n; i++) {
        const sk_metrics *w = m[i];
        if (!w) continue;
        size_t rows = __atomic_load_n(&w->nroutes, __ATOMIC_ACQUIRE);
        const uint64_t *table = __atomic_load_n(&w->route_status, __ATOMIC_ACQUIRE);
        if (!table || row >= rows) continue;
        const uint64_t *cells = table + row * SK_STATUS_SLOTS;
        for (size_t s = 0; s < SK_STATUS_SLOTS; s++) {
            uint64_t v = SK_LOAD(cells[s]);
            counts[s] += v;
            if (v) any = true;
        }
    }
    return any;
}

/* Appends `s` escaped as a Prometheus label value (\\, \", \n). */
static int prom_label(sk_buf *out, const char *s)
{
    for (; *s; s++) {
        int rc;
        if (*s == '\\')
            rc = sk_buf_append(out, "\\\\", 2);
        else if (*s == '"')
            rc = sk_buf_append(out, "\\\"", 2);
        else if (*s == '\n')
            rc = sk_buf_append(out, "\\n", 2);
        else
            rc = sk_buf_append(out, s, 1);
        if (rc < 0) return -1;
    }
    return 0;
}

/* Appends the sidekick_requests_total series of one route row. */
static int prom_route_row(sk_buf *out, const char *name, const uint64_t *counts)
{
    for (size_t s = 0; s < SK_STATUS_SLOTS; s++) {
        if (!counts[s]) continue;
        if (sk_buf_printf(out, "sidekick_requests_total{route=\"") < 0 || prom_label(out, name) < 0 ||
            sk_buf_printf(out, "\",code=\"%zu\"} %" PRIu64 "\n", s + 100, counts[s]) < 0)
            return -1;
    }
    return 0;
}

/* Appends the "# HELP" and "# TYPE" lines of one metric family. */
static int prom_family(sk_buf *out, const char *name, const char *type, const char *help)
{
    return sk_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int prom_u64(sk_buf *out, const char *name, const char *type, const char *help, uint64_t v)
{
    if (prom_family(out, name, type, help) < 0) return -1;
    return sk_buf_printf(out, "%s %" PRIu64 "\n", name, v);
}

static int prom_i64(sk_buf *out, const char *name, const char *type, const char *help, int64_t v)
{
    if (prom_family(out, name, type, help) < 0) return -1;
    return sk_buf_printf(out, "%s %" PRId64 "\n", name, v);
}

/*
 * sk_metrics_render_prometheus() appends the sum of the `n` workers'
 * metrics `m[0..n)` (NULL entries are skipped) to `out` in the Prometheus
 * text exposition format 0.0.4. `cfg` names the routes and gives the
 * generation; it may be NULL. Only non-zero (route, code) series are
 * emitted. Main thread; returns 0, or -1 on allocation failure (`out` may
 * then hold a partial rendering).
 */
int sk_metrics_render_prometheus(sk_buf *out, const sk_config *cfg, sk_metrics *const *m, size_t n)
{
    uint64_t counts[SK_STATUS_SLOTS];
    totals t;
    if (!m) n = 0;
    sum_totals(&t, m, n);

    if (prom_family(out, "sidekick_requests_total", "counter",
                    "Requests answered, by route and status code (route=\"\": no route matched).") < 0)
        return -1;
    for (size_t r = 1; r < nrows; r++)
        if (sum_row(counts, m, n, r) && prom_route_row(out, row_names[r], counts) < 0) return -1;
    if (sum_row(counts, m, n, 0) && prom_route_row(out, "", counts) < 0) return -1;

    const char *h = "sidekick_request_duration_seconds";
    if (prom_family(out, h, "histogram", "Time from request start to the last byte of the response.") < 0)
        return -1;
    uint64_t cum = 0;
    for (size_t b = 0; b < SK_HIST_BUCKETS; b++) {
        cum += t.buckets[b];
        int rc;
        if (b < SK_HIST_BUCKETS - 1)
            rc = sk_buf_printf(out, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", h, (double)hist_bounds_us[b] / 1e6,
                               cum);
        else
            rc = sk_buf_printf(out, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", h, cum);
        if (rc < 0) return -1;
    }
    /* the sum is printed from integer microseconds: exact, no float rounding */
    if (sk_buf_printf(out, "%s_sum %" PRIu64 ".%06" PRIu64 "\n%s_count %" PRIu64 "\n", h, t.sum_us / 1000000,
                      t.sum_us % 1000000, h, t.count) < 0)
        return -1;

    if (prom_i64(out, "sidekick_downstream_connections_active", "gauge", "Open client connections.",
                 t.downstream_active) < 0 ||
        prom_u64(out, "sidekick_downstream_connections_total", "counter", "Accepted client connections.",
                 t.downstream_total) < 0 ||
        prom_i64(out, "sidekick_upstream_connections_active", "gauge", "Open upstream connections.",
                 t.upstream_active) < 0 ||
        prom_u64(out, "sidekick_upstream_connections_opened_total", "counter", "Upstream connections opened.",
                 t.upstream_opened) < 0 ||
        prom_u64(out, "sidekick_upstream_requests_reused_total", "counter",
                 "Requests sent on a pooled (reused) upstream connection.", t.upstream_reused) < 0 ||
        prom_u64(out, "sidekick_upstream_connect_failures_total", "counter",
                 "Failed upstream connects (refused, timed out).", t.upstream_connect_failures) < 0 ||
        prom_u64(out, "sidekick_downstream_bytes_received_total", "counter", "Bytes read from clients.",
                 t.bytes_received) < 0 ||
        prom_u64(out, "sidekick_downstream_bytes_sent_total", "counter", "Bytes written to clients.",
                 t.bytes_sent) < 0 ||
        prom_u64(out, "sidekick_config_generation", "gauge",
                 "Generation number of the running configuration.", cfg ? cfg->generation : 0) < 0 ||
        prom_u64(out, "sidekick_config_reloads_total", "counter",
                 "Reloads that published a new configuration generation.", SK_LOAD(sk_config_reloads)) < 0 ||
        prom_u64(out, "sidekick_config_reload_failures_total", "counter",
                 "Reloads refused (invalid file, plugin or Lua failure, unbindable address).",
                 SK_LOAD(sk_config_reload_failures)) < 0 ||
        prom_u64(out, "sidekick_workers", "gauge", "Number of worker threads.", (uint64_t)n) < 0)
        return -1;
    /* every side and result, zeros too: a rate() over a series that appears late misses its first events */
    const char *hs = "sidekick_tls_handshakes_total";
    if (prom_family(out, hs, "counter", "TLS handshakes by side (server: a listener, client: a cluster) and result.") <
        0)
        return -1;
    for (int side = 0; side < 2; side++)
        for (int r = 0; r < SK_TLS_RESULTS; r++)
            if (sk_buf_printf(out, "%s{side=\"%s\",result=\"%s\"} %" PRIu64 "\n", hs, tls_sides[side],
                              sk_tls_result_names[r], t.tls[side][r]) < 0)
                return -1;
    if (prom_i64(out, "sidekick_http2_connections_active", "gauge",
                 "Open client connections speaking HTTP/2.", t.h2_active) < 0 ||
        prom_u64(out, "sidekick_http2_connections_total", "counter", "Client connections that spoke HTTP/2.",
                 t.h2_total) < 0 ||
        prom_u64(out, "sidekick_http2_streams_total", "counter", "HTTP/2 request streams opened by clients.",
                 t.h2_streams) < 0)
        return -1;
    const char *he = "sidekick_http2_protocol_errors_total";
    if (prom_family(out, he, "counter",
                    "HTTP/2 protocol errors and floods by reason, each answered with GOAWAY or RST_STREAM.") <
        0)
        return -1;
    for (int e = 0; e < SK_H2_ERRORS; e++)
        if (sk_buf_printf(out, "%s{reason=\"%s\"} %" PRIu64 "\n", he, sk_h2_error_names[e], t.h2_errors[e]) <
            0)
            return -1;
    return 0;
}

/* json_object_set_new() that remembers a failure in *ok. */
static void jset(json_t *obj, const char *key, json_t *v, bool *ok)
{
    if (!v || json_object_set_new(obj, key, v) < 0) *ok = false;
}

static void jpush(json_t *arr, json_t *v, bool *ok)
{
    if (!v || json_array_append_new(arr, v) < 0) *ok = false;
}

/* Appends one route row's non-zero cells to the "requests" array. */
static void json_route_row(json_t *arr, const char *name, const uint64_t *counts, bool *ok)
{
    for (size_t s = 0; s < SK_STATUS_SLOTS && *ok; s++) {
        if (!counts[s]) continue;
        json_t *o = json_object();
        if (!o) {
            *ok = false;
            return;
        }
        jset(o, "route", json_string(name), ok);
        jset(o, "code", json_integer((json_int_t)(s + 100)), ok);
        jset(o, "count", json_integer((json_int_t)counts[s]), ok);
        jpush(arr, o, ok);
    }
}

static int dump_cb(const char *buffer, size_t size, void *data)
{
    return sk_buf_append(data, buffer, size);
}

/*
 * sk_metrics_render_json() appends the same figures as the Prometheus
 * rendering to `out` as one JSON object followed by a newline:
 *   {"requests":[{"route","code","count"}...],
 *    "request_duration":{"count","sum_seconds","buckets":[{"le","count"}...]},
 *    "downstream_connections_active", ..., "config_generation", "workers"}
 * Bucket counts are cumulative; the last bucket has "le":"+Inf". Arguments
 * as for sk_metrics_render_prometheus(). Returns 0 or -1 on allocation
 * failure.
 */
int sk_metrics_render_json(sk_buf *out, const sk_config *cfg, sk_metrics *const *m, size_t n)
{
    uint64_t counts[SK_STATUS_SLOTS];
    totals t;
    bool ok = true;
    if (!m) n = 0;
    sum_totals(&t, m, n);

    json_t *root = json_object();
    json_t *reqs = json_array();
    json_t *dur = json_object();
    json_t *buckets = json_array();
    if (!root || !reqs || !dur || !buckets) {
        json_decref(root);
        json_decref(reqs);
        json_decref(dur);
        json_decref(buckets);
        return -1;
    }
    /* children before parents: jansson releases a value it fails to attach,
     * so nothing is touched after a failed attach */
    jset(dur, "count", json_integer((json_int_t)t.count), &ok);
    jset(dur, "sum_seconds", json_real((double)t.sum_us / 1e6), &ok);
    if (ok)
        jset(dur, "buckets", buckets, &ok);
    else
        json_decref(buckets);
    if (ok)
        jset(root, "requests", reqs, &ok);
    else
        json_decref(reqs);
    if (ok)
        jset(root, "request_duration", dur, &ok);
    else
        json_decref(dur);
    if (!ok) {
        json_decref(root);
        return -1;
    }

    for (size_t r = 1; r < nrows && ok; r++)
        if (sum_row(counts, m, n, r)) json_route_row(reqs, row_names[r], counts, &ok);
    if (ok && sum_row(counts, m, n, 0)) json_route_row(reqs, "", counts, &ok);

    uint64_t cum = 0;
    for (size_t b = 0; b < SK_HIST_BUCKETS && ok; b++) {
        cum += t.buckets[b];
        json_t *o = json_object();
        if (!o) {
            ok = false;
            break;
        }
        if (b < SK_HIST_BUCKETS - 1)
            jset(o, "le", json_real((double)hist_bounds_us[b] / 1e6), &ok);
        else
            jset(o, "le", json_string("+Inf"), &ok);
        jset(o, "count", json_integer((json_int_t)cum), &ok);
        jpush(buckets, o, &ok);
    }

    jset(root, "downstream_connections_active", json_integer(t.downstream_active), &ok);
    jset(root, "downstream_connections_total", json_integer((json_int_t)t.downstream_total), &ok);
    jset(root, "upstream_connections_active", json_integer(t.upstream_active), &ok);
    jset(root, "upstream_connections_opened_total", json_integer((json_int_t)t.upstream_opened), &ok);
    jset(root, "upstream_requests_reused_total", json_integer((json_int_t)t.upstream_reused), &ok);
    jset(root, "upstream_connect_failures_total", json_integer((json_int_t)t.upstream_connect_failures), &ok);
    jset(root, "downstream_bytes_received_total", json_integer((json_int_t)t.bytes_received), &ok);
    jset(root, "downstream_bytes_sent_total", json_integer((json_int_t)t.bytes_sent), &ok);
    jset(root, "config_generation", json_integer(cfg ? (json_int_t)cfg->generation : 0), &ok);
    jset(root, "workers", json_integer((json_int_t)n), &ok);
    json_t *tls = json_object();
    for (int side = 0; side < 2 && tls; side++) {
        json_t *o = json_object();
        for (int r = 0; r < SK_TLS_RESULTS && o; r++)
            jset(o, sk_tls_result_names[r], json_integer((json_int_t)t.tls[side][r]), &ok);
        jset(tls, tls_sides[side], o, &ok);
    }
    jset(root, "tls_handshakes", tls, &ok);
    jset(root, "http2_connections_active", json_integer(t.h2_active), &ok);
    jset(root, "http2_connections_total", json_integer((json_int_t)t.h2_total), &ok);
    jset(root, "http2_streams_total", json_integer((json_int_t)t.h2_streams), &ok);
    json_t *h2e = json_object();
    for (int e = 0; e < SK_H2_ERRORS && h2e; e++)
        jset(h2e, sk_h2_error_names[e], json_integer((json_int_t)t.h2_errors[e]), &ok);
    jset(root, "http2_protocol_errors", h2e, &ok);

    if (ok && json_dump_callback(root, dump_cb, out, JSON_INDENT(2) | JSON_REAL_PRECISION(15)) < 0)
        ok = false;
    if (ok && sk_buf_append(out, "\n", 1) < 0) ok = false;
    json_decref(root);
    return ok ? 0 : -1;
}
