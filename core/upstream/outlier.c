/*
 * outlier.c — what the request layer reports of each attempt, and what
 * follows from it: the ewma balancer's latency samples and passive outlier
 * detection (Envoy's consecutive gateway failures, enforced by default).
 *
 * Every worker counts an endpoint's consecutive failures on the shared
 * endpoint object (an atomic), so N failures eject it whichever workers
 * saw them. The failure that reaches outlier_failures decides the
 * ejection under the cluster's eject_lock: at most max_ejection_percent of
 * the set in force may be ejected at once, but one endpoint always may be
 * (envoy#3263: with a percentage of a small cluster rounding to zero
 * nothing would ever be ejected). An ejection lasts outlier_ejection ×
 * the endpoint's level (1 for its first, +1 for each one that follows
 * within SK_EJECTION_MAX_MS of the previous one's end), at most
 * SK_EJECTION_MAX_MS; the endpoint returns when the time is up (workers
 * look at the clock, nobody has to clear anything) or when an active check
 * passes (health.c). A response resets the count.
 *
 * Also here: the panic state of a cluster, the slow-start ramp, and what
 * /clusters shows of an endpoint.
 */
#include <math.h>
#include <stdio.h>

#include "balancer.h"
#include "cluster.h"

/* Counts one of cl's stats (NULL stats on OOM: not counted). */
#define STAT_INC(st, f)                                                            \
    do {                                                                           \
        if ((st)->stats) __atomic_add_fetch(&(st)->stats->f, 1, __ATOMIC_RELAXED); \
    } while (0)

/* Marks a change of health or ejection (see cluster.h). */
void sk__cluster_health_changed(sk_cluster *cl)
{
    sk_cluster_state *st = cl->upstream;
    if (st) __atomic_add_fetch(&st->health_gen, 1, __ATOMIC_RELEASE);
}

/* Ejects e when the cluster's limit allows it. Under eject_lock: one
 * decision at a time, so the percentage holds across workers. */
static bool try_eject(sk_cluster *cl, sk_endpoint *e, unsigned failures)
{
    sk_cluster_state *st = cl->upstream;
    pthread_mutex_lock(&st->eject_lock);
    uint64_t now = sk_now_ms();
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    bool member = false;
    size_t ejected = 0;
    for (size_t i = 0; set && i < set->n; i++) {
        if (set->eps[i] == e) member = true;
        if (sk_endpoint_ejected(set->eps[i], now)) ejected++;
    }
    size_t n = set ? set->n : 0, limit = n * cl->max_ejection_percent / 100;
    if (limit < 1) limit = 1; /* one endpoint always may be */
    if (!member || sk_endpoint_ejected(e, now) || ejected >= limit) {
        pthread_mutex_unlock(&st->eject_lock);
        if (member && ejected >= limit && !sk_endpoint_ejected(e, now))
            sk_debug("cluster %s: %s failed %u times in a row but stays: %zu of %zu endpoints are ejected "
                     "(max_ejection_percent = %u)",
                     cl->name, e->address.text, failures, ejected, n, cl->max_ejection_percent);
        sk_endpoint_set_unref(set);
        return false;
    }
    /* the level: back to the first after a long good spell */
    uint64_t last_end = __atomic_load_n(&e->ejected_until_ms, __ATOMIC_RELAXED);
    if (last_end && now > last_end + SK_EJECTION_MAX_MS) e->eject_level = 0;
    uint64_t base = cl->outlier_ejection_ms ? cl->outlier_ejection_ms : 1;
    if ((uint64_t)e->eject_level * base < SK_EJECTION_MAX_MS) e->eject_level++;
    uint64_t len = base * e->eject_level;
    if (len > SK_EJECTION_MAX_MS) len = SK_EJECTION_MAX_MS;
    unsigned count = __atomic_add_fetch(&e->ejections, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&e->ejection_ms, len, __ATOMIC_RELAXED);
    __atomic_store_n(&e->failures, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&e->ejected_until_ms, now + len, __ATOMIC_RELEASE);
    STAT_INC(st, ejections);
    sk__cluster_health_changed(cl);
    pthread_mutex_unlock(&st->eject_lock);
    sk_warn("cluster %s: endpoint %s ejected for %llums after %u consecutive failures (ejection %u; %zu of "
            "%zu ejected now)",
            cl->name, e->address.text, (unsigned long long)len, failures, count, ejected + 1, n);
    sk_endpoint_set_unref(set);
    return true;
}

/* An attempt to e is over (see cluster.h). */
bool sk_cluster_report(sk_cluster *cl, sk_endpoint *e, bool failed, uint64_t latency_ns)
{
    if (!cl->upstream || !e) return false;
    if (cl->lb == SK_LB_EWMA) {
        uint64_t sample = latency_ns, floor_ns = cl->connect_timeout_ms * 1000000;
        if (failed && sample < floor_ns) sample = floor_ns;
        sk_ewma_update(e, sample, sk_now_ns(), cl->ewma_decay_ms * 1000000);
    }
    if (!cl->outlier_failures) return false;
    if (!failed) {
        /* a load first: the common case writes nothing to the shared line */
        if (__atomic_load_n(&e->failures, __ATOMIC_RELAXED))
            __atomic_store_n(&e->failures, 0, __ATOMIC_RELAXED);
        return false;
    }
    /* failures of requests still on an ejected endpoint change nothing: it
     * starts from 0 when it returns */
    if (sk_endpoint_ejected(e, sk_now_ms())) return false;
    unsigned n = __atomic_add_fetch(&e->failures, 1, __ATOMIC_RELAXED);
    return n >= cl->outlier_failures && try_eject(cl, e, n);
}

