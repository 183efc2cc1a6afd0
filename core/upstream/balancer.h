/*
 * balancer.h — the load-balancer interface: a policy picks one endpoint of
 * an endpoint set (upstream/cluster.h) for one attempt of a request.
 *
 * A balancer sees the immutable set a worker holds, so it runs without any
 * lock; what it keeps per worker (the round-robin cursor and smooth
 * weighted round-robin state, the random number source) comes in the
 * context. Today's policies: round_robin.c, least_request.c, random.c, all
 * weight-aware (the weights are the set's, so a set swapped while requests
 * are in flight never mixes with the next one's). They do not use health
 * yet; ring_hash and ewma come behind the same interface.
 */
#ifndef SK_BALANCER_H
#define SK_BALANCER_H

#include <stddef.h>
#include <stdint.h>

#include "cluster.h"
#include "wctx.h"

/* What a pick knows besides the set. The caller fills the request's part
 * (hash key, avoid); the pool layer fills the worker's part. */
typedef struct sk_balance_ctx {
    const void *hash_key;      /* bytes a hashing policy hashes (may be NULL when hash_key_len is 0) */
    size_t hash_key_len;       /* their number, 0 = no key */
    sk_endpoint *const *avoid; /* endpoints not to pick when another one exists (those this request
                                * tried already); only compared, never dereferenced */
    size_t navoid;             /* their number */
    sk_wctx *w;                /* the thread: sk_wctx_rand(w) is the random number source */
    uint32_t *cursor;          /* the thread's round-robin cursor of this cluster */
    int64_t *rr_current;       /* the thread's smooth weighted round-robin state of this set: one
                                * value per endpoint of the set, 0 when the thread adopted it; NULL =
                                * none (round_robin then walks the weights with the cursor) */
    size_t picked;             /* out: position in the set of the endpoint returned */
} sk_balance_ctx;

/* One policy. */
typedef struct sk_balancer {
    const char *name; /* its `lb` value */
    /* Picks an endpoint of `set` and stores its position in ctx->picked.
     * An endpoint of ctx->avoid is picked only when every endpoint is in it
     * (so a single endpoint is always returned). NULL when the set is empty. */
    sk_endpoint *(*pick)(const sk_endpoint_set *set, sk_balance_ctx *ctx);
} sk_balancer;

extern const sk_balancer sk_balancer_round_robin;   /* equal weights: the thread's cursor over the set;
                                                       else smooth weighted round robin (nginx) */
extern const sk_balancer sk_balancer_least_request; /* power of two choices drawn by weight, compared on
                                                       active requests / weight */
extern const sk_balancer sk_balancer_random;        /* weighted random */

/* The balancer of an `lb` value (enum sk_lb); round_robin for unknown ones. */
const sk_balancer *sk_balancer_get(int lb);

/* Whether e is one of ctx's endpoints to avoid. */
bool sk_balance_avoided(const sk_balance_ctx *ctx, const sk_endpoint *e);

/* A random position of set (not empty) drawn by weight: one random number
 * of ctx; a uniform set draws exactly as `rand % n`. For the policies. */
size_t sk_balance_random(const sk_endpoint_set *set, sk_balance_ctx *ctx);

/* A random position, drawn by weight, of an endpoint of set that ctx does
 * not avoid, or SIZE_MAX when every endpoint is avoided. Linear in the set
 * (the retry path). For the policies. */
size_t sk_balance_random_allowed(const sk_endpoint_set *set, sk_balance_ctx *ctx);

#endif
