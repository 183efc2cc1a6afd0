/*
 * metrics.c — counting into a worker's rows, and the two renderers
 * (Prometheus text, JSON) the admin endpoint serves.
 *
 * Each worker owns one sk_metrics and is its only writer; the admin (main)
 * thread reads every worker's counters with relaxed atomic loads and sums
 * them while rendering. A rendering is therefore not an atomic snapshot
 * across counters (a request may be in the histogram but not yet in the
 * code table), which is the usual trade-off for lock-free counters.
 *
 * What is shown is what the running config names: its listeners, routes
 * and clusters, and the endpoints of the sets in force the caller gathers.
 * Rows of names that left (a route removed by a reload, an endpoint
 * dropped by discovery) are no longer shown, even while an old generation
 * still finishes requests on them.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <jansson.h>

#include "metrics.h"

uint64_t sk_config_reloads, sk_config_reload_failures;

static const uint64_t hist_bounds_us[SK_HIST_BUCKETS - 1] = SK_HIST_BOUNDS_US;

/* ---- counting ---------------------------------------------------------- */

/* Observes a duration (see metrics.h). */
void sk_metrics_observe(sk_mrow *r, uint64_t duration_us)
{
    size_t b = 0;
    while (b < SK_HIST_BUCKETS - 1 && duration_us > hist_bounds_us[b]) b++;
    SK_INC(r->buckets[b]);
    SK_ADD(r->sum_us, duration_us);
    SK_INC(r->count);
}

/* Counts a status code (see metrics.h). */
void sk_metrics_code(sk_mrow *r, int status)
{
    if (status >= 100 && status < 100 + SK_STATUS_SLOTS) SK_INC(r->codes[status - 100]);
}

/*
 * sk_metrics_request() counts one finished request on the calling worker's
 * metrics: its status in row `row` (the route's, or its listener's "no
 * route" row) and its duration in the row's histogram. A status outside
 * 100..599 is left out of the code table but still observed. Worker
 * thread only (single writer); never allocates.
 */
void sk_metrics_request(sk_metrics *m, size_t row, int status, uint64_t duration_us)
{
    sk_mrow *r = sk_metrics_row(m, row);
    if (!r) return;
    sk_metrics_code(r, status);
    sk_metrics_observe(r, duration_us);
}

const char *const sk_tls_result_names[SK_TLS_RESULTS] = {
    "ok",      "resumed",       "no_client_cert",  "unknown_ca",
    "expired", "not_yet_valid", "bad_certificate", "identity_mismatch",
    "not_tls", "timeout",       "closed",          "error"};
static const char *const tls_sides[2] = {"server", "client"};
static const char *const lua_kinds[3] = {"error", "budget", "memory"};
static const char *const overflow_limits[3] = {"max_connections", "max_pending", "max_requests"};
static const char *const cx_states[SK_MG_COUNT] = {"active", "idle"};
const char *const sk_h2_error_names[SK_H2_ERRORS] = {
    "rapid_reset",        "ping_flood",        "settings_flood",    "empty_frames",
    "continuation_flood", "headers_too_large", "compression_error", "outbound_flood",
    "protocol_error",     "stream_error",      "refused_stream"};

/* ---- summing ----------------------------------------------------------- */

/* The sums of every worker's unlabelled counters. */
typedef struct totals {
    int64_t downstream_active;
    uint64_t downstream_total;
    uint64_t bytes_received;
    uint64_t bytes_sent;
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
        t->bytes_received += SK_LOAD(w->bytes_received);
        t->bytes_sent += SK_LOAD(w->bytes_sent);
        for (int side = 0; side < 2; side++)
            for (int r = 0; r < SK_TLS_RESULTS; r++) t->tls[side][r] += SK_LOAD(w->tls_handshakes[side][r]);
        t->h2_active += (int64_t)SK_LOAD(w->h2_active);
        t->h2_total += SK_LOAD(w->h2_total);
        t->h2_streams += SK_LOAD(w->h2_streams);
        for (int e = 0; e < SK_H2_ERRORS; e++) t->h2_errors[e] += SK_LOAD(w->h2_errors[e]);
    }
}

/* Sums row `row` of every worker into *acc (gauges: as signed values).
 * Row 0, the sink of what got no row, reads as zeros. */
