/*
 * least_request.c — power of two choices: two endpoints drawn at random,
 * the one with fewer requests in flight (across all workers) wins; a retry
 * draws among the endpoints it has not tried.
 */
#include "balancer.h"

static unsigned active(const sk_endpoint *e)
{
    return __atomic_load_n(&e->active, __ATOMIC_RELAXED);
}

static sk_endpoint *lr_pick(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    size_t n = set->n;
    if (n == 0) return NULL;
    if (n == 1) {
        ctx->picked = 0;
        return set->eps[0];
    }
    size_t a = sk_wctx_rand(ctx->w) % n, b = sk_wctx_rand(ctx->w) % n;
    if (a == b) b = (a + 1) % n;
    if (ctx->navoid) {
        bool ta = sk_balance_avoided(ctx, set->eps[a]), tb = sk_balance_avoided(ctx, set->eps[b]);
        if (ta && tb) {
            size_t c = sk_balance_random_allowed(set, ctx);
            if (c != SIZE_MAX) a = b = c; /* else all were tried: compare the two drawn */
        } else if (ta) {
            a = b;
        } else if (tb) {
            b = a;
        }
    }
    ctx->picked = active(set->eps[a]) <= active(set->eps[b]) ? a : b;
    return set->eps[ctx->picked];
}

const sk_balancer sk_balancer_least_request = {.name = "least_request", .pick = lr_pick};
