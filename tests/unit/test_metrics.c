/*
 * test_metrics.c — unit test of core/obs/metrics.c and metrics_rows.c:
 * counting, summing across workers, the Prometheus and JSON renderings,
 * cumulative histogram buckets and the omission of zero series, the row
 * registry (names kept across a reload, rows reused and zeroed); and the rendering of the metrics plugins
 * register through the host table (ext/plugin_host.c), counter_vec and
 * gauge_vec (ABI 1.2) with the labelled and plain ones, and the
 * registrations refused. The config is built by hand (only the fields the
 * renderers read), so the test does not depend on the INI loader.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "metrics.h"
#include "plugin_host.h"
#include "sk.h"

#include "check.h"

/* Here an assertion ends the whole test (used outside void functions). */
#undef ASSERT
#define ASSERT(cond)                                                                  \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: ASSERT failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

/* True when `text` holds `line` as a whole line. */
static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0')) return 1;
    return 0;
}

#define CHECK_LINE(text, line)                                                        \
    do {                                                                              \
        checks++;                                                                     \
        if (!has_line((text), (line))) {                                              \
            fprintf(stderr, "%s:%d: missing line: %s\n", __FILE__, __LINE__, (line)); \
            failures++;                                                               \
        }                                                                             \
    } while (0)

/* A listener "main" with two routes, "api" and "web \"x\"" (a name that
 * needs escaping in a Prometheus label), a tcp listener "raw", a cluster
 * "backend"; generation 7. */
static sk_listener lmain = {.name = "main"}, lraw = {.name = "raw", .protocol = SK_PROTO_TCP};
static sk_listener *listeners[] = {&lmain, &lraw};
static sk_route route_api = {.name = "api", .index = 0, .listener = &lmain};
static sk_route route_web = {.name = "web \"x\"", .index = 1, .listener = &lmain};
static sk_route *routes[] = {&route_api, &route_web};
static sk_cluster backend = {.name = "backend"};
static sk_cluster *clusters[] = {&backend};
static sk_config cfg = {.refcnt = 1,
                        .generation = 7,
                        .listeners = listeners,
                        .nlisteners = 2,
                        .routes = routes,
                        .nroutes = 2,
                        .clusters = clusters,
                        .nclusters = 1};

/* Renders into a NUL-terminated buffer (freed by the caller). */
static char *render(const sk_config *c, const sk_metrics_endpoint *eps, size_t neps, sk_metrics *const *m,
                    size_t n)
{
    sk_buf out = {0};
    ASSERT(sk_metrics_render_prometheus(&out, c, eps, neps, m, n) == 0);
    ASSERT(sk_buf_append(&out, "", 1) == 0 && out.data);
    return out.data;
}

/* Number of lines of text that start with `prefix`. */
static int count_lines(const char *text, const char *prefix)
{
    int k = 0;
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, n) == 0) k++;
    return k;
}

static json_t *find_obj(json_t *arr, const char *k1, const char *v1, const char *k2, const char *v2, int code)
{
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        if (strcmp(json_string_value(json_object_get(o, k1)), v1) != 0) continue;
        if (k2 && strcmp(json_string_value(json_object_get(o, k2)), v2) != 0) continue;
        if (code && json_integer_value(json_object_get(o, "code")) != code) continue;
        return o;
    }
    return NULL;
}