static void sum_row(sk_mrow *acc, sk_metrics *const *m, size_t n, size_t row)
{
    memset(acc, 0, sizeof(*acc));
    for (size_t i = 0; row && i < n; i++) {
        sk_mrow *w = sk_metrics_row(m[i], row);
        if (!w) continue;
        for (size_t s = 0; s < SK_STATUS_SLOTS; s++) acc->codes[s] += SK_LOAD(w->codes[s]);
        for (size_t b = 0; b < SK_HIST_BUCKETS; b++) acc->buckets[b] += SK_LOAD(w->buckets[b]);
        acc->sum_us += SK_LOAD(w->sum_us);
        acc->count += SK_LOAD(w->count);
        for (size_t c = 0; c < SK_MC_COUNT; c++) acc->c[c] += SK_LOAD(w->c[c]);
        for (size_t g = 0; g < SK_MG_COUNT; g++) acc->g[g] += SK_LOAD(w->g[g]);
    }
}

/* A summed gauge, never shown below zero. */
static int64_t gauge(const sk_mrow *r, int which)
{
    int64_t v = (int64_t)r->g[which];
    return v < 0 ? 0 : v;
}

/* What the process uses, from the kernel (Linux /proc). A figure that
 * cannot be read is left out (have_* false). */
typedef struct proc_stats {
    double cpu_seconds;   /* user + system CPU time */
    uint64_t rss_bytes;   /* resident memory */
    uint64_t vsize_bytes; /* virtual memory */
    uint64_t open_fds;    /* open file descriptors */
    uint64_t max_fds;     /* RLIMIT_NOFILE soft limit */
    double start_time;    /* Unix time the process started */
    bool have_memory, have_fds, have_max_fds, have_start;
} proc_stats;

/* The process start time in Unix seconds: boot time + the process's start
 * in clock ticks since boot. Read once. 0 when unknown. */
static double start_time(void)
{
    static double cached = -1;
    if (cached >= 0) return cached;
    cached = 0;
    char buf[4096];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return 0;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p) return 0;
    /* fields after ")": 3 state ... 22 starttime */
    unsigned long long ticks = 0;
    int field = 2;
    for (const char *q = p + 1; *q && field < 22; q++) {
        if (*q != ' ') continue;
        field++;
        if (field == 22) ticks = strtoull(q + 1, NULL, 10);
    }
    long hz = sysconf(_SC_CLK_TCK);
    unsigned long long btime = 0;
    if ((f = fopen("/proc/stat", "r")) != NULL) {
        char line[256];
        while (fgets(line, sizeof(line), f))
            if (strncmp(line, "btime ", 6) == 0) btime = strtoull(line + 6, NULL, 10);
        fclose(f);
    }
    if (field == 22 && hz > 0 && btime) cached = (double)btime + (double)ticks / (double)hz;
    return cached;
}

static void read_proc(proc_stats *ps)
{
    memset(ps, 0, sizeof(*ps));
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        ps->cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                          (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long long size, resident;
        long page = sysconf(_SC_PAGESIZE);
        if (fscanf(f, "%llu %llu", &size, &resident) == 2 && page > 0) {
            ps->vsize_bytes = size * (uint64_t)page;
            ps->rss_bytes = resident * (uint64_t)page;
            ps->have_memory = true;
        }
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        uint64_t k = 0;
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            if (e->d_name[0] != '.') k++;
        closedir(d);
        ps->open_fds = k ? k - 1 : 0; /* not the one reading the directory */
        ps->have_fds = true;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        ps->max_fds = (uint64_t)rl.rlim_cur;
        ps->have_max_fds = true;
    }
    ps->start_time = start_time();
    ps->have_start = ps->start_time > 0;
}

/* ---- Prometheus text --------------------------------------------------- */

/* A label: name and value. */
typedef struct lbl {
    const char *k, *v;
} lbl;

/* Appends `s` escaped as a Prometheus label value (\\, \", \n). */
static int prom_escape(sk_buf *out, const char *s)
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

/* Appends `name{k="v",...` — the caller closes the brace (after its own
 * labels, each preceded by a comma when nl > 0). */
static int prom_open(sk_buf *out, const char *name, const lbl *l, size_t nl)
{
    if (sk_buf_puts(out, name) < 0 || sk_buf_puts(out, "{") < 0) return -1;
    for (size_t i = 0; i < nl; i++)
        if ((i && sk_buf_puts(out, ",") < 0) || sk_buf_puts(out, l[i].k) < 0 || sk_buf_puts(out, "=\"") < 0 ||
            prom_escape(out, l[i].v) < 0 || sk_buf_puts(out, "\"") < 0)
            return -1;
    return 0;
}

