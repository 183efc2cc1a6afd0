/*
 * random.c — a random endpoint drawn by weight (uniform when the weights
 * are equal); a retry draws among the endpoints it has not tried.
 */
#include "balancer.h"

static sk_endpoint *random_pick(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    size_t n = set->n;
    if (n == 0) return NULL;
    size_t i = n == 1 ? 0 : sk_balance_random(set, ctx);
    if (n > 1 && ctx->navoid && sk_balance_avoided(ctx, set->eps[i])) {
        size_t c = sk_balance_random_allowed(set, ctx);
        if (c != SIZE_MAX) i = c;
    }
    ctx->picked = i;
    return set->eps[i];
}

const sk_balancer sk_balancer_random = {.name = "random", .pick = random_pick};
