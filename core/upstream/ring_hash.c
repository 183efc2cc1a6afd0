/*
 * ring_hash.c — consistent hashing (Karger et al.; memcached's ketama):
 * every endpoint of a set puts points on a 32-bit ring, hashes of its
 * address and a counter, about SK_RING_POINTS × n × weight / total weight
 * of them; a request's key hashes to a point of the ring, and the first
 * endpoint point at or after it (wrapping) owns the key. The points of an
 * endpoint depend only on its address and its share, so removing one of N
 * endpoints moves only the keys it owned (about 1/N), and adding one takes
 * about 1/(N+1) of the keys from the others. An endpoint that may not be
 * picked (unhealthy, ejected: ctx->usable) or that this request tried
 * already (ctx->avoid) is skipped: the walk goes on to the next point of
 * another endpoint, which is exactly the owner the key would have if that
 * endpoint were not in the set, so its keys spread over the others and
 * come back to it when it recovers. No key: round robin.
 *
 * The ring is built once per endpoint set on the main thread (make_set in
 * cluster.c) and shared read-only by every worker.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balancer.h"

typedef struct ring_point {
    uint32_t hash;  /* position on the ring */
    uint32_t index; /* the endpoint's position in its set */
} ring_point;

struct sk_ring {
    size_t n;       /* number of points */
    ring_point p[]; /* sorted by hash, then index */
};

/* FNV-1a over the bytes, then MurmurHash3's 64-bit finaliser, which gives
 * FNV's weak low bits a full avalanche. */
uint64_t sk_ring_hash(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static int cmp_point(const void *a, const void *b)
{
    const ring_point *x = a, *y = b;
    if (x->hash != y->hash) return x->hash < y->hash ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* The number of points of endpoint i of set. */
static size_t points_of(const sk_endpoint_set *set, size_t i)
{
    uint64_t target = (uint64_t)SK_RING_POINTS * set->n;
    if (target > SK_RING_MAX) target = SK_RING_MAX;
    uint64_t k = (target * set->weights[i] + set->total_weight / 2) / set->total_weight;
    return k ? (size_t)k : 1;
}

/* Builds the ring of set (see balancer.h). */
struct sk_ring *sk__ring_build(const sk_endpoint_set *set)
{
    size_t total = 0;
    for (size_t i = 0; i < set->n; i++) total += points_of(set, i);
    struct sk_ring *r = malloc(sizeof(*r) + total * sizeof(r->p[0]));
    if (!r) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < set->n; i++) {
        const char *a = set->eps[i]->address.text;
        size_t alen = strlen(a), np = points_of(set, i);
        char buf[sizeof(set->eps[i]->address.text) + 24];
        memcpy(buf, a, alen);
        for (size_t j = 0; j < np; j++) {
            /* "ip:port#j": the j-th point of this address, whatever the set around it */
            int m = snprintf(buf + alen, sizeof(buf) - alen, "#%zu", j);
            r->p[k].hash = (uint32_t)(sk_ring_hash(buf, alen + (size_t)m) >> 32);
            r->p[k].index = (uint32_t)i;
            k++;
        }
    }
    r->n = k;
    qsort(r->p, r->n, sizeof(r->p[0]), cmp_point);
    return r;
}

/* Frees a ring (NULL is ignored). */
void sk__ring_free(const struct sk_ring *ring)
{
    free((void *)ring);
}

/* The owner of hash h, skipping what may not be picked (see balancer.h). */
size_t sk_ring_lookup(const sk_endpoint_set *set, uint64_t h, const sk_balance_ctx *ctx)
{
    const struct sk_ring *r = set->ring;
    if (!r || r->n == 0) return SIZE_MAX;
    uint32_t x = (uint32_t)(h >> 32);
    size_t lo = 0, hi = r->n; /* the first point with hash >= x, r->n when none (wrap to 0) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->p[mid].hash < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t fallback = SIZE_MAX; /* the first usable endpoint met that the request tried already */
    size_t last = SIZE_MAX;     /* the endpoint of the previous point: the same one is not looked at twice */
    for (size_t k = 0; k < r->n; k++) {
        size_t i = r->p[(lo + k) % r->n].index;
        if (i == last) continue;
        last = i;
        if (ctx->usable && !ctx->usable[i]) continue;
        if (!ctx->navoid || !sk_balance_avoided(ctx, set->eps[i])) return i;
        if (fallback == SIZE_MAX) fallback = i;
    }
    return fallback;
}

static sk_endpoint *ring_pick(const sk_endpoint_set *set, sk_balance_ctx *ctx)
{
    if (set->n == 0) return NULL;
    if (!ctx->hash_key_len || !set->ring) return sk_balancer_round_robin.pick(set, ctx);
    size_t i = sk_ring_lookup(set, sk_ring_hash(ctx->hash_key, ctx->hash_key_len), ctx);
    if (i == SIZE_MAX) return NULL;
    ctx->picked = i;
    return set->eps[i];
}

const sk_balancer sk_balancer_ring_hash = {.name = "ring_hash", .pick = ring_pick};