/* One sample: name{labels} value. */
static int prom_sample(sk_buf *out, const char *name, const lbl *l, size_t nl, int64_t v)
{
    if (nl == 0) return sk_buf_printf(out, "%s %" PRId64 "\n", name, v);
    if (prom_open(out, name, l, nl) < 0) return -1;
    return sk_buf_printf(out, "} %" PRId64 "\n", v);
}

/* Appends the "# HELP" and "# TYPE" lines of one metric family. */
static int prom_family(sk_buf *out, const char *name, const char *type, const char *help)
{
    return sk_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The non-zero code cells of r as name{labels,code="N"}. */
static int prom_codes(sk_buf *out, const char *name, const lbl *l, size_t nl, const sk_mrow *r)
{
    for (size_t s = 0; s < SK_STATUS_SLOTS; s++) {
        if (!r->codes[s]) continue;
        if (prom_open(out, name, l, nl) < 0 ||
            sk_buf_printf(out, "%scode=\"%zu\"} %" PRIu64 "\n", nl ? "," : "", s + 100, r->codes[s]) < 0)
            return -1;
    }
    return 0;
}

/* The histogram series of r: cumulative _bucket lines ending with
 * le="+Inf", then _sum (exact, from integer microseconds) and _count. */
static int prom_hist(sk_buf *out, const char *name, const lbl *l, size_t nl, const sk_mrow *r)
{
    char n[128];
    uint64_t cum = 0;
    snprintf(n, sizeof(n), "%s_bucket", name);
    for (size_t b = 0; b < SK_HIST_BUCKETS; b++) {
        cum += r->buckets[b];
        if (prom_open(out, n, l, nl) < 0 || sk_buf_puts(out, nl ? ",le=\"" : "le=\"") < 0) return -1;
        int rc = b < SK_HIST_BUCKETS - 1 ? sk_buf_printf(out, "%g", (double)hist_bounds_us[b] / 1e6)
                                         : sk_buf_puts(out, "+Inf");
        if (rc < 0 || sk_buf_printf(out, "\"} %" PRIu64 "\n", cum) < 0) return -1;
    }
    snprintf(n, sizeof(n), "%s_sum", name);
    if (nl ? prom_open(out, n, l, nl) < 0 || sk_buf_puts(out, "}") < 0 : sk_buf_puts(out, n) < 0) return -1;
    if (sk_buf_printf(out, " %" PRIu64 ".%06" PRIu64 "\n", r->sum_us / 1000000, r->sum_us % 1000000) < 0)
        return -1;
    snprintf(n, sizeof(n), "%s_count", name);
    if (nl ? prom_open(out, n, l, nl) < 0 || sk_buf_puts(out, "}") < 0 : sk_buf_puts(out, n) < 0) return -1;
    return sk_buf_printf(out, " %" PRIu64 "\n", r->count);
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

static int prom_double(sk_buf *out, const char *name, const char *type, const char *help, double v)
{
    if (prom_family(out, name, type, help) < 0) return -1;
    return sk_buf_printf(out, "%s %.6f\n", name, v);
}

/* A name for the listener of a route (NULL in hand-made configs). */
static const char *listener_of(const sk_route *rt)
{
    return rt->listener ? rt->listener->name : "";
}

/* One counter family with one series per cluster: counter `which` of each cluster row. */
static int prom_cluster_counter(sk_buf *out, const sk_config *cfg, const sk_mrow *rows, const char *name,
                                const char *help, int which)
{
    if (prom_family(out, name, "counter", help) < 0) return -1;
    for (size_t i = 0; i < cfg->nclusters; i++) {
        lbl l[] = {{"cluster", cfg->clusters[i]->name}};
        if (prom_sample(out, name, l, 1, (int64_t)rows[i].c[which]) < 0) return -1;
    }
    return 0;
}

/* The families of routes and listeners. */
static int prom_routes(sk_buf *out, const sk_config *cfg, sk_metrics *const *m, size_t n, sk_mrow *acc)
{
    const char *rq = "sidekick_requests_total";
    if (prom_family(out, rq, "counter",
                    "Requests answered, by listener, route and status code (route=\"\": no route "
                    "matched).") < 0)
        return -1;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const sk_route *rt = cfg->routes[i];
        lbl l[] = {{"listener", listener_of(rt)}, {"route", rt->name}};
        sum_row(acc, m, n, rt->metrics_row);
        if (prom_codes(out, rq, l, 2, acc) < 0) return -1;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        lbl l[] = {{"listener", cfg->listeners[i]->name}, {"route", ""}};
        sum_row(acc, m, n, cfg->listeners[i]->metrics_row);
        if (prom_codes(out, rq, l, 2, acc) < 0) return -1;
    }

    const char *h = "sidekick_request_duration_seconds";
    if (prom_family(out, h, "histogram",
                    "Time from the first byte of a request to the last byte of its response, by listener "
                    "and route.") < 0)
        return -1;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const sk_route *rt = cfg->routes[i];
        lbl l[] = {{"listener", listener_of(rt)}, {"route", rt->name}};
        sum_row(acc, m, n, rt->metrics_row);
        if (prom_hist(out, h, l, 2, acc) < 0) return -1;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        lbl l[] = {{"listener", cfg->listeners[i]->name}, {"route", ""}};
        sum_row(acc, m, n, cfg->listeners[i]->metrics_row);
        if (acc->count && prom_hist(out, h, l, 2, acc) < 0) return -1; /* only where it happened */
    }

    bool any = false;
    for (size_t i = 0; i < cfg->nroutes && !any; i++) any = cfg->routes[i]->lua != NULL;
    if (!any) return 0;
    const char *le = "sidekick_lua_errors_total";
    if (prom_family(out, le, "counter",
                    "Lua filter failures answered with 500 filter_error, by route and kind.") < 0)
        return -1;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const sk_route *rt = cfg->routes[i];
        if (!rt->lua) continue;
        sum_row(acc, m, n, rt->metrics_row);
        for (int k = 0; k < 3; k++) {
            lbl l[] = {{"route", rt->name}, {"kind", lua_kinds[k]}};
            if (prom_sample(out, le, l, 2, (int64_t)acc->c[SK_MC_LUA_ERROR + k]) < 0) return -1;
        }
    }
    return 0;
}