static void test_empty(void)
{
    sk_metrics *m = sk_metrics_new();
    ASSERT(m);
    sk_metrics *const ms[] = {m};
    char *t = render(&cfg, NULL, 0, ms, 1);
    CHECK(strstr(t, "sidekick_requests_total{") == NULL);
    CHECK_LINE(t, "# TYPE sidekick_requests_total counter");
    /* every route's histogram, zeros included; a listener's no-route one only once used */
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{listener=\"main\",route=\"api\",le=\"+Inf\"} 0");
    CHECK_LINE(t, "sidekick_request_duration_seconds_count{listener=\"main\",route=\"api\"} 0");
    CHECK_LINE(t, "sidekick_request_duration_seconds_sum{listener=\"main\",route=\"api\"} 0.000000");
    CHECK(strstr(t, "route=\"\"}") == NULL && strstr(t, "route=\"\",") == NULL);
    CHECK_LINE(t, "sidekick_upstream_request_duration_seconds_count{cluster=\"backend\"} 0");
    CHECK_LINE(t, "sidekick_upstream_connect_failures_total{cluster=\"backend\"} 0");
    CHECK_LINE(t, "sidekick_upstream_connections{cluster=\"backend\",state=\"idle\"} 0");
    CHECK_LINE(t, "sidekick_circuit_breaker_overflows_total{cluster=\"backend\",limit=\"max_pending\"} 0");
    CHECK_LINE(t, "sidekick_outlier_ejections_total{cluster=\"backend\"} 0");
    CHECK_LINE(t, "sidekick_workers 1");
    CHECK_LINE(t, "# TYPE process_cpu_seconds_total counter");
    CHECK_LINE(t, "# TYPE process_resident_memory_bytes gauge");
    CHECK_LINE(t, "# TYPE process_open_fds gauge");
    CHECK_LINE(t, "# TYPE process_start_time_seconds gauge");
    CHECK(strstr(t, "sidekick_lua_errors_total") == NULL); /* no route has a script */
    free(t);

    /* no workers at all (metrics not yet created), no config: renders zeros */
    t = render(NULL, NULL, 0, NULL, 0);
    CHECK_LINE(t, "sidekick_workers 0");
    CHECK_LINE(t, "sidekick_config_generation 0");
    free(t);
    sk_metrics_free(m);
    sk_metrics_free(NULL);
}

