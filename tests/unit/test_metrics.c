/*
 * test_metrics.c — unit test of core/obs/metrics.c: counting, summing across
 * workers, the Prometheus and JSON renderings, cumulative histogram buckets
 * and the omission of zero series; and the rendering of the metrics plugins
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

/* Two routes, "api" (index 0) and "web \"x\"" (index 1, a name that needs
 * escaping in a Prometheus label), generation 7. */
static sk_route route_api = {.name = "api", .index = 0};
static sk_route route_web = {.name = "web \"x\"", .index = 1};
static sk_route *routes[] = {&route_api, &route_web};
static sk_config cfg = {.refcnt = 1, .generation = 7, .routes = routes, .nroutes = 2};

static json_t *find_request(json_t *reqs, const char *route, int code)
{
    size_t i;
    json_t *o;
    json_array_foreach(reqs, i, o)
    {
        if (strcmp(json_string_value(json_object_get(o, "route")), route) == 0 &&
            json_integer_value(json_object_get(o, "code")) == code)
            return o;
    }
    return NULL;
}

static void test_empty(void)
{
    sk_metrics *m = sk_metrics_new();
    ASSERT(m);
    sk_metrics *const ms[] = {m};
    sk_buf out = {0};
    ASSERT(sk_metrics_render_prometheus(&out, &cfg, ms, 1) == 0);
    ASSERT(sk_buf_append(&out, "", 1) == 0 && out.data);
    CHECK(strstr(out.data, "sidekick_requests_total{") == NULL);
    CHECK_LINE(out.data, "# TYPE sidekick_requests_total counter");
    CHECK_LINE(out.data, "sidekick_request_duration_seconds_bucket{le=\"+Inf\"} 0");
    CHECK_LINE(out.data, "sidekick_request_duration_seconds_count 0");
    CHECK_LINE(out.data, "sidekick_request_duration_seconds_sum 0.000000");
    CHECK_LINE(out.data, "sidekick_workers 1");
    sk_buf_free(&out);

    /* no workers at all (metrics not yet created) renders zeros */
    ASSERT(sk_metrics_render_prometheus(&out, NULL, NULL, 0) == 0);
    ASSERT(sk_buf_append(&out, "", 1) == 0);
    CHECK_LINE(out.data, "sidekick_workers 0");
    CHECK_LINE(out.data, "sidekick_config_generation 0");
    sk_buf_free(&out);
    sk_metrics_free(m);
    sk_metrics_free(NULL);
}