/* The families of clusters and endpoints. */
static int prom_upstream(sk_buf *out, const sk_config *cfg, const sk_metrics_endpoint *eps, size_t neps,
                         sk_metrics *const *m, size_t n, sk_mrow *acc)
{
    const char *ur = "sidekick_upstream_requests_total";
    if (prom_family(out, ur, "counter",
                    "Upstream attempts that got a response, by cluster, endpoint and status code.") < 0)
        return -1;
    for (size_t i = 0; i < neps; i++) {
        lbl l[] = {{"cluster", eps[i].cluster}, {"endpoint", eps[i].address}};
        sum_row(acc, m, n, eps[i].row);
        if (prom_codes(out, ur, l, 2, acc) < 0) return -1;
    }
    if (cfg->nclusters == 0) return 0;

    sk_mrow *rows = calloc(cfg->nclusters, sizeof(*rows));
    if (!rows) return -1;
    for (size_t i = 0; i < cfg->nclusters; i++) sum_row(&rows[i], m, n, cfg->clusters[i]->metrics_row);
    int rc = 0;
    const char *h = "sidekick_upstream_request_duration_seconds";
    rc |= prom_family(out, h, "histogram",
                      "Time from sending an upstream attempt to the end of its response, by cluster.");
    for (size_t i = 0; i < cfg->nclusters && !rc; i++) {
        lbl l[] = {{"cluster", cfg->clusters[i]->name}};
        rc |= prom_hist(out, h, l, 1, &rows[i]);
    }
    rc |= prom_cluster_counter(out, cfg, rows, "sidekick_upstream_connect_failures_total",
                               "Upstream connects that failed (refused, timed out, TLS peer refused).",
                               SK_MC_CONNECT_FAILURES);
    rc |= prom_cluster_counter(out, cfg, rows, "sidekick_upstream_timeouts_total",
                               "Route timeouts that ran out while waiting on the upstream (504).",
                               SK_MC_TIMEOUTS);
    rc |= prom_cluster_counter(out, cfg, rows, "sidekick_upstream_resets_total",
                               "Upstream attempts cut by the upstream: connection reset or closed, or a "
                               "malformed response.",
                               SK_MC_RESETS);
    rc |= prom_cluster_counter(out, cfg, rows, "sidekick_upstream_retries_total",
                               "Upstream attempts after the first of a request.", SK_MC_RETRIES);
    const char *cx = "sidekick_upstream_connections";
    rc |= prom_family(out, cx, "gauge",
                      "Open upstream connections by state: active (in use, connecting, tcp relays) or idle "
                      "(pooled).");
    for (size_t i = 0; i < cfg->nclusters && !rc; i++)
        for (int s = 0; s < SK_MG_COUNT; s++) {
            lbl l[] = {{"cluster", cfg->clusters[i]->name}, {"state", cx_states[s]}};
            rc |= prom_sample(out, cx, l, 2, gauge(&rows[i], s));
        }
    rc |= prom_cluster_counter(out, cfg, rows, "sidekick_upstream_connections_created_total",
                               "Upstream connections opened.", SK_MC_CX_CREATED);
    rc |= prom_cluster_counter(out, cfg, rows, "sidekick_upstream_connections_reused_total",
                               "Requests sent on a pooled upstream connection.", SK_MC_CX_REUSED);
    const char *cb = "sidekick_circuit_breaker_overflows_total";
    rc |= prom_family(out, cb, "counter",
                      "Requests refused by a cluster's limit (503 overloaded): max_connections, max_pending "
                      "or max_requests.");
    for (size_t i = 0; i < cfg->nclusters && !rc; i++)
        for (int k = 0; k < 3; k++) {
            lbl l[] = {{"cluster", cfg->clusters[i]->name}, {"limit", overflow_limits[k]}};
            rc |= prom_sample(out, cb, l, 2, (int64_t)rows[i].c[SK_MC_OVERFLOW_CONNECTIONS + k]);
        }
    rc |= prom_cluster_counter(out, cfg, rows, "sidekick_outlier_ejections_total",
                               "Endpoints ejected by outlier detection.", SK_MC_EJECTIONS);
    free(rows);
    if (rc) return -1;

    static const struct {
        const char *name, *help;
    } ep_fams[] = {
        {"sidekick_endpoint_healthy",
         "1 when the balancers may send to the endpoint (healthy, not ejected)."},
        {"sidekick_endpoint_ejected", "1 while outlier detection ejects the endpoint."},
        {"sidekick_endpoint_active_requests", "Requests in flight to the endpoint, all workers."},
    };
    for (size_t f = 0; f < SK_ARRAY_LEN(ep_fams); f++) {
        if (prom_family(out, ep_fams[f].name, "gauge", ep_fams[f].help) < 0) return -1;
        for (size_t i = 0; i < neps; i++) {
            lbl l[] = {{"cluster", eps[i].cluster}, {"endpoint", eps[i].address}};
            int64_t v = f == 0 ? eps[i].healthy : f == 1 ? eps[i].ejected : (int64_t)eps[i].active;
            if (prom_sample(out, ep_fams[f].name, l, 2, v) < 0) return -1;
        }
    }
    return 0;
}