static void test_sums(void)
{
    sk_metrics *w0 = sk_metrics_new(), *w1 = sk_metrics_new();
    ASSERT(w0 && w1);
    size_t api = route_api.metrics_row, web = route_web.metrics_row, none = lmain.metrics_row;
    CHECK(api && web && none && api != web && web != none && api != none);

    /* worker 0: 3 × api 200, 1 × api 503, 1 unmatched 404 */
    sk_metrics_request(w0, api, 200, 100);     /* ≤ 0.0005 */
    sk_metrics_request(w0, api, 200, 500);     /* ≤ 0.0005 (bounds are inclusive) */
    sk_metrics_request(w0, api, 200, 501);     /* ≤ 0.001 */
    sk_metrics_request(w0, api, 503, 2000000); /* ≤ 2.5 */
    sk_metrics_request(w0, none, 404, 10);     /* ≤ 0.0005 */
    /* worker 1: 2 × api 200, 1 × web 201, one beyond the last bound */
    sk_metrics_request(w1, api, 200, 1000);     /* ≤ 0.001 */
    sk_metrics_request(w1, api, 200, 30000);    /* ≤ 0.05 */
    sk_metrics_request(w1, web, 201, 20000000); /* +Inf */
    /* a status outside 100..599 is observed but not tabled */
    sk_metrics_request(w1, web, 42, 1);

    w0->downstream_active = 2;
    w1->downstream_active = 3;
    w0->downstream_total = 10;
    w1->downstream_total = 5;
    w0->bytes_received = 1000;
    w1->bytes_received = 234;
    w0->bytes_sent = 50;
    w1->bytes_sent = 7;

    sk_metrics *const ms[] = {w0, w1};
    char *t = render(&cfg, NULL, 0, ms, 2);

    CHECK_LINE(t, "# HELP sidekick_requests_total Requests answered, by listener, route and status code "
                  "(route=\"\": no route matched).");
    CHECK_LINE(t, "sidekick_requests_total{listener=\"main\",route=\"api\",code=\"200\"} 5");
    CHECK_LINE(t, "sidekick_requests_total{listener=\"main\",route=\"api\",code=\"503\"} 1");
    CHECK_LINE(t, "sidekick_requests_total{listener=\"main\",route=\"web \\\"x\\\"\",code=\"201\"} 1");
    CHECK_LINE(t, "sidekick_requests_total{listener=\"main\",route=\"\",code=\"404\"} 1");
    /* zero series are omitted */
    CHECK(strstr(t, "code=\"500\"") == NULL);
    CHECK(strstr(t, "route=\"api\",code=\"404\"") == NULL);
    CHECK(strstr(t, "code=\"142\"") == NULL);
    CHECK(count_lines(t, "sidekick_requests_total{") == 4);

    const char *h = "sidekick_request_duration_seconds_bucket{listener=\"main\",route=\"api\",le=";
    char line[256];
    static const struct {
        const char *le;
        int n;
    } want[] = {{"0.0005", 2}, {"0.001", 4}, {"0.0025", 4}, {"0.05", 5},
                {"1", 5},      {"2.5", 6},   {"10", 6},     {"+Inf", 6}};
    for (size_t i = 0; i < SK_ARRAY_LEN(want); i++) {
        snprintf(line, sizeof(line), "%s\"%s\"} %d", h, want[i].le, want[i].n);
        CHECK_LINE(t, line);
    }
    CHECK_LINE(t, "sidekick_request_duration_seconds_count{listener=\"main\",route=\"api\"} 6");
    /* 100+500+501+2000000+1000+30000 = 2032101 us */
    CHECK_LINE(t, "sidekick_request_duration_seconds_sum{listener=\"main\",route=\"api\"} 2.032101");
    /* the status-42 request is in web's histogram but not its code table */
    CHECK_LINE(t, "sidekick_request_duration_seconds_count{listener=\"main\",route=\"web \\\"x\\\"\"} 2");
    CHECK_LINE(
        t, "sidekick_request_duration_seconds_bucket{listener=\"main\",route=\"web \\\"x\\\"\",le=\"10\"} 1");
    /* the no-route histogram of main, now that it has a request; raw has none */
    CHECK_LINE(t, "sidekick_request_duration_seconds_count{listener=\"main\",route=\"\"} 1");
    CHECK(strstr(t, "listener=\"raw\"") == NULL);
    CHECK(count_lines(t, "sidekick_request_duration_seconds_bucket{") == 3 * SK_HIST_BUCKETS);

    CHECK_LINE(t, "# TYPE sidekick_downstream_connections_active gauge");
    CHECK_LINE(t, "sidekick_downstream_connections_active 5");
    CHECK_LINE(t, "sidekick_downstream_connections_total 15");
    CHECK_LINE(t, "sidekick_downstream_bytes_received_total 1234");
    CHECK_LINE(t, "sidekick_downstream_bytes_sent_total 57");
    CHECK_LINE(t, "# TYPE sidekick_config_generation gauge");
    CHECK_LINE(t, "sidekick_config_generation 7");
    CHECK_LINE(t, "sidekick_workers 2");
    free(t);

    /* JSON: the same figures */
    json_t *j = sk_metrics_json(&cfg, NULL, 0, ms, 2);
    ASSERT(j);
    json_t *reqs = json_object_get(j, "requests");
    CHECK(json_is_array(reqs) && json_array_size(reqs) == 4);
    json_t *o = find_obj(reqs, "listener", "main", "route", "api", 200);
    CHECK(o && json_integer_value(json_object_get(o, "count")) == 5);
    o = find_obj(reqs, "listener", "main", "route", "", 404);
    CHECK(o && json_integer_value(json_object_get(o, "count")) == 1);
    o = find_obj(reqs, "listener", "main", "route", "web \"x\"", 201);
    CHECK(o && json_integer_value(json_object_get(o, "count")) == 1);
    CHECK(find_obj(reqs, "listener", "main", "route", "api", 404) == NULL);

    json_t *durs = json_object_get(j, "request_duration");
    CHECK(json_is_array(durs) && json_array_size(durs) == 3);
    json_t *d = find_obj(durs, "listener", "main", "route", "api", 0);
    ASSERT(d);
    CHECK(json_integer_value(json_object_get(d, "count")) == 6);
    double sum = json_real_value(json_object_get(d, "sum_seconds"));
    CHECK(sum > 2.032100 && sum < 2.032102);
    json_t *b = json_object_get(d, "buckets");
    CHECK(json_array_size(b) == SK_HIST_BUCKETS);
    CHECK(json_real_value(json_object_get(json_array_get(b, 0), "le")) == 0.0005);
    CHECK(json_integer_value(json_object_get(json_array_get(b, 0), "count")) == 2);
    CHECK(json_integer_value(json_object_get(json_array_get(b, 1), "count")) == 4);
    CHECK(json_real_value(json_object_get(json_array_get(b, 13), "le")) == 10.0);
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(b, 14), "le")), "+Inf") == 0);
    CHECK(json_integer_value(json_object_get(json_array_get(b, 14), "count")) == 6);
    for (size_t i = 1; i < json_array_size(b); i++) /* cumulative: never decreasing */
        CHECK(json_integer_value(json_object_get(json_array_get(b, i), "count")) >=
              json_integer_value(json_object_get(json_array_get(b, i - 1), "count")));

    CHECK(json_integer_value(json_object_get(j, "downstream_connections_active")) == 5);
    CHECK(json_integer_value(json_object_get(j, "downstream_connections_total")) == 15);
    CHECK(json_integer_value(json_object_get(j, "downstream_bytes_received_total")) == 1234);
    CHECK(json_integer_value(json_object_get(j, "downstream_bytes_sent_total")) == 57);
    CHECK(json_integer_value(json_object_get(j, "config_generation")) == 7);
    CHECK(json_integer_value(json_object_get(j, "workers")) == 2);
    json_t *proc = json_object_get(j, "process");
    CHECK(json_is_object(proc) && json_integer_value(json_object_get(proc, "resident_memory_bytes")) > 0);
    CHECK(json_integer_value(json_object_get(proc, "open_fds")) > 0);
    CHECK(json_real_value(json_object_get(proc, "start_time_seconds")) > 1e9);
    json_decref(j);

    /* a NULL worker slot is skipped */
    sk_metrics *const partial[] = {w0, NULL};
    t = render(&cfg, NULL, 0, partial, 2);
    CHECK_LINE(t, "sidekick_requests_total{listener=\"main\",route=\"api\",code=\"200\"} 3");
    free(t);

    sk_metrics_free(w0);
    sk_metrics_free(w1);
}

