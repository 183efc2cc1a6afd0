/*
 * balancer.h — the load-balancer interface: a policy picks one endpoint of
 * an endpoint set (upstream/cluster.h) for one attempt of a request.
 *
 * A balancer sees the immutable set a worker holds, so it runs without any
 * lock; what it keeps per worker (the round-robin cursor and smooth
 * weighted round-robin state, the random number source) comes in the
 * context. The policies: round_robin.c, least_request.c, random.c,
 * ring_hash.c, ewma.c, all weight-aware (the weights are the set's, so a
 * set swapped while requests are in flight never mixes with the next
 * one's). Health, ejection, panic and slow start are the pool layer's:
 * it hands the balancers a worker-local set of the endpoints that may get
 * traffic, with their effective weights (pool.c), except ring_hash, which
 * walks the whole set's ring and skips what ctx->usable says no to.
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
    const bool *usable;        /* ring_hash: usable[i] says whether set->eps[i] may be picked; NULL = all */
    uint64_t ewma_decay_ns;    /* ewma: time constant of the latency estimate's decay (0: 10 s) */
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
extern const sk_balancer sk_balancer_ring_hash;     /* consistent hashing of ctx->hash_key on the set's ring
                                                       (weighted points); no key: round_robin */
extern const sk_balancer sk_balancer_ewma;          /* power of two choices drawn by weight, compared on peak
                                                       EWMA latency × load (sk_ewma_cost) */

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
/* The two candidates of a power-of-two-choices pick (least_request, ewma)
 * of a set of at least two: drawn by weight, the second another endpoint
 * when it can be; an avoided candidate is replaced by the other, two
 * avoided ones by an allowed endpoint if there is one. */
void sk_balance_two(const sk_endpoint_set *set, sk_balance_ctx *ctx, size_t *pa, size_t *pb);

/* ---- ring_hash (ring_hash.c) ---- */

/* Points on the ring of an endpoint of weight w in a set of n endpoints
 * of total weight W: about SK_RING_POINTS × n × w / W, at least 1, and
 * the whole ring at most SK_RING_MAX points. */
#define SK_RING_POINTS 1024
#define SK_RING_MAX    65536

/* Builds the ring of set (set->n > 0; main thread, before the set is
 * published); NULL on OOM. Freed with sk__ring_free (NULL is ignored). */
struct sk_ring *sk__ring_build(const sk_endpoint_set *set);
void sk__ring_free(const struct sk_ring *ring);
/* The 64-bit hash both the ring's points and request keys use. */
uint64_t sk_ring_hash(const void *p, size_t n);
/* The position of the endpoint of set that owns key hash h, walking on
 * past endpoints usable[] refuses and those ctx avoids (while another one
 * exists), or SIZE_MAX when none may be picked. */
size_t sk_ring_lookup(const sk_endpoint_set *set, uint64_t h, const sk_balance_ctx *ctx);

/* ---- ewma (ewma.c) ---- */

/* e's latency estimate (ns) decayed to now_ns: with no new sample the
 * estimate falls towards 0 with the time constant decay_ns, so an endpoint
 * that was slow gets tried again. 0 without a sample. */
uint64_t sk_ewma_estimate(const sk_endpoint *e, uint64_t now_ns, uint64_t decay_ns);
/* Adds one latency sample (ns) to e's peak EWMA: a sample above the
 * estimate replaces it (the peak), a lower one is averaged in with weight
 * 1 - exp(-elapsed / decay). Any thread; two workers updating at once may
 * lose one sample (the estimate stays within the samples' range). */
void sk_ewma_update(sk_endpoint *e, uint64_t sample_ns, uint64_t now_ns, uint64_t decay_ns);
/* What the ewma balancer compares for an endpoint with this estimate,
 * requests in flight and weight in a set of this mean weight:
 * max(estimate, 1 µs) × (1 + active × mean_weight / weight). */
double sk_ewma_cost(uint64_t estimate_ns, unsigned active, uint32_t weight, double mean_weight);

#endif
