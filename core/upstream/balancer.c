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
    case SK_LB_RING_HASH: return &sk_balancer_ring_hash;
    case SK_LB_EWMA: return &sk_balancer_ewma;
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

/* A point of [0, total) from one 32-bit random number (total < 2^32:
 * at most 65536 endpoints of weight 10000). */
static uint64_t scale(uint32_t r, uint64_t total)
{
    return ((uint64_t)r * total) >> 32;
}

/* Draws by weight: the first endpoint whose running sum passes the point
 * (binary search over set->cum). */
size_t sk_balance_random(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    uint32_t r = sk_wctx_rand(ctx->w);
    if (set->uniform) return r % set->n;
    uint64_t x = scale(r, set->total_weight);
    size_t lo = 0, hi = set->n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (set->cum[mid] > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* Draws by weight among the endpoints not avoided (one random number). */
size_t sk_balance_random_allowed(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    uint64_t total = 0;
    for (size_t i = 0; i < set->n; i++)
        if (!sk_balance_avoided(ctx, set->eps[i])) total += set->weights[i];
    if (total == 0) return SIZE_MAX;
    uint32_t r = sk_wctx_rand(ctx->w);
    uint64_t x = set->uniform ? (r % (total / set->weights[0])) * set->weights[0] : scale(r, total);
    for (size_t i = 0; i < set->n; i++) {
        if (sk_balance_avoided(ctx, set->eps[i])) continue;
        if (x < set->weights[i]) return i;
        x -= set->weights[i];
    }
    return SIZE_MAX; /* not reached */
}

/* The second candidate: another draw by weight, redrawn a few times while
 * it is the first (a heavy endpoint is drawn twice often); equal weights
 * take the next endpoint instead, as the classic P2C does. */
static size_t second(const sk_endpoint_set *set, sk_balance_ctx *ctx, size_t a)
{
    if (set->uniform) {
        size_t b = sk_wctx_rand(ctx->w) % set->n;
        return b == a ? (a + 1) % set->n : b;
    }
    size_t b = a;
    for (int k = 0; k < 3 && b == a; k++) b = sk_balance_random(set, ctx);
    return b;
}

/* The two candidates of a power-of-two-choices pick (see balancer.h). */
void sk_balance_two(const sk_endpoint_set *set, sk_balance_ctx *ctx, size_t *pa, size_t *pb)
{
    size_t a = sk_balance_random(set, ctx), b = second(set, ctx, a);
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
    *pa = a;
    *pb = b;
}