/* Cluster and endpoint rows: counters, gauges summed over workers, the
 * upstream codes and histogram, the endpoint gauges; JSON alike. */
static void test_upstream(void)
{
    sk_metrics *w0 = sk_metrics_new(), *w1 = sk_metrics_new();
    ASSERT(w0 && w1);
    size_t cl = backend.metrics_row;
    size_t e1 = sk_metrics_row_acquire('e', "backend", "127.0.0.1:8001");
    size_t e2 = sk_metrics_row_acquire('e', "backend", "127.0.0.1:8002");
    CHECK(cl && e1 && e2 && e1 != e2 && e1 != cl);
    sk_metrics_count(w0, cl, SK_MC_CONNECT_FAILURES);
    sk_metrics_count(w1, cl, SK_MC_CONNECT_FAILURES);
    sk_metrics_count(w0, cl, SK_MC_RETRIES);
    sk_metrics_count(w0, cl, SK_MC_TIMEOUTS);
    sk_metrics_count(w1, cl, SK_MC_RESETS);
    sk_metrics_count(w0, cl, SK_MC_CX_CREATED);
    sk_metrics_count(w1, cl, SK_MC_CX_CREATED);
    sk_metrics_count(w1, cl, SK_MC_CX_REUSED);
    sk_metrics_count(w1, cl, SK_MC_OVERFLOW_REQUESTS);
    sk_metrics_gauge(w0, cl, SK_MG_CX_ACTIVE, 1);
    sk_metrics_gauge(w1, cl, SK_MG_CX_ACTIVE, 1);
    sk_metrics_gauge(w1, cl, SK_MG_CX_ACTIVE, -1);
    sk_metrics_gauge(w1, cl, SK_MG_CX_IDLE, 1);
    sk_metrics_observe(sk_metrics_row(w0, cl), 3000); /* ≤ 0.005 */
    sk_metrics_code(sk_metrics_row(w0, e1), 200);
    sk_metrics_code(sk_metrics_row(w1, e1), 200);
    sk_metrics_code(sk_metrics_row(w1, e2), 503);
    sk_metrics_code(sk_metrics_row(w1, e2), 99); /* ignored */

    sk_metrics_endpoint eps[] = {
        {.cluster = "backend", .address = "127.0.0.1:8001", .row = e1, .healthy = true, .active = 3},
        {.cluster = "backend", .address = "127.0.0.1:8002", .row = e2, .healthy = false, .ejected = true},
    };
    sk_metrics *const ms[] = {w0, w1};
    char *t = render(&cfg, eps, 2, ms, 2);
    CHECK_LINE(
        t,
        "sidekick_upstream_requests_total{cluster=\"backend\",endpoint=\"127.0.0.1:8001\",code=\"200\"} 2");
    CHECK_LINE(
        t,
        "sidekick_upstream_requests_total{cluster=\"backend\",endpoint=\"127.0.0.1:8002\",code=\"503\"} 1");
    CHECK(count_lines(t, "sidekick_upstream_requests_total{") == 2);
    CHECK_LINE(t, "sidekick_upstream_request_duration_seconds_bucket{cluster=\"backend\",le=\"0.0025\"} 0");
    CHECK_LINE(t, "sidekick_upstream_request_duration_seconds_bucket{cluster=\"backend\",le=\"0.005\"} 1");
    CHECK_LINE(t, "sidekick_upstream_request_duration_seconds_sum{cluster=\"backend\"} 0.003000");
    CHECK_LINE(t, "sidekick_upstream_connect_failures_total{cluster=\"backend\"} 2");
    CHECK_LINE(t, "sidekick_upstream_retries_total{cluster=\"backend\"} 1");
    CHECK_LINE(t, "sidekick_upstream_timeouts_total{cluster=\"backend\"} 1");
    CHECK_LINE(t, "sidekick_upstream_resets_total{cluster=\"backend\"} 1");
    CHECK_LINE(t, "sidekick_upstream_connections{cluster=\"backend\",state=\"active\"} 1");
    CHECK_LINE(t, "sidekick_upstream_connections{cluster=\"backend\",state=\"idle\"} 1");
    CHECK_LINE(t, "sidekick_upstream_connections_created_total{cluster=\"backend\"} 2");
    CHECK_LINE(t, "sidekick_upstream_connections_reused_total{cluster=\"backend\"} 1");
    CHECK_LINE(t, "sidekick_circuit_breaker_overflows_total{cluster=\"backend\",limit=\"max_requests\"} 1");
    CHECK_LINE(t,
               "sidekick_circuit_breaker_overflows_total{cluster=\"backend\",limit=\"max_connections\"} 0");
    CHECK_LINE(t, "sidekick_endpoint_healthy{cluster=\"backend\",endpoint=\"127.0.0.1:8001\"} 1");
    CHECK_LINE(t, "sidekick_endpoint_healthy{cluster=\"backend\",endpoint=\"127.0.0.1:8002\"} 0");
    CHECK_LINE(t, "sidekick_endpoint_ejected{cluster=\"backend\",endpoint=\"127.0.0.1:8002\"} 1");
    CHECK_LINE(t, "sidekick_endpoint_active_requests{cluster=\"backend\",endpoint=\"127.0.0.1:8001\"} 3");
    free(t);

    json_t *j = sk_metrics_json(&cfg, eps, 2, ms, 2);
    ASSERT(j);
    json_t *o = find_obj(json_object_get(j, "upstream_requests"), "cluster", "backend", "endpoint",
                         "127.0.0.1:8001", 200);
    CHECK(o && json_integer_value(json_object_get(o, "count")) == 2);
    json_t *c = find_obj(json_object_get(j, "clusters"), "cluster", "backend", NULL, NULL, 0);
    ASSERT(c);
    CHECK(json_integer_value(json_object_get(c, "connect_failures_total")) == 2);
    CHECK(json_integer_value(json_object_get(json_object_get(c, "connections"), "active")) == 1);
    CHECK(json_integer_value(
              json_object_get(json_object_get(c, "circuit_breaker_overflows_total"), "max_requests")) == 1);
    json_t *d =
        find_obj(json_object_get(j, "upstream_request_duration"), "cluster", "backend", NULL, NULL, 0);
    CHECK(d && json_integer_value(json_object_get(d, "count")) == 1);
    json_t *e =
        find_obj(json_object_get(j, "endpoints"), "cluster", "backend", "endpoint", "127.0.0.1:8002", 0);
    CHECK(e && json_is_false(json_object_get(e, "healthy")) && json_is_true(json_object_get(e, "ejected")));
    json_decref(j);
    sk_metrics_row_release(e1);
    sk_metrics_row_release(e2);
    sk_metrics_free(w0);
    sk_metrics_free(w1);
}