/* The process families (the names every Prometheus client library uses). */
static int prom_process(sk_buf *out)
{
    proc_stats ps;
    read_proc(&ps);
    int rc = prom_double(out, "process_cpu_seconds_total", "counter",
                         "User and system CPU time spent, in seconds.", ps.cpu_seconds);
    if (ps.have_memory)
        rc |= prom_u64(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                       ps.rss_bytes) |
              prom_u64(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
                       ps.vsize_bytes);
    if (ps.have_fds) rc |= prom_u64(out, "process_open_fds", "gauge", "Open file descriptors.", ps.open_fds);
    if (ps.have_max_fds)
        rc |= prom_u64(out, "process_max_fds", "gauge", "Limit of open file descriptors.", ps.max_fds);
    if (ps.have_start)
        rc |= prom_double(out, "process_start_time_seconds", "gauge",
                          "Start time of the process since the Unix epoch, in seconds.", ps.start_time);
    return rc ? -1 : 0;
}

/*
 * sk_metrics_render_prometheus() appends the sum of the `n` workers'
 * metrics `m[0..n)` (NULL entries are skipped) to `out` in the Prometheus
 * text exposition format 0.0.4: the series of cfg's routes, listeners and
 * clusters and of the endpoints eps[0..neps), then the process-wide ones.
 * `cfg` may be NULL (nothing labelled is shown). Code series are shown
 * once non-zero; histograms and cluster counters always. Main thread;
 * returns 0, or -1 on allocation failure (`out` may then hold a partial
 * rendering).
 */
