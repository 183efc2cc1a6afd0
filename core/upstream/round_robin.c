/*
 * round_robin.c — equal weights: each worker walks the set with its own
 * cursor (started at the worker's number, so workers do not move in step).
 * Unequal weights: smooth weighted round robin, nginx's algorithm
 * (ngx_http_upstream_get_peer): every pick adds each endpoint's weight to
 * its current value, takes the endpoint with the highest one and takes the
 * total weight off it. Over total_weight picks each endpoint comes out
 * exactly weight times, spread out (weights 5, 1, 1 give a a b a c a a).
 * The current values are the worker's, one per endpoint of the set it
 * holds (ctx->rr_current), started at 0 when it adopts a set. A retry skips
 * the endpoints it tried: they neither gain nor are picked, as in nginx.
 */
#include "balancer.h"

/* Equal weights: the cursor. */
static sk_endpoint *rr_plain(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    size_t n = set->n;
    size_t first = *ctx->cursor % n, i = first;
    (*ctx->cursor)++;
    for (size_t k = 1; k < n && ctx->navoid && sk_balance_avoided(ctx, set->eps[i]); k++)
        i = (*ctx->cursor)++ % n;
    if (sk_balance_avoided(ctx, set->eps[i])) i = first; /* every endpoint was tried */
    ctx->picked = i;
    return set->eps[i];
}

/* Smooth weighted round robin over the endpoints not avoided (over all of
 * them when every one is). */
static sk_endpoint *rr_smooth(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    bool skip = false; /* some endpoint is not avoided: skip the avoided ones */
    for (size_t i = 0; i < set->n && ctx->navoid && !skip; i++) skip = !sk_balance_avoided(ctx, set->eps[i]);
    int64_t *cur = ctx->rr_current, total = 0;
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < set->n; i++) {
        if (skip && sk_balance_avoided(ctx, set->eps[i])) continue;
        cur[i] += set->weights[i];
        total += set->weights[i];
        if (best == SIZE_MAX || cur[i] > cur[best]) best = i;
    }
    cur[best] -= total;
    ctx->picked = best;
    return set->eps[best];
}

/* Without per-thread state: the cursor walks the weights (an endpoint of
 * weight w comes out w times in a row), skipping avoided endpoints. */
static sk_endpoint *rr_walk(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    size_t first = SIZE_MAX;
    for (size_t k = 0; k < set->n; k++) {
        uint64_t x = (*ctx->cursor)++ % set->total_weight;
        size_t lo = 0, hi = set->n - 1;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (set->cum[mid] > x)
                hi = mid;
            else
                lo = mid + 1;
        }
        if (first == SIZE_MAX) first = lo;
        if (!ctx->navoid || !sk_balance_avoided(ctx, set->eps[lo])) {
            ctx->picked = lo;
            return set->eps[lo];
        }
    }
    size_t c = sk_balance_random_allowed(set, ctx);
    ctx->picked = c != SIZE_MAX ? c : first;
    return set->eps[ctx->picked];
}

static sk_endpoint *rr_pick(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    if (set->n == 0) return NULL;
    if (set->uniform) return rr_plain(set, ctx);
    return ctx->rr_current ? rr_smooth(set, ctx) : rr_walk(set, ctx);
}

const sk_balancer sk_balancer_round_robin = {.name = "round_robin", .pick = rr_pick};