/* The registry: a name keeps its row (counters go on across a reload
 * that keeps a route, and across one that removes it for a while);
 * listener, route and cluster rows are kept for good; an endpoint row is
 * given back with its last holder and reused, zeroed, by the next new
 * name; a new table gets every row in use; the sink. */
static void test_rows(void)
{
    sk_metrics *m = sk_metrics_new();
    ASSERT(m);
    size_t before = sk_metrics_rows_in_use();
    sk_metrics_request(m, route_api.metrics_row, 200, 1);

    /* a "reload": a new generation where api is the second route, plus a new one */
    static sk_listener lmain2 = {.name = "main"};
    static sk_listener *listeners2[] = {&lmain2};
    static sk_route api2 = {.name = "api", .index = 1, .listener = &lmain2},
                    fresh = {.name = "fresh", .index = 0, .listener = &lmain2};
    static sk_route *routes2[] = {&fresh, &api2};
    static sk_config cfg2 = {.refcnt = 1,
                             .generation = 8,
                             .listeners = listeners2,
                             .nlisteners = 1,
                             .routes = routes2,
                             .nroutes = 2};
    sk_metrics_assign_rows(&cfg2);
    CHECK(api2.metrics_row == route_api.metrics_row);
    CHECK(lmain2.metrics_row == lmain.metrics_row);
    CHECK(fresh.metrics_row != 0 && fresh.metrics_row != api2.metrics_row);
    CHECK(sk_metrics_rows_in_use() == before + 1);
    sk_metrics_request(m, api2.metrics_row, 200, 1);
    sk_metrics_request(m, fresh.metrics_row, 201, 1);
    sk_metrics *const ms[] = {m};
    char *t = render(&cfg2, NULL, 0, ms, 1);
    CHECK_LINE(t, "sidekick_requests_total{listener=\"main\",route=\"api\",code=\"200\"} 2");
    CHECK_LINE(t, "sidekick_requests_total{listener=\"main\",route=\"fresh\",code=\"201\"} 1");
    /* what cfg2 does not name is not shown: web, raw, backend */
    CHECK(strstr(t, "web") == NULL && strstr(t, "raw") == NULL && strstr(t, "backend") == NULL);
    free(t);
    /* back to cfg: fresh is not shown, web goes on; kept rows ignore releases */
    sk_metrics_row_release(fresh.metrics_row);
    sk_metrics_row_release(route_web.metrics_row);
    CHECK(sk_metrics_rows_in_use() == before + 1);
    t = render(&cfg, NULL, 0, ms, 1);
    CHECK(strstr(t, "fresh") == NULL);
    CHECK_LINE(t, "sidekick_requests_total{listener=\"main\",route=\"api\",code=\"200\"} 2");
    free(t);

    /* endpoint rows: one per (cluster, address), held by each acquire */
    size_t e = sk_metrics_row_acquire('e', "backend", "10.0.0.9:80");
    CHECK(e != 0 && sk_metrics_row_acquire('e', "backend", "10.0.0.9:80") == e);
    size_t other = sk_metrics_row_acquire('r', "backend", "10.0.0.9:80");
    CHECK(other && other != e); /* kinds do not mix */
    sk_metrics_code(sk_metrics_row(m, e), 200);
    sk_metrics_row_release(e);
    CHECK(sk_metrics_row(m, e)->codes[100] == 1); /* still held once */
    sk_metrics_row_release(e);
    size_t again = sk_metrics_row_acquire('e', "backend", "10.0.0.10:80");
    CHECK(again == e);                                /* reused ... */
    CHECK(sk_metrics_row(m, again)->codes[100] == 0); /* ... and zeroed */

    /* many rows: several chunks, and a table made later has them all */
    size_t many[100];
    for (size_t i = 0; i < SK_ARRAY_LEN(many); i++) {
        char a[32];
        snprintf(a, sizeof(a), "10.1.0.%zu:80", i);
        many[i] = sk_metrics_row_acquire('e', "big", a);
        CHECK(many[i] != 0);
        sk_metrics_count(m, many[i], SK_MC_RETRIES);
    }
    sk_metrics *late = sk_metrics_new();
    ASSERT(late);
    size_t in_use = sk_metrics_rows_in_use();
    for (size_t i = 0; i < SK_ARRAY_LEN(many); i++) {
        CHECK(sk_metrics_row(m, many[i]) && sk_metrics_row(m, many[i])->c[SK_MC_RETRIES] == 1);
        CHECK(sk_metrics_row(late, many[i]) && sk_metrics_row(late, many[i])->c[SK_MC_RETRIES] == 0);
        sk_metrics_row_release(many[i]);
    }
    CHECK(sk_metrics_rows_in_use() == in_use - SK_ARRAY_LEN(many));
    sk_metrics_row_release(again);
    /* out of range, the sink, a row never handed out: harmless */
    CHECK(sk_metrics_row(m, SK_MROW_MAX) == NULL);
    CHECK(sk_metrics_row(NULL, 1) == NULL);
    sk_metrics_row_release(0);
    sk_metrics_row_release(SK_MROW_MAX - 1);
    sk_metrics_free(late);
    sk_metrics_free(m);
}

