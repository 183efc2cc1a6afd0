/*
 * traffic_metrics.h — the counters of traffic management (docs/traffic.md):
 * retries by cause, retry budget exhaustion and circuit-breaker overflows
 * per cluster; mirrored copies and injected faults per route.
 *
 * The counters are process-wide and kept by name (a cluster's or route's
 * section name), so they go on across reloads: sk_traffic_assign() points
 * each cluster and route of a freshly loaded config at the row of its name
 * (main thread, before the config is published). Any worker then counts
 * with a relaxed atomic add (these events are rare next to requests), and
 * the admin thread renders them. Rows are never freed before exit.
 */
#ifndef SK_TRAFFIC_METRICS_H
#define SK_TRAFFIC_METRICS_H

#include "config.h"
#include "sk.h"

/* Circuit-breaker limits of a cluster, the `limit` label. */
enum sk_limit {
    SK_LIMIT_MAX_CONNECTIONS = 0,
    SK_LIMIT_MAX_PENDING,
    SK_LIMIT_MAX_REQUESTS,
    SK_LIMIT_MAX_RETRIES,
    SK_LIMITS
};

/* What became of a mirrored copy, the `result` label. */
enum sk_mirror_result {
    SK_MIRROR_SENT = 0, /* handed to a connection of the mirror cluster */
    SK_MIRROR_DROPPED,  /* not sent: the mirror cluster's breakers, a body over the replay bound, draining */
    SK_MIRROR_FAILED,   /* sent (or tried), but no complete answer: connect failure, reset, timeout */
    SK_MIRROR_RESULTS
};

/* Injected faults, the `kind` label. */
enum sk_fault_kind { SK_FAULT_DELAY = 0, SK_FAULT_ABORT, SK_FAULT_KINDS };

/* The counters of one cluster name or one route name (atomics). */
typedef struct sk_traffic_counters {
    uint64_t retries[SK_RETRY_CONDS];    /* cluster: retries by cause (enum sk_retry_cond; 0 unused) */
    uint64_t budget_exhausted;           /* cluster: retries the retry budget refused */
    uint64_t overflows[SK_LIMITS];       /* cluster: requests or retries refused by a breaker */
    uint64_t mirrors[SK_MIRROR_RESULTS]; /* route: mirrored copies by result */
    uint64_t faults[SK_FAULT_KINDS];     /* route: faults injected by kind */
} sk_traffic_counters;

/* Counts one event in counter `field` of obj->counters (an sk_cluster or
 * sk_route); nothing when the object has no row (a config that was never
 * assigned, as in unit tests). Any thread. */
#define SK_TRAFFIC_COUNT(obj, field)                                                           \
    do {                                                                                       \
        if ((obj)->counters) __atomic_add_fetch(&(obj)->counters->field, 1, __ATOMIC_RELAXED); \
    } while (0)

/* Points every cluster and route of cfg at the counters of its name, made
 * when new. Main thread, before cfg is published. A name whose row cannot
 * be made (OOM) stays uncounted. */
void sk_traffic_assign(sk_config *cfg);

/* Appends the traffic management families in Prometheus text format:
 * sidekick_upstream_retries_total{cluster,reason} (non-zero series),
 * sidekick_retry_budget_exhausted_total{cluster} and
 * sidekick_circuit_breaker_overflows_total{cluster,limit} (every cluster
 * of cfg), sidekick_mirror_requests_total{route,result} (routes with
 * `mirror`) and sidekick_faults_injected_total{route,kind} (routes with a
 * fault key). Main thread. 0, or -1 on OOM. */
int sk_traffic_render_prometheus(sk_buf *out, const sk_config *cfg);

/* Label text of a retry cause ("connect-failure", ..., "per-try-timeout"), NULL for SK_RETRY_NONE. */
const char *sk_retry_cond_name(int cond);

#endif