int sk_metrics_render_prometheus(sk_buf *out, const sk_config *cfg, const sk_metrics_endpoint *eps,
                                 size_t neps, sk_metrics *const *m, size_t n)
{
    static const sk_config none = {0};
    totals t;
    if (!m) n = 0;
    if (!cfg) {
        cfg = &none;
        neps = 0;
    }
    sum_totals(&t, m, n);
    sk_mrow *acc = malloc(sizeof(*acc));
    if (!acc) return -1;
    int rc = prom_routes(out, cfg, m, n, acc);
    if (rc == 0) rc = prom_upstream(out, cfg, eps, neps, m, n, acc);
    free(acc);
    if (rc < 0) return -1;

    if (prom_i64(out, "sidekick_downstream_connections_active", "gauge", "Open client connections.",
                 t.downstream_active) < 0 ||
        prom_u64(out, "sidekick_downstream_connections_total", "counter", "Accepted client connections.",
                 t.downstream_total) < 0 ||
        prom_u64(out, "sidekick_downstream_bytes_received_total", "counter", "Bytes read from clients.",
                 t.bytes_received) < 0 ||
        prom_u64(out, "sidekick_downstream_bytes_sent_total", "counter", "Bytes written to clients.",
                 t.bytes_sent) < 0 ||
        prom_u64(out, "sidekick_config_generation", "gauge",
                 "Generation number of the running configuration.", cfg->generation) < 0 ||
        prom_u64(out, "sidekick_config_reloads_total", "counter",
                 "Reloads that published a new configuration generation.", SK_LOAD(sk_config_reloads)) < 0 ||
        prom_u64(out, "sidekick_config_reload_failures_total", "counter",
                 "Reloads refused (invalid file, plugin or Lua failure, unbindable address).",
                 SK_LOAD(sk_config_reload_failures)) < 0 ||
        prom_u64(out, "sidekick_workers", "gauge", "Number of worker threads.", (uint64_t)n) < 0)
        return -1;
    /* every side and result, zeros too: a rate() over a series that appears late misses its first events */
    const char *hs = "sidekick_tls_handshakes_total";
    if (prom_family(out, hs, "counter",
                    "TLS handshakes by side (server: a listener, client: a cluster) and result.") < 0)
        return -1;
    for (int side = 0; side < 2; side++)
        for (int r = 0; r < SK_TLS_RESULTS; r++) {
            lbl l[] = {{"side", tls_sides[side]}, {"result", sk_tls_result_names[r]}};
            if (prom_sample(out, hs, l, 2, (int64_t)t.tls[side][r]) < 0) return -1;
        }
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
    return prom_process(out);
}

/* ---- JSON -------------------------------------------------------------- */

/* json_object_set_new() that remembers a failure in *ok. */
static void jset(json_t *obj, const char *key, json_t *v, bool *ok)
{
    if (!v || json_object_set_new(obj, key, v) < 0) *ok = false;
}

static void jpush(json_t *arr, json_t *v, bool *ok)
{
    if (!v || json_array_append_new(arr, v) < 0) *ok = false;
}

static json_t *jint(uint64_t v)
{
    return json_integer((json_int_t)v);
}

/* An array attached to obj under key (NULL on OOM, *ok false). */
static json_t *jarray(json_t *obj, const char *key, bool *ok)
{
    json_t *a = json_array();
    jset(obj, key, a, ok);
    return *ok ? a : NULL;
}

/* An object attached to obj under key, or pushed to an array (key NULL). */
static json_t *jobject(json_t *parent, const char *key, bool *ok)
{
    json_t *o = json_object();
    if (key)
        jset(parent, key, o, ok);
    else
        jpush(parent, o, ok);
    return *ok ? o : NULL;
}

/* {labels..., "code", "count"} for each non-zero code cell of r. */
static void json_codes(json_t *arr, const lbl *l, size_t nl, const sk_mrow *r, bool *ok)
{
    for (size_t s = 0; s < SK_STATUS_SLOTS && *ok; s++) {
        if (!r->codes[s]) continue;
        json_t *o = jobject(arr, NULL, ok);
        for (size_t i = 0; o && i < nl; i++) jset(o, l[i].k, json_string(l[i].v), ok);
        if (!o) return;
        jset(o, "code", jint(s + 100), ok);
        jset(o, "count", jint(r->codes[s]), ok);
    }
}

/* {labels..., "count", "sum_seconds", "buckets": [{"le", "count"}...]}
 * with cumulative counts, the last bucket "le": "+Inf". */
