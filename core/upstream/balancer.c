/*
 * balancer.c — the table of load-balancing policies and the helpers they
 * share (the avoid set of a retry).
 */
#include "balancer.h"

/* Maps an `lb` value to its policy. */
const sk_balancer *sk_balancer_get(int lb)
{
    switch (lb) {
    case SK_LB_LEAST_REQUEST: return &sk_balancer_least_request;
    case SK_LB_RANDOM: return &sk_balancer_random;
    default: return &sk_balancer_round_robin;
    }
}

/* Linear: the avoid set holds the few endpoints one request tried. */
bool sk_balance_avoided(const sk_balance_ctx *ctx, const sk_endpoint *e)
{
    for (size_t i = 0; i < ctx->navoid; i++)
        if (ctx->avoid[i] == e) return true;
    return false;
}

/* Draws among the endpoints not avoided (one random number). */
size_t sk_balance_random_allowed(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    size_t k = 0;
    for (size_t i = 0; i < set->n; i++) k += !sk_balance_avoided(ctx, set->eps[i]);
    if (k == 0) return SIZE_MAX;
    size_t r = sk_wctx_rand(ctx->w) % k;
    for (size_t i = 0; i < set->n; i++)
        if (!sk_balance_avoided(ctx, set->eps[i]) && r-- == 0) return i;
    return SIZE_MAX; /* not reached */
}
