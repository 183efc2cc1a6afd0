/*
 * least_request.c — power of two choices: two endpoints drawn at random by
 * weight, the one with fewer requests in flight (across all workers) per
 * unit of weight wins, the first drawn on a tie (so idle endpoints get
 * their weight's share); a retry draws among the endpoints it has not
 * tried. With equal weights this is the classic P2C over two distinct
 * endpoints.
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
    size_t a, b;
    sk_balance_two(set, ctx, &a, &b);
    /* active(a) / w(a) <= active(b) / w(b), without division */
    uint64_t la = (uint64_t)active(set->eps[a]) * set->weights[b];
    uint64_t lb = (uint64_t)active(set->eps[b]) * set->weights[a];
    ctx->picked = la <= lb ? a : b;
    return set->eps[ctx->picked];
}

const sk_balancer sk_balancer_least_request = {.name = "least_request", .pick = lr_pick};