static void json_hist(json_t *arr, const lbl *l, size_t nl, const sk_mrow *r, bool *ok)
{
    json_t *o = jobject(arr, NULL, ok);
    for (size_t i = 0; o && i < nl; i++) jset(o, l[i].k, json_string(l[i].v), ok);
    if (!o) return;
    jset(o, "count", jint(r->count), ok);
    jset(o, "sum_seconds", json_real((double)r->sum_us / 1e6), ok);
    json_t *b = jarray(o, "buckets", ok);
    uint64_t cum = 0;
    for (size_t i = 0; b && i < SK_HIST_BUCKETS && *ok; i++) {
        cum += r->buckets[i];
        json_t *e = jobject(b, NULL, ok);
        if (!e) return;
        jset(e, "le",
             i < SK_HIST_BUCKETS - 1 ? json_real((double)hist_bounds_us[i] / 1e6) : json_string("+Inf"), ok);
        jset(e, "count", jint(cum), ok);
    }
}

static void json_routes(json_t *root, const sk_config *cfg, sk_metrics *const *m, size_t n, sk_mrow *acc,
                        bool *ok)
{
    json_t *reqs = jarray(root, "requests", ok);
    json_t *durs = jarray(root, "request_duration", ok);
    json_t *lua = jarray(root, "lua_errors", ok);
    if (!*ok) return;
    for (size_t i = 0; i < cfg->nroutes && *ok; i++) {
        const sk_route *rt = cfg->routes[i];
        lbl l[] = {{"listener", listener_of(rt)}, {"route", rt->name}};
        sum_row(acc, m, n, rt->metrics_row);
        json_codes(reqs, l, 2, acc, ok);
        json_hist(durs, l, 2, acc, ok);
        for (int k = 0; rt->lua && k < 3 && *ok; k++) {
            json_t *o = jobject(lua, NULL, ok);
            if (!o) break;
            jset(o, "route", json_string(rt->name), ok);
            jset(o, "kind", json_string(lua_kinds[k]), ok);
            jset(o, "count", jint(acc->c[SK_MC_LUA_ERROR + k]), ok);
        }
    }
    for (size_t i = 0; i < cfg->nlisteners && *ok; i++) {
        lbl l[] = {{"listener", cfg->listeners[i]->name}, {"route", ""}};
        sum_row(acc, m, n, cfg->listeners[i]->metrics_row);
        json_codes(reqs, l, 2, acc, ok);
        if (acc->count) json_hist(durs, l, 2, acc, ok);
    }
}

static void json_upstream(json_t *root, const sk_config *cfg, const sk_metrics_endpoint *eps, size_t neps,
                          sk_metrics *const *m, size_t n, sk_mrow *acc, bool *ok)
{
    json_t *ureqs = jarray(root, "upstream_requests", ok);
    json_t *udurs = jarray(root, "upstream_request_duration", ok);
    json_t *cls = jarray(root, "clusters", ok);
    json_t *ep = jarray(root, "endpoints", ok);
    if (!*ok) return;
    for (size_t i = 0; i < neps && *ok; i++) {
        lbl l[] = {{"cluster", eps[i].cluster}, {"endpoint", eps[i].address}};
        sum_row(acc, m, n, eps[i].row);
        json_codes(ureqs, l, 2, acc, ok);
        json_t *o = jobject(ep, NULL, ok);
        if (!o) break;
        jset(o, "cluster", json_string(eps[i].cluster), ok);
        jset(o, "endpoint", json_string(eps[i].address), ok);
        jset(o, "healthy", json_boolean(eps[i].healthy), ok);
        jset(o, "ejected", json_boolean(eps[i].ejected), ok);
        jset(o, "active_requests", jint(eps[i].active), ok);
    }
    for (size_t i = 0; i < cfg->nclusters && *ok; i++) {
        const char *name = cfg->clusters[i]->name;
        lbl l[] = {{"cluster", name}};
        sum_row(acc, m, n, cfg->clusters[i]->metrics_row);
        json_hist(udurs, l, 1, acc, ok);
        json_t *o = jobject(cls, NULL, ok);
        if (!o) break;
        jset(o, "cluster", json_string(name), ok);
        jset(o, "connect_failures_total", jint(acc->c[SK_MC_CONNECT_FAILURES]), ok);
        jset(o, "timeouts_total", jint(acc->c[SK_MC_TIMEOUTS]), ok);
        jset(o, "resets_total", jint(acc->c[SK_MC_RESETS]), ok);
        jset(o, "retries_total", jint(acc->c[SK_MC_RETRIES]), ok);
        json_t *cx = jobject(o, "connections", ok);
        for (int s = 0; cx && s < SK_MG_COUNT; s++) jset(cx, cx_states[s], json_integer(gauge(acc, s)), ok);
        jset(o, "connections_created_total", jint(acc->c[SK_MC_CX_CREATED]), ok);
        jset(o, "connections_reused_total", jint(acc->c[SK_MC_CX_REUSED]), ok);
        json_t *cb = jobject(o, "circuit_breaker_overflows_total", ok);
        for (int k = 0; cb && k < 3; k++)
            jset(cb, overflow_limits[k], jint(acc->c[SK_MC_OVERFLOW_CONNECTIONS + k]), ok);
        jset(o, "outlier_ejections_total", jint(acc->c[SK_MC_EJECTIONS]), ok);
    }
}