/* Ends an ejection (see cluster.h). */
void sk__endpoint_uneject(sk_cluster *cl, sk_endpoint *e)
{
    sk_cluster_state *st = cl->upstream;
    if (!st || !sk_endpoint_ejected(e, sk_now_ms())) return;
    pthread_mutex_lock(&st->eject_lock);
    /* ended now: the level's "long good spell" counts from here */
    __atomic_store_n(&e->ejected_until_ms, sk_now_ms(), __ATOMIC_RELEASE);
    __atomic_store_n(&e->failures, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&st->eject_lock);
    sk__cluster_health_changed(cl);
    sk_info("cluster %s: endpoint %s passed its health check: its ejection ends", cl->name, e->address.text);
}

/* Whether cl is in panic, recording a change (see cluster.h). */
bool sk_cluster_check_panic(sk_cluster *cl, const sk_endpoint_set *set, uint64_t now_ms, size_t *usable)
{
    size_t k = 0;
    for (size_t i = 0; i < set->n; i++)
        if (sk_endpoint_usable(set->eps[i], now_ms)) k++;
    *usable = k;
    sk_cluster_state *st = cl->upstream;
    /* fewer than the threshold: usable / n < threshold / 100 */
    bool panic = cl->panic_threshold && set->n && (uint64_t)k * 100 < (uint64_t)cl->panic_threshold * set->n;
    int was = panic ? 0 : 1;
    if (st && __atomic_compare_exchange_n(&st->panic, &was, panic ? 1 : 0, false, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED)) {
        if (panic) {
            STAT_INC(st, panics);
            sk_warn(
                "cluster %s: panic: %zu of %zu endpoints healthy, below panic_threshold = %u%%; balancing "
                "over all of them",
                cl->name, k, set->n, cl->panic_threshold);
        } else {
            sk_info("cluster %s: out of panic: %zu of %zu endpoints healthy", cl->name, k, set->n);
        }
    }
    return panic;
}

/* The slow-start factor (see cluster.h). */
double sk_endpoint_ramp(const sk_cluster *cl, const sk_endpoint *e, uint64_t now_ms)
{
    if (!cl->slow_start_ms || !e->added_ms || now_ms >= e->added_ms + cl->slow_start_ms) return 1.;
    double f = (double)(now_ms - e->added_ms) / (double)cl->slow_start_ms;
    return SK_SLOW_START_MIN + (1. - SK_SLOW_START_MIN) * f;
}

/* What /clusters shows of one endpoint (see cluster.h). */
void sk_endpoint_status_of(const sk_cluster *cl, const sk_endpoint_set *set, size_t i, uint64_t now_ms,
                           sk_endpoint_status *out)
{
    const sk_endpoint *e = set->eps[i];
    int h = __atomic_load_n(&e->health, __ATOMIC_RELAXED);
    out->health = h == SK_HEALTH_HEALTHY ? "healthy" : h == SK_HEALTH_UNHEALTHY ? "unhealthy" : "unknown";
    out->ejected = sk_endpoint_ejected(e, now_ms);
    out->usable = h != SK_HEALTH_UNHEALTHY && !out->ejected;
    out->ejected_until_ms = out->ejected ? __atomic_load_n(&e->ejected_until_ms, __ATOMIC_RELAXED) : 0;
    out->ejection_ms = __atomic_load_n(&e->ejection_ms, __ATOMIC_RELAXED);
    out->ejections = __atomic_load_n(&e->ejections, __ATOMIC_RELAXED);
    out->failures = __atomic_load_n(&e->failures, __ATOMIC_RELAXED);
    out->hc_passes = __atomic_load_n(&e->hc_passes, __ATOMIC_RELAXED);
    out->hc_failures = __atomic_load_n(&e->hc_failures, __ATOMIC_RELAXED);
    out->active = __atomic_load_n(&e->active, __ATOMIC_RELAXED);
    out->weight = set->weights[i];
    out->effective_weight = set->weights[i] * sk_endpoint_ramp(cl, e, now_ms);
    uint64_t now_ns = sk_now_ns(), decay = cl->ewma_decay_ms * 1000000;
    bool sampled = __atomic_load_n(&e->ewma_stamp_ns, __ATOMIC_RELAXED) != 0;
    double est = (double)sk_ewma_estimate(e, now_ns, decay);
    out->ewma_ms = sampled ? est / 1e6 : -1.;
    out->ewma_score = sk_ewma_cost((uint64_t)est, out->active, set->weights[i],
                                   (double)set->total_weight / (double)set->n) /
                      1e6;
}