/* The series lines of `name` in text, in order, joined by '\n'. */
static void series_of(const char *text, const char *name, char *out, size_t size)
{
    size_t n = strlen(name), k = 0;
    out[0] = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) != 0 || (p[n] != '{' && p[n] != ' ')) continue;
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (k + len + 2 > size) break;
        memcpy(out + k, p, len);
        k += len;
        out[k++] = '\n';
        out[k] = 0;
    }
}

/* counter_vec / gauge_vec of two instances: HELP and TYPE once per family,
 * one line per series with instance first and the labels in their order,
 * updates by series index; the same registration again gives the same
 * metric; bad ones are refused. */
static void test_plugin_vec(void)
{
    sk_instance *a = sk_instance_new("dns", 0, 1), *b = sk_instance_new("etcd", 1, 5);
    ASSERT(a && b);
    static const char *const labels[] = {"cluster", "result"};
    static const char *const values[] = {"api", "ok", "api", "error", "web", "ok"};
    sk_metric *ra =
        sk_host.counter_vec(a, "lookups_total", "Lookups by cluster\nand result.", labels, 2, values, 3);
    sk_metric *rb =
        sk_host.counter_vec(b, "lookups_total", "Lookups by cluster and result.", labels, 2, values, 2);
    static const char *const one[] = {"cluster"};
    static const char *const cluster_names[] = {"api", "web"};
    sk_metric *g = sk_host.gauge_vec(a, "endpoints", "Endpoints per cluster.", one, 1, cluster_names, 2);
    static const char *const codes[] = {"2xx", "5xx"};
    sk_metric *l = sk_host.counter_labelled(a, "answers_total", "Answers.", "class", codes, 2);
    sk_metric *plain = sk_host.counter(a, "reloads_total", "Reloads.");
    ASSERT(ra && rb && g && l && plain && ra != rb);
    CHECK(ra->nlabels == 2 && ra->nseries == 3 && rb->nseries == 2);
    CHECK(sk_host.counter_vec(a, "lookups_total", "", labels, 2, values, 3) == ra);
    sk_host.metric_add_at(ra, 0, 5);
    sk_host.metric_add_at(ra, 1, 2);
    sk_host.metric_add_at(ra, 1, -1); /* a counter never goes down */
    sk_host.metric_add_at(ra, 3, 1);  /* no such series */
    sk_host.metric_set_at(ra, 2, 9);  /* set is for gauges */
    sk_host.metric_add(ra, 4);        /* unlabelled update of a labelled metric */
    sk_host.metric_add_at(rb, 1, 7);
    sk_host.metric_set_at(g, 0, 3);
    sk_host.metric_add_at(g, 1, 2);
    sk_host.metric_add_at(g, 1, -1);
    sk_host.metric_add_at(l, 1, 1);
    sk_host.metric_add(plain, 1);

    /* refused, each with its reason in the log */
    static const char *const dup_labels[] = {"cluster", "cluster"};
    static const char *const bad_label[] = {"le"};
    static const char *const dup_series[] = {"api", "ok", "api", "ok"};
    static const char *const quote[] = {"a\"b"};
    const char *five[5] = {"a", "b", "c", "d", "e"};
    const char *many[SK_METRIC_MAX_SERIES + 1];
    char names[SK_METRIC_MAX_SERIES + 1][8];
    for (int i = 0; i <= SK_METRIC_MAX_SERIES; i++) {
        snprintf(names[i], sizeof names[i], "v%d", i);
        many[i] = names[i];
    }
    CHECK(sk_host.counter_vec(a, "x_total", "", NULL, 0, values, 1) == NULL);
    CHECK(sk_host.counter_vec(a, "x_total", "", five, 5, five, 1) == NULL);
    CHECK(sk_host.counter_vec(a, "x_total", "", dup_labels, 2, values, 1) == NULL);
    CHECK(sk_host.counter_vec(a, "x_total", "", bad_label, 1, values, 1) == NULL);
    CHECK(sk_host.counter_vec(a, "x_total", "", labels, 2, dup_series, 2) == NULL);
    CHECK(sk_host.counter_vec(a, "x_total", "", one, 1, quote, 1) == NULL);
    CHECK(sk_host.counter_vec(a, "x_total", "", one, 1, many, 0) == NULL);
    CHECK(sk_host.counter_vec(a, "x_total", "", one, 1, many, SK_METRIC_MAX_SERIES + 1) == NULL);
    CHECK(sk_host.counter_vec(a, "x_total", "", one, 1, many, SK_METRIC_MAX_SERIES) != NULL); /* the limit */
    CHECK(sk_host.gauge_vec(a, "lookups_total", "", labels, 2, values, 3) == NULL);   /* another type */
    CHECK(sk_host.counter_vec(a, "lookups_total", "", labels, 2, values, 2) == NULL); /* other series */
    CHECK(sk_host.counter_vec(a, "bad-name", "", one, 1, cluster_names, 1) == NULL);

    sk_instance *plugins[] = {a, b};
    sk_config pc = {.refcnt = 1, .plugins = plugins, .nplugins = 2};
    sk_buf out = {0};
    ASSERT(sk_plugins_render_prometheus(&out, &pc) == 0);
    ASSERT(sk_buf_append(&out, "", 1) == 0);
    const char *t = out.data;
    CHECK_LINE(t, "# HELP sidekick_plugin_lookups_total Lookups by cluster and result.");
    CHECK_LINE(t, "# TYPE sidekick_plugin_lookups_total counter");
    const char *first = strstr(t, "# TYPE sidekick_plugin_lookups_total");
    CHECK(first && !strstr(first + 1, "# TYPE sidekick_plugin_lookups_total")); /* one family for both */
    char got[2048];
    series_of(t, "sidekick_plugin_lookups_total", got, sizeof got);
    CHECK(strcmp(got,
                 "sidekick_plugin_lookups_total{instance=\"dns\",cluster=\"api\",result=\"ok\"} 5\n"
                 "sidekick_plugin_lookups_total{instance=\"dns\",cluster=\"api\",result=\"error\"} 2\n"
                 "sidekick_plugin_lookups_total{instance=\"dns\",cluster=\"web\",result=\"ok\"} 0\n"
                 "sidekick_plugin_lookups_total{instance=\"etcd\",cluster=\"api\",result=\"ok\"} 0\n"
                 "sidekick_plugin_lookups_total{instance=\"etcd\",cluster=\"api\",result=\"error\"} 7\n") ==
          0);
    if (failures) fprintf(stderr, "%s", got);
    CHECK_LINE(t, "# TYPE sidekick_plugin_endpoints gauge");
    series_of(t, "sidekick_plugin_endpoints", got, sizeof got);
    CHECK(strcmp(got, "sidekick_plugin_endpoints{instance=\"dns\",cluster=\"api\"} 3\n"
                      "sidekick_plugin_endpoints{instance=\"dns\",cluster=\"web\"} 1\n") == 0);
    CHECK_LINE(t, "sidekick_plugin_answers_total{instance=\"dns\",class=\"2xx\"} 0");
    CHECK_LINE(t, "sidekick_plugin_answers_total{instance=\"dns\",class=\"5xx\"} 1");
    CHECK_LINE(t, "sidekick_plugin_reloads_total{instance=\"dns\"} 1");
    CHECK_LINE(t, "sidekick_plugin_x_total{instance=\"dns\",cluster=\"v255\"} 0");
    CHECK(strstr(t, "bad-name") == NULL && strstr(t, "v256") == NULL);
    sk_buf_free(&out);
    sk_instance_free(a);
    sk_instance_free(b);
}

int main(void)
{
    sk_metrics_assign_rows(&cfg);
    test_empty();
    test_sums();
    test_upstream();
    test_rows();
    test_plugin_vec();
    printf("test_metrics: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