static void test_sums(void)
{
    sk_metrics *w0 = sk_metrics_new(), *w1 = sk_metrics_new();
    ASSERT(w0 && w1);
    CHECK(w0->nroutes >= 3); /* row 0 (no route) + api + web */

    /* worker 0: 3 × api 200, 1 × api 503, 1 unmatched 404 */
    sk_metrics_request(w0, &route_api, 200, 100);     /* ≤ 0.0005 */
    sk_metrics_request(w0, &route_api, 200, 500);     /* ≤ 0.0005 (bounds are inclusive) */
    sk_metrics_request(w0, &route_api, 200, 501);     /* ≤ 0.001 */
    sk_metrics_request(w0, &route_api, 503, 2000000); /* ≤ 2.5 */
    sk_metrics_request(w0, NULL, 404, 10);            /* ≤ 0.0005 */
    /* worker 1: 2 × api 200, 1 × web 201, one beyond the last bound */
    sk_metrics_request(w1, &route_api, 200, 1000);     /* ≤ 0.001 */
    sk_metrics_request(w1, &route_api, 200, 30000);    /* ≤ 0.05 */
    sk_metrics_request(w1, &route_web, 201, 20000000); /* +Inf */
    /* a status outside 100..599 is observed but not tabled */
    sk_metrics_request(w1, &route_web, 42, 1);

    w0->downstream_active = 2;
    w1->downstream_active = 3;
    w0->downstream_total = 10;
    w1->downstream_total = 5;
    w0->upstream_active = 1;
    w0->upstream_opened = 4;
    w1->upstream_opened = 1;
    w1->upstream_reused = 6;
    w0->upstream_connect_failures = 2;
    w0->bytes_received = 1000;
    w1->bytes_received = 234;
    w0->bytes_sent = 50;
    w1->bytes_sent = 7;

    sk_metrics *const ms[] = {w0, w1};
    sk_buf out = {0};
    ASSERT(sk_metrics_render_prometheus(&out, &cfg, ms, 2) == 0);
    ASSERT(sk_buf_append(&out, "", 1) == 0);
    const char *t = out.data;

    CHECK_LINE(t, "# HELP sidekick_requests_total Requests answered, by route and status code "
                  "(route=\"\": no route matched).");
    CHECK_LINE(t, "sidekick_requests_total{route=\"api\",code=\"200\"} 5");
    CHECK_LINE(t, "sidekick_requests_total{route=\"api\",code=\"503\"} 1");
    CHECK_LINE(t, "sidekick_requests_total{route=\"web \\\"x\\\"\",code=\"201\"} 1");
    CHECK_LINE(t, "sidekick_requests_total{route=\"\",code=\"404\"} 1");
    /* zero series are omitted */
    CHECK(strstr(t, "code=\"500\"") == NULL);
    CHECK(strstr(t, "route=\"api\",code=\"404\"") == NULL);
    CHECK(strstr(t, "route=\"web \\\"x\\\"\",code=\"200\"") == NULL);
    CHECK(strstr(t, "code=\"142\"") == NULL);
    int series = 0;
    for (const char *p = t; (p = strstr(p, "sidekick_requests_total{")) != NULL; p++) series++;
    CHECK(series == 4);

    CHECK_LINE(t, "# TYPE sidekick_request_duration_seconds histogram");
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{le=\"0.0005\"} 4");
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{le=\"0.001\"} 6");
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{le=\"0.0025\"} 6");
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{le=\"0.05\"} 7");
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{le=\"1\"} 7");
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{le=\"2.5\"} 8");
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{le=\"10\"} 8");
    CHECK_LINE(t, "sidekick_request_duration_seconds_bucket{le=\"+Inf\"} 9");
    /* the status-42 request is in the histogram (bucket 0.0005) but not the table */
    CHECK_LINE(t, "sidekick_request_duration_seconds_count 9");
    /* 100+500+501+2000000+10+1000+30000+20000000+1 = 22032112 us */
    CHECK_LINE(t, "sidekick_request_duration_seconds_sum 22.032112");

    CHECK_LINE(t, "# TYPE sidekick_downstream_connections_active gauge");
    CHECK_LINE(t, "sidekick_downstream_connections_active 5");
    CHECK_LINE(t, "sidekick_downstream_connections_total 15");
    CHECK_LINE(t, "sidekick_upstream_connections_active 1");
    CHECK_LINE(t, "sidekick_upstream_connections_opened_total 5");
    CHECK_LINE(t, "sidekick_upstream_requests_reused_total 6");
    CHECK_LINE(t, "sidekick_upstream_connect_failures_total 2");
    CHECK_LINE(t, "sidekick_downstream_bytes_received_total 1234");
    CHECK_LINE(t, "sidekick_downstream_bytes_sent_total 57");
    CHECK_LINE(t, "# TYPE sidekick_config_generation gauge");
    CHECK_LINE(t, "sidekick_config_generation 7");
    CHECK_LINE(t, "sidekick_workers 2");
    sk_buf_free(&out);

    /* JSON: the same figures */
    ASSERT(sk_metrics_render_json(&out, &cfg, ms, 2) == 0);
    json_error_t jerr;
    json_t *j = json_loadb(out.data + out.off, sk_buf_pending(&out), 0, &jerr);
    if (!j) fprintf(stderr, "JSON: %s\n", jerr.text);
    ASSERT(j);
    json_t *reqs = json_object_get(j, "requests");
    CHECK(json_is_array(reqs) && json_array_size(reqs) == 4);
    json_t *o = find_request(reqs, "api", 200);
    CHECK(o && json_integer_value(json_object_get(o, "count")) == 5);
    o = find_request(reqs, "", 404);
    CHECK(o && json_integer_value(json_object_get(o, "count")) == 1);
    o = find_request(reqs, "web \"x\"", 201);
    CHECK(o && json_integer_value(json_object_get(o, "count")) == 1);
    CHECK(find_request(reqs, "api", 404) == NULL);

    json_t *d = json_object_get(j, "request_duration");
    CHECK(json_integer_value(json_object_get(d, "count")) == 9);
    double sum = json_real_value(json_object_get(d, "sum_seconds"));
    CHECK(sum > 22.032111 && sum < 22.032113);
    json_t *b = json_object_get(d, "buckets");
    CHECK(json_array_size(b) == SK_HIST_BUCKETS);
    CHECK(json_real_value(json_object_get(json_array_get(b, 0), "le")) == 0.0005);
    CHECK(json_integer_value(json_object_get(json_array_get(b, 0), "count")) == 4);
    CHECK(json_integer_value(json_object_get(json_array_get(b, 1), "count")) == 6);
    CHECK(json_real_value(json_object_get(json_array_get(b, 13), "le")) == 10.0);
    CHECK(json_integer_value(json_object_get(json_array_get(b, 13), "count")) == 8);
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(b, 14), "le")), "+Inf") == 0);
    CHECK(json_integer_value(json_object_get(json_array_get(b, 14), "count")) == 9);
    /* cumulative: never decreasing */
    for (size_t i = 1; i < json_array_size(b); i++)
        CHECK(json_integer_value(json_object_get(json_array_get(b, i), "count")) >=
              json_integer_value(json_object_get(json_array_get(b, i - 1), "count")));

    CHECK(json_integer_value(json_object_get(j, "downstream_connections_active")) == 5);
    CHECK(json_integer_value(json_object_get(j, "downstream_connections_total")) == 15);
    CHECK(json_integer_value(json_object_get(j, "upstream_connections_active")) == 1);
    CHECK(json_integer_value(json_object_get(j, "upstream_connections_opened_total")) == 5);
    CHECK(json_integer_value(json_object_get(j, "upstream_requests_reused_total")) == 6);
    CHECK(json_integer_value(json_object_get(j, "upstream_connect_failures_total")) == 2);
    CHECK(json_integer_value(json_object_get(j, "downstream_bytes_received_total")) == 1234);
    CHECK(json_integer_value(json_object_get(j, "downstream_bytes_sent_total")) == 57);
    CHECK(json_integer_value(json_object_get(j, "config_generation")) == 7);
    CHECK(json_integer_value(json_object_get(j, "workers")) == 2);
    json_decref(j);
    sk_buf_free(&out);

    /* a NULL worker slot is skipped */
    sk_metrics *const partial[] = {w0, NULL};
    ASSERT(sk_metrics_render_prometheus(&out, &cfg, partial, 2) == 0);
    ASSERT(sk_buf_append(&out, "", 1) == 0);
    CHECK_LINE(out.data, "sidekick_requests_total{route=\"api\",code=\"200\"} 3");
    sk_buf_free(&out);

    sk_metrics_free(w0);
    sk_metrics_free(w1);
}

