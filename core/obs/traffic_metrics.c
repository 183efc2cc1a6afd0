/*
 * traffic_metrics.c — the process-wide counters of traffic management, by
 * cluster and route name, and their Prometheus rendering (see
 * traffic_metrics.h).
 */
#include <stdlib.h>
#include <string.h>

#include "traffic_metrics.h"

/* One registry of rows by name (main thread only). */
typedef struct registry {
    char **names;
    sk_traffic_counters **rows;
    size_t n, cap;
} registry;

static registry clusters, routes;

/* The row of `name` in g, made if new; NULL on OOM. */
static sk_traffic_counters *row_of(registry *g, const char *name)
{
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->names[i], name) == 0) return g->rows[i];
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 16;
        char **nn = realloc(g->names, cap * sizeof(*nn));
        if (!nn) return NULL;
        g->names = nn;
        sk_traffic_counters **nr = realloc(g->rows, cap * sizeof(*nr));
        if (!nr) return NULL;
        g->rows = nr;
        g->cap = cap;
    }
    char *nm = strdup(name);
    sk_traffic_counters *row = calloc(1, sizeof(*row));
    if (!nm || !row) {
        free(nm);
        free(row);
        return NULL;
    }
    g->names[g->n] = nm;
    g->rows[g->n++] = row;
    return row;
}

/* Points the clusters and routes of cfg at their rows. */
void sk_traffic_assign(sk_config *cfg)
{
    for (size_t i = 0; i < cfg->nclusters; i++)
        cfg->clusters[i]->counters = row_of(&clusters, cfg->clusters[i]->name);
    for (size_t i = 0; i < cfg->nroutes; i++)
        cfg->routes[i]->counters = row_of(&routes, cfg->routes[i]->name);
}

const char *sk_retry_cond_name(int cond)
{
    static const char *const names[SK_RETRY_CONDS] = {
        [SK_RETRY_CONNECT_FAILURE] = "connect-failure",
        [SK_RETRY_RESET] = "reset",
        [SK_RETRY_502] = "502",
        [SK_RETRY_503] = "503",
        [SK_RETRY_504] = "504",
        [SK_RETRY_409] = "409",
        [SK_RETRY_PER_TRY_TIMEOUT] = "per-try-timeout",
    };
    return cond > SK_RETRY_NONE && cond < SK_RETRY_CONDS ? names[cond] : NULL;
}

static uint64_t get(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

/* Appends the traffic families (see traffic_metrics.h). */
int sk_traffic_render_prometheus(sk_buf *out, const sk_config *cfg)
{
    static const char *const limits[SK_LIMITS] = {"max_connections", "max_pending", "max_requests",
                                                  "max_retries"};
    static const char *const results[SK_MIRROR_RESULTS] = {"sent", "dropped", "failed"};
    static const char *const kinds[SK_FAULT_KINDS] = {"delay", "abort"};
    int rc = 0;
    rc |= sk_buf_puts(out, "# HELP sidekick_upstream_retries_total Upstream attempts that were retries, by "
                           "cluster and what caused them.\n"
                           "# TYPE sidekick_upstream_retries_total counter\n");
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const sk_cluster *cl = cfg->clusters[i];
        if (!cl->counters) continue;
        for (int c = SK_RETRY_NONE + 1; c < SK_RETRY_CONDS; c++) {
            uint64_t v = get(&cl->counters->retries[c]);
            if (v)
                rc |=
                    sk_buf_printf(out, "sidekick_upstream_retries_total{cluster=\"%s\",reason=\"%s\"} %llu\n",
                                  cl->name, sk_retry_cond_name(c), (unsigned long long)v);
        }
    }
    rc |= sk_buf_puts(out, "# HELP sidekick_retry_budget_exhausted_total Retries not made because the "
                           "cluster's retry budget was spent.\n"
                           "# TYPE sidekick_retry_budget_exhausted_total counter\n");
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const sk_cluster *cl = cfg->clusters[i];
        if (cl->counters)
            rc |= sk_buf_printf(out, "sidekick_retry_budget_exhausted_total{cluster=\"%s\"} %llu\n", cl->name,
                                (unsigned long long)get(&cl->counters->budget_exhausted));
    }
    rc |= sk_buf_puts(out, "# HELP sidekick_circuit_breaker_overflows_total Requests (or retries, for "
                           "max_retries) refused by a circuit breaker of the cluster.\n"
                           "# TYPE sidekick_circuit_breaker_overflows_total counter\n");
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const sk_cluster *cl = cfg->clusters[i];
        for (int l = 0; cl->counters && l < SK_LIMITS; l++)
            rc |= sk_buf_printf(
                out, "sidekick_circuit_breaker_overflows_total{cluster=\"%s\",limit=\"%s\"} %llu\n", cl->name,
                limits[l], (unsigned long long)get(&cl->counters->overflows[l]));
    }
    rc |= sk_buf_puts(out, "# HELP sidekick_mirror_requests_total Copies of requests for a route's mirror "
                           "cluster, by result.\n"
                           "# TYPE sidekick_mirror_requests_total counter\n");
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const sk_route *rt = cfg->routes[i];
        for (int k = 0; rt->mirror && rt->counters && k < SK_MIRROR_RESULTS; k++)
            rc |= sk_buf_printf(out, "sidekick_mirror_requests_total{route=\"%s\",result=\"%s\"} %llu\n",
                                rt->name, results[k], (unsigned long long)get(&rt->counters->mirrors[k]));
    }
    rc |= sk_buf_puts(out, "# HELP sidekick_faults_injected_total Faults injected into a route's requests, "
                           "by kind.\n"
                           "# TYPE sidekick_faults_injected_total counter\n");
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const sk_route *rt = cfg->routes[i];
        bool faults = rt->fault_delay_ms || rt->fault_abort_status || rt->fault_headers;
        for (int k = 0; faults && rt->counters && k < SK_FAULT_KINDS; k++)
            rc |= sk_buf_printf(out, "sidekick_faults_injected_total{route=\"%s\",kind=\"%s\"} %llu\n",
                                rt->name, kinds[k], (unsigned long long)get(&rt->counters->faults[k]));
    }
    return rc ? -1 : 0;
}