/*
 * sk_metrics_json() returns the figures of sk_metrics_render_prometheus()
 * as one JSON object (a new reference; NULL on OOM), keyed without the
 * sidekick_ prefix: "requests", "request_duration", "lua_errors",
 * "upstream_requests", "upstream_request_duration", "clusters",
 * "endpoints", the unlabelled counters and gauges, "tls_handshakes" and
 * "process" (docs/observability.md has the shape). Main thread.
 */
json_t *sk_metrics_json(const sk_config *cfg, const sk_metrics_endpoint *eps, size_t neps,
                        sk_metrics *const *m, size_t n)
{
    static const sk_config none = {0};
    totals t;
    bool ok = true;
    if (!m) n = 0;
    if (!cfg) {
        cfg = &none;
        neps = 0;
    }
    sum_totals(&t, m, n);
    json_t *root = json_object();
    sk_mrow *acc = malloc(sizeof(*acc));
    if (!root || !acc) {
        json_decref(root);
        free(acc);
        return NULL;
    }
    json_routes(root, cfg, m, n, acc, &ok);
    if (ok) json_upstream(root, cfg, eps, neps, m, n, acc, &ok);
    free(acc);

    jset(root, "downstream_connections_active", json_integer(t.downstream_active), &ok);
    jset(root, "downstream_connections_total", jint(t.downstream_total), &ok);
    jset(root, "downstream_bytes_received_total", jint(t.bytes_received), &ok);
    jset(root, "downstream_bytes_sent_total", jint(t.bytes_sent), &ok);
    jset(root, "config_generation", jint(cfg->generation), &ok);
    jset(root, "config_reloads_total", jint(SK_LOAD(sk_config_reloads)), &ok);
    jset(root, "config_reload_failures_total", jint(SK_LOAD(sk_config_reload_failures)), &ok);
    jset(root, "workers", jint(n), &ok);
    json_t *tls = ok ? jobject(root, "tls_handshakes", &ok) : NULL;
    for (int side = 0; tls && side < 2; side++) {
        json_t *o = jobject(tls, tls_sides[side], &ok);
        for (int r = 0; o && r < SK_TLS_RESULTS; r++)
            jset(o, sk_tls_result_names[r], jint(t.tls[side][r]), &ok);
    }
    proc_stats ps;
    read_proc(&ps);
    json_t *p = ok ? jobject(root, "process", &ok) : NULL;
    if (p) {
        jset(p, "cpu_seconds_total", json_real(ps.cpu_seconds), &ok);
        if (ps.have_memory) {
            jset(p, "resident_memory_bytes", jint(ps.rss_bytes), &ok);
            jset(p, "virtual_memory_bytes", jint(ps.vsize_bytes), &ok);
        }
        if (ps.have_fds) jset(p, "open_fds", jint(ps.open_fds), &ok);
        if (ps.have_max_fds) jset(p, "max_fds", jint(ps.max_fds), &ok);
        if (ps.have_start) jset(p, "start_time_seconds", json_real(ps.start_time), &ok);
    }
    if (ok) {
        json_t *h2 = jobject(root, "http2", &ok);
        if (h2) {
            jset(h2, "connections_active", json_integer(t.h2_active), &ok);
            jset(h2, "connections_total", json_integer((json_int_t)t.h2_total), &ok);
            jset(h2, "streams_total", json_integer((json_int_t)t.h2_streams), &ok);
            json_t *h2e = ok ? jobject(h2, "protocol_errors", &ok) : NULL;
            for (int e = 0; e < SK_H2_ERRORS && h2e; e++)
                jset(h2e, sk_h2_error_names[e], json_integer((json_int_t)t.h2_errors[e]), &ok);
        }
    }
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}
