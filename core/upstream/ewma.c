/*
 * ewma.c — peak EWMA with power of two choices (Finagle's and Linkerd's
 * latency-aware balancer): each endpoint keeps an estimate of its
 * attempts' latency, shared by every worker (sk_endpoint.ewma_ns). A
 * sample above the estimate replaces it at once (the peak: one slow answer
 * is enough to move traffic away); a lower one is averaged in by how much
 * time passed since the last update, with the time constant `ewma_decay`
 * (default 10 s), so the weights are in time, not in numbers of requests.
 * Between samples the estimate decays towards 0 with the same constant,
 * which makes an endpoint that was slow get tried again after a while and
 * come back when it recovered. A failed attempt counts as a sample of at
 * least the cluster's connect_timeout (outlier.c), so an endpoint that
 * fails fast does not look fast.
 *
 * A pick draws two endpoints by weight (two distinct ones with equal
 * weights) and takes the one with the lower cost,
 * estimate × (1 + requests in flight × mean weight / its weight): with
 * equal weights Linkerd's estimate × (in flight + 1); with weights, idle
 * endpoints of equal latency tie (so the weighted draws give the shares)
 * and loads in proportion to the weights balance. An estimate below 1 µs
 * (none yet) counts as 1 µs, so endpoints without samples compare on their
 * load as least_request does. A new endpoint of a running cluster starts
 * with the median estimate of the others (cluster.c), a neutral score.
 */
#include <math.h>

#include "balancer.h"

#define DEFAULT_DECAY_NS 10000000000ull /* 10 s */
#define FLOOR_NS         1000.0         /* what an estimate below 1 µs counts as */

/* e's estimate decayed to now_ns (see balancer.h). */
uint64_t sk_ewma_estimate(const sk_endpoint *e, uint64_t now_ns, uint64_t decay_ns)
{
    uint64_t stamp = __atomic_load_n(&e->ewma_stamp_ns, __ATOMIC_RELAXED);
    uint64_t v = __atomic_load_n(&e->ewma_ns, __ATOMIC_RELAXED);
    if (!stamp || now_ns <= stamp) return stamp ? v : 0;
    double w = exp(-(double)(now_ns - stamp) / (double)(decay_ns ? decay_ns : DEFAULT_DECAY_NS));
    return (uint64_t)((double)v * w);
}

/* Adds a latency sample to e's estimate (see balancer.h). */
void sk_ewma_update(sk_endpoint *e, uint64_t sample_ns, uint64_t now_ns, uint64_t decay_ns)
{
    uint64_t stamp = __atomic_load_n(&e->ewma_stamp_ns, __ATOMIC_RELAXED);
    uint64_t v = __atomic_load_n(&e->ewma_ns, __ATOMIC_RELAXED);
    double w = 0.;
    if (stamp && now_ns > stamp)
        w = exp(-(double)(now_ns - stamp) / (double)(decay_ns ? decay_ns : DEFAULT_DECAY_NS));
    else if (stamp)
        w = 1.;
    double decayed = (double)v * w, next;
    if (!stamp || (double)sample_ns >= decayed)
        next = (double)sample_ns; /* the peak */
    else
        next = decayed + (double)sample_ns * (1. - w);
    __atomic_store_n(&e->ewma_ns, (uint64_t)next, __ATOMIC_RELAXED);
    __atomic_store_n(&e->ewma_stamp_ns, now_ns ? now_ns : 1, __ATOMIC_RELAXED);
}

/* What the balancer compares (see sk_ewma_cost). */
static double cost(const sk_endpoint_set *set, size_t i, uint64_t now_ns, uint64_t decay_ns)
{
    const sk_endpoint *e = set->eps[i];
    return sk_ewma_cost(sk_ewma_estimate(e, now_ns, decay_ns), __atomic_load_n(&e->active, __ATOMIC_RELAXED),
                        set->weights[i], (double)set->total_weight / (double)set->n);
}

/* estimate × (1 + active × mean weight / weight) (see balancer.h). */
double sk_ewma_cost(uint64_t estimate_ns, unsigned active, uint32_t weight, double mean_weight)
{
    double est = (double)estimate_ns;
    if (est < FLOOR_NS) est = FLOOR_NS;
    return est * (1. + (double)active * mean_weight / (double)weight);
}

static sk_endpoint *ewma_pick(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    size_t n = set->n;
    if (n == 0) return NULL;
    if (n == 1) {
        ctx->picked = 0;
        return set->eps[0];
    }
    size_t a, b;
    sk_balance_two(set, ctx, &a, &b);
    if (a != b) {
        uint64_t now = sk_now_ns();
        ctx->picked = cost(set, a, now, ctx->ewma_decay_ns) <= cost(set, b, now, ctx->ewma_decay_ns) ? a : b;
    } else {
        ctx->picked = a;
    }
    return set->eps[ctx->picked];
}

const sk_balancer sk_balancer_ewma = {.name = "ewma", .pick = ewma_pick};
