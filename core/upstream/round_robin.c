/*
 * round_robin.c — each worker walks the set with its own cursor (started
 * at the worker's number, so workers do not move in step); a retry skips
 * the endpoints it tried.
 */
#include "balancer.h"

static sk_endpoint *rr_pick(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    size_t n = set->n;
    if (n == 0) return NULL;
    size_t first = *ctx->cursor % n, i = first;
    (*ctx->cursor)++;
    for (size_t k = 1; k < n && ctx->navoid && sk_balance_avoided(ctx, set->eps[i]); k++)
        i = (*ctx->cursor)++ % n;
    if (sk_balance_avoided(ctx, set->eps[i])) i = first; /* every endpoint was tried */
    ctx->picked = i;
    return set->eps[i];
}

const sk_balancer sk_balancer_round_robin = {.name = "round_robin", .pick = rr_pick};