/* A route whose row is beyond a table counts as "no route"; a table grows
 * when more names are known; counters stay with the name across reloads. */
static void test_rows(void)
{
    static sk_route other = {.name = "other", .metrics_row = 100000};
    sk_metrics *m = sk_metrics_new();
    ASSERT(m);
    sk_metrics_request(m, &other, 200, 1);
    sk_metrics_request(m, &route_api, 200, 1);
    /* a "reload": a new generation where api is the second route */
    static sk_route api2 = {.name = "api", .index = 1}, fresh = {.name = "fresh", .index = 0};
    static sk_route *routes2[] = {&fresh, &api2};
    static sk_config cfg2 = {.refcnt = 1, .generation = 8, .routes = routes2, .nroutes = 2};
    sk_metrics_assign_rows(&cfg2);
    CHECK(api2.metrics_row == route_api.metrics_row);
    CHECK(fresh.metrics_row == 3);
    ASSERT(sk_metrics_reserve(m, 1000) == 0);
    CHECK(m->nroutes >= 1000);
    sk_metrics_request(m, &api2, 200, 1);
    sk_metrics_request(m, &fresh, 201, 1);
    sk_metrics *const ms[] = {m};
    sk_buf out = {0};
    ASSERT(sk_metrics_render_prometheus(&out, &cfg2, ms, 1) == 0);
    ASSERT(sk_buf_append(&out, "", 1) == 0);
    CHECK_LINE(out.data, "sidekick_requests_total{route=\"\",code=\"200\"} 1");
    CHECK_LINE(out.data, "sidekick_requests_total{route=\"api\",code=\"200\"} 2");
    CHECK_LINE(out.data, "sidekick_requests_total{route=\"fresh\",code=\"201\"} 1");
    sk_buf_free(&out);
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
    static const char *const clusters[] = {"api", "web"};
    sk_metric *g = sk_host.gauge_vec(a, "endpoints", "Endpoints per cluster.", one, 1, clusters, 2);
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
    CHECK(sk_host.counter_vec(a, "bad-name", "", one, 1, clusters, 1) == NULL);

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
    test_rows();
    test_plugin_vec();
    printf("test_metrics: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
