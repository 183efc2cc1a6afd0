/*
 * test_balancer.c — unit tests of the balancers (upstream/balancer.h):
 * for round_robin, least_request and random, the distribution over N
 * endpoints with a fixed random seed, the avoid set honoured while another
 * endpoint exists, a single endpoint returned even when avoided, an empty
 * set giving NULL; the share each endpoint gets of many picks against its
 * weight (smooth weighted round robin exactly, the random draws within a
 * bound, deterministic seeds), weights under retries and across a set
 * swapped while a worker still holds the old one; and the `lb` → policy
 * table. ring_hash: shares of keys by weight, affinity, stability when one
 * of four endpoints leaves or a fifth comes (only the keys of that endpoint
 * move), unusable and avoided endpoints skipped to the next on the ring.
 * ewma: the peak, the time-weighted average and the decay of the estimate,
 * a slow endpoint avoided, load counted, weights, the neutral start of a
 * new endpoint. Through the pool layer (sk_cluster_pick with a thread's
 * cluster state): unhealthy and ejected endpoints left out, an ejection
 * ending by time, panic, no endpoint at all, the slow-start ramp, and
 * ring_hash skipping an unhealthy endpoint.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balancer.h"
#include "cluster.h"
#include "pool.h"

#include "check.h"

#define NPICKS 4000

/* A cluster (not from a config) whose set in force has n endpoints
 * 127.0.0.1:9000+i with these weights (NULL: all 1), of policy lb. */
static sk_cluster *make_lb(int lb, size_t n, const uint32_t *weights)
{
    static sk_cluster clusters[64];
    static size_t used;
    if (used == SK_ARRAY_LEN(clusters)) return NULL;
    sk_cluster *cl = &clusters[used++];
    memset(cl, 0, sizeof(*cl));
    cl->name = "t";
    cl->lb = lb;
    sk_addr addrs[16];
    for (size_t i = 0; i < n; i++) {
        char text[32];
        snprintf(text, sizeof(text), "127.0.0.1:%zu", 9000 + i);
        if (sk_parse_addr(text, &addrs[i]) < 0) return NULL;
    }
    if (sk_cluster_set_endpoints(cl, addrs, weights, n, "test") < 0) return NULL;
    return cl;
}

static sk_cluster *make_weighted(size_t n, const uint32_t *weights)
{
    return make_lb(SK_LB_ROUND_ROBIN, n, weights);
}

static sk_cluster *make_cluster(size_t n)
{
    return make_weighted(n, NULL);
}

static void free_cluster(sk_cluster *cl)
{
    cl->upstream_free(cl->upstream);
    cl->upstream = NULL;
}

/* A context for a thread with a fixed seed. */
static sk_wctx w;
static uint32_t cursor;
static int64_t current[16]; /* the thread's smooth round-robin state, as sk_wcluster keeps it */
static sk_balance_ctx make_ctx(sk_endpoint *const *avoid, size_t navoid)
{
    w.rng = 0x9e3779b97f4a7c15ull;
    cursor = 0;
    memset(current, 0, sizeof(current));
    return (sk_balance_ctx){
        .avoid = avoid, .navoid = navoid, .w = &w, .cursor = &cursor, .rr_current = current};
}

/* Picks NPICKS times; counts[i] = times set->eps[i] came out. Checks that
 * ctx.picked always names the endpoint returned. */
static void run(const sk_balancer *b, const sk_endpoint_set *set, sk_balance_ctx *ctx, unsigned *counts)
{
    memset(counts, 0, set->n * sizeof(*counts));
    bool picked_ok = true;
    for (int k = 0; k < NPICKS; k++) {
        sk_endpoint *e = b->pick(set, ctx);
        if (!e || ctx->picked >= set->n || set->eps[ctx->picked] != e) {
            picked_ok = false;
            continue;
        }
        counts[ctx->picked]++;
    }
    CHECK(picked_ok);
}

static void test_round_robin(void)
{
    sk_cluster *cl = make_cluster(4);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set && set->n == 4);
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    /* strict rotation from the cursor */
    for (size_t k = 0; k < 8; k++) {
        CHECK(sk_balancer_round_robin.pick(set, &ctx) == set->eps[k % 4]);
        CHECK(ctx.picked == k % 4);
    }
    unsigned counts[4];
    run(&sk_balancer_round_robin, set, &ctx, counts);
    for (int i = 0; i < 4; i++) CHECK(counts[i] == NPICKS / 4);
    /* the cursor is the thread's: it starts where the worker says */
    ctx = make_ctx(NULL, 0);
    cursor = 6;
    CHECK(sk_balancer_round_robin.pick(set, &ctx) == set->eps[2]);
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

static void test_least_request(void)
{
    sk_cluster *cl = make_cluster(4);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set && set->n == 4);
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    unsigned counts[4];
    /* all idle: the two draws tie, the first wins — an even spread */
    run(&sk_balancer_least_request, set, &ctx, counts);
    for (int i = 0; i < 4; i++)
        CHECK(counts[i] > NPICKS / 4 - NPICKS / 10 && counts[i] < NPICKS / 4 + NPICKS / 10);
    /* a busy endpoint loses every comparison: the two draws always differ */
    set->eps[0]->active = 100;
    set->eps[1]->active = 1;
    ctx = make_ctx(NULL, 0);
    run(&sk_balancer_least_request, set, &ctx, counts);
    CHECK(counts[0] == 0);
    CHECK(counts[1] > 0 && counts[1] < counts[2] && counts[1] < counts[3]);
    set->eps[0]->active = set->eps[1]->active = 0;
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

static void test_random(void)
{
    sk_cluster *cl = make_cluster(4);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set && set->n == 4);
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    unsigned counts[4];
    run(&sk_balancer_random, set, &ctx, counts);
    for (int i = 0; i < 4; i++)
        CHECK(counts[i] > NPICKS / 4 - NPICKS / 10 && counts[i] < NPICKS / 4 + NPICKS / 10);
    /* the same seed gives the same sequence */
    unsigned again[4];
    ctx = make_ctx(NULL, 0);
    run(&sk_balancer_random, set, &ctx, again);
    CHECK(memcmp(counts, again, sizeof(counts)) == 0);
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

/* Every policy: avoided endpoints never come out while another exists,
 * the others all do; one left → always that one; all avoided → still one;
 * a single endpoint → it, avoided or not; an empty set → NULL. */
static void test_avoid_and_edges(const sk_balancer *b)
{
    sk_cluster *cl = make_cluster(4), *one = make_cluster(1), *none = make_cluster(0);
    ASSERT(cl && one && none);
    sk_endpoint_set *set = sk_cluster_endpoints(cl), *s1 = sk_cluster_endpoints(one),
                    *s0 = sk_cluster_endpoints(none);
    ASSERT(set && s1 && s0);
    unsigned counts[4];

    sk_endpoint *avoid[3] = {set->eps[0], set->eps[2], NULL};
    sk_balance_ctx ctx = make_ctx(avoid, 2);
    run(b, set, &ctx, counts);
    CHECK(counts[0] == 0 && counts[2] == 0);
    CHECK(counts[1] > 0 && counts[3] > 0);
    CHECK(counts[1] + counts[3] == NPICKS);

    avoid[1] = set->eps[1];
    avoid[2] = set->eps[3];
    ctx = make_ctx(avoid, 3); /* only eps[2] left */
    run(b, set, &ctx, counts);
    CHECK(counts[2] == NPICKS);

    sk_endpoint *all[4] = {set->eps[0], set->eps[1], set->eps[2], set->eps[3]};
    ctx = make_ctx(all, 4);
    CHECK(b->pick(set, &ctx) != NULL);

    sk_endpoint *only = s1->eps[0];
    ctx = make_ctx(&only, 1);
    CHECK(b->pick(s1, &ctx) == only && ctx.picked == 0);
    ctx = make_ctx(NULL, 0);
    CHECK(b->pick(s1, &ctx) == only);

    ctx = make_ctx(NULL, 0);
    CHECK(s0->n == 0 && b->pick(s0, &ctx) == NULL);
    ctx = make_ctx(&only, 1);
    CHECK(b->pick(s0, &ctx) == NULL);

    sk_endpoint_set_unref(set);
    sk_endpoint_set_unref(s1);
    sk_endpoint_set_unref(s0);
    free_cluster(cl);
    free_cluster(one);
    free_cluster(none);
}

/* |got - NPICKS * w / total| within NPICKS / 40 (2.5 points of share):
 * the random policies with a fixed seed; wide enough for any seed, far
 * tighter than the difference between weights 1 and 3. */
static bool near_share(unsigned got, uint64_t weight, uint64_t total)
{
    double want = (double)NPICKS * (double)weight / (double)total;
    return got > want - NPICKS / 40.0 && got < want + NPICKS / 40.0;
}

/* Smooth weighted round robin: nginx's sequence for 5, 1, 1; over
 * total_weight picks each endpoint exactly weight times, spread (never more
 * of the heavy one in a row than its share needs); equal weights stay the
 * plain cursor. */
static void test_round_robin_weighted(void)
{
    static const uint32_t w511[3] = {5, 1, 1};
    sk_cluster *cl = make_weighted(3, w511);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set && !set->uniform && set->total_weight == 7);
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    static const size_t seq[7] = {0, 0, 1, 0, 2, 0, 0};
    for (int round = 0; round < 3; round++)
        for (size_t k = 0; k < 7; k++) {
            CHECK(sk_balancer_round_robin.pick(set, &ctx) == set->eps[seq[k]]);
            CHECK(ctx.picked == seq[k]);
        }
    CHECK(current[0] == 0 && current[1] == 0 && current[2] == 0); /* back where it started */
    sk_endpoint_set_unref(set);
    free_cluster(cl);

    static const uint32_t w13[4] = {1, 3, 10, 6};
    cl = make_weighted(4, w13);
    ASSERT(cl);
    set = sk_cluster_endpoints(cl);
    ASSERT(set && set->total_weight == 20);
    ctx = make_ctx(NULL, 0);
    unsigned counts[4];
    run(&sk_balancer_round_robin, set, &ctx, counts); /* NPICKS is a multiple of 20 */
    for (int i = 0; i < 4; i++) CHECK(counts[i] == NPICKS / 20 * w13[i]);
    /* spread: every 20 picks in a row give exactly the weights, and the
     * endpoint of weight 10 (half the total) never comes three times in a row */
    ctx = make_ctx(NULL, 0);
    size_t last = SIZE_MAX, run_len = 0, max_run = 0;
    bool exact = true;
    unsigned block[4] = {0};
    for (int k = 1; k <= 200; k++) {
        sk_balancer_round_robin.pick(set, &ctx);
        run_len = ctx.picked == last ? run_len + 1 : 1;
        if (ctx.picked == 2 && run_len > max_run) max_run = run_len;
        last = ctx.picked;
        block[ctx.picked]++;
        if (k % 20 == 0) {
            for (int i = 0; i < 4; i++) exact &= block[i] == w13[i];
            memset(block, 0, sizeof(block));
        }
    }
    CHECK(exact && max_run == 2);
    /* without the thread's state, the cursor walks the weights: the same shares */
    ctx = make_ctx(NULL, 0);
    ctx.rr_current = NULL;
    run(&sk_balancer_round_robin, set, &ctx, counts);
    for (int i = 0; i < 4; i++) CHECK(counts[i] == NPICKS / 20 * w13[i]);
    sk_endpoint_set_unref(set);
    free_cluster(cl);

    /* equal weights other than 1: the plain cursor, from the thread's start */
    static const uint32_t w77[3] = {7, 7, 7};
    cl = make_weighted(3, w77);
    ASSERT(cl);
    set = sk_cluster_endpoints(cl);
    ASSERT(set && set->uniform);
    ctx = make_ctx(NULL, 0);
    cursor = 4;
    for (size_t k = 0; k < 6; k++) CHECK(sk_balancer_round_robin.pick(set, &ctx) == set->eps[(4 + k) % 3]);
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

/* random and least_request draw by weight: shares within 2.5 points of
 * the weights' with a fixed seed. */
static void test_random_weighted(void)
{
    static const uint32_t wts[4] = {1, 3, 10, 6};
    sk_cluster *cl = make_weighted(4, wts);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set);
    unsigned counts[4];
    const sk_balancer *policies[2] = {&sk_balancer_random, &sk_balancer_least_request};
    for (int p = 0; p < 2; p++) {
        sk_balance_ctx ctx = make_ctx(NULL, 0);
        run(policies[p], set, &ctx, counts); /* least_request: all idle, a tie goes to the first drawn */
        for (int i = 0; i < 4; i++) CHECK(near_share(counts[i], wts[i], 20));
    }
    /* the weighted draw on its own, over one random number per pick */
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    memset(counts, 0, sizeof(counts));
    for (int k = 0; k < NPICKS; k++) counts[sk_balance_random(set, &ctx)]++;
    for (int i = 0; i < 4; i++) CHECK(near_share(counts[i], wts[i], 20));
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

/* least_request compares requests in flight per unit of weight. */
static void test_least_request_weighted(void)
{
    static const uint32_t wts[3] = {1, 4, 5};
    sk_cluster *cl = make_weighted(3, wts);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set);
    unsigned counts[3];
    /* 2 per weight on eps[0], 1 on eps[1], 1.2 on eps[2]: eps[1] wins every comparison it is in, eps[0]
     * loses every one; eps[0] comes out only when it was drawn all four times */
    set->eps[0]->active = 2;
    set->eps[1]->active = 4;
    set->eps[2]->active = 6;
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    run(&sk_balancer_least_request, set, &ctx, counts);
    CHECK(counts[0] < NPICKS / 200);
    CHECK(counts[1] > counts[2] && counts[1] > NPICKS / 2);
    /* loads proportional to the weights: ties, so the shares are the weights' */
    set->eps[0]->active = 1;
    set->eps[1]->active = 4;
    set->eps[2]->active = 5;
    ctx = make_ctx(NULL, 0);
    run(&sk_balancer_least_request, set, &ctx, counts);
    for (int i = 0; i < 3; i++) CHECK(near_share(counts[i], wts[i], 10));
    set->eps[0]->active = set->eps[1]->active = set->eps[2]->active = 0;
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

/* A retry's avoid set under weights: the endpoints left share by their
 * weights (round_robin exactly), the avoided one never comes out. */
static void test_weighted_avoid(void)
{
    static const uint32_t wts[3] = {8, 1, 3};
    sk_cluster *cl = make_weighted(3, wts);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set);
    unsigned counts[3];
    sk_endpoint *avoid[1] = {set->eps[0]};
    const sk_balancer *policies[3] = {&sk_balancer_round_robin, &sk_balancer_random,
                                      &sk_balancer_least_request};
    for (int p = 0; p < 3; p++) {
        sk_balance_ctx ctx = make_ctx(avoid, 1);
        run(policies[p], set, &ctx, counts);
        CHECK(counts[0] == 0);
        if (p == 0)
            CHECK(counts[1] == NPICKS / 4 && counts[2] == NPICKS / 4 * 3);
        else
            CHECK(near_share(counts[1], 1, 4) && near_share(counts[2], 3, 4));
    }
    /* the round-robin state of the rest stays smooth: after the retry, the
     * next plain picks still give the exact shares */
    sk_balance_ctx ctx = make_ctx(avoid, 1);
    for (int k = 0; k < 5; k++) sk_balancer_round_robin.pick(set, &ctx);
    ctx.navoid = 0;
    int64_t sum = current[0] + current[1] + current[2];
    CHECK(sum == 0);
    run(&sk_balancer_round_robin, set, &ctx, counts);
    CHECK(counts[0] + counts[1] + counts[2] == NPICKS);
    CHECK(counts[0] > NPICKS * 8 / 12 - 12 && counts[0] < NPICKS * 8 / 12 + 12);
    /* every endpoint tried: still one, by weight */
    sk_endpoint *all[3] = {set->eps[0], set->eps[1], set->eps[2]};
    for (int p = 0; p < 3; p++) {
        ctx = make_ctx(all, 3);
        CHECK(policies[p]->pick(set, &ctx) != NULL && ctx.picked < 3);
    }
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

/* The set is swapped while a worker still holds the old one (requests in
 * flight, as cluster.c allows): picks over the old set keep its weights,
 * the endpoint objects that stay are shared, and the new set (adopted with
 * fresh state, as pool.c does) gets its own shares. */
static void test_swap_in_flight(void)
{
    static const uint32_t w1[2] = {1, 3};
    sk_cluster *cl = make_weighted(2, w1);
    ASSERT(cl);
    sk_endpoint_set *old = sk_cluster_endpoints(cl);
    ASSERT(old);
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    for (int k = 0; k < 3; k++) sk_balancer_round_robin.pick(old, &ctx); /* mid-cycle */
    /* the main thread replaces it: the second endpoint stays with weight 1, a third comes with 2 */
    sk_addr addrs[2];
    ASSERT(sk_parse_addr("127.0.0.1:9001", &addrs[0]) == 0 &&
           sk_parse_addr("127.0.0.1:9002", &addrs[1]) == 0);
    uint32_t w2[2] = {1, 2};
    ASSERT(sk_cluster_set_endpoints(cl, addrs, w2, 2, "test") == 0);
    sk_endpoint_set *fresh = sk_cluster_endpoints(cl);
    ASSERT(fresh && fresh != old && fresh->eps[0] == old->eps[1]);
    CHECK(old->weights[1] == 3 && fresh->weights[0] == 1); /* the old set did not change */
    unsigned counts[2];
    run(&sk_balancer_round_robin, old, &ctx, counts); /* the worker has not adopted yet */
    CHECK(counts[0] + counts[1] == NPICKS);
    CHECK(counts[0] > NPICKS / 4 - 2 && counts[0] < NPICKS / 4 + 2);
    for (int p = 0; p < 2; p++) { /* a random policy on the old set, likewise */
        const sk_balancer *b = p ? &sk_balancer_least_request : &sk_balancer_random;
        sk_balance_ctx c2 = make_ctx(NULL, 0);
        run(b, old, &c2, counts);
        CHECK(near_share(counts[0], 1, 4) && near_share(counts[1], 3, 4));
    }
    ctx = make_ctx(NULL, 0); /* adopted: fresh state */
    run(&sk_balancer_round_robin, fresh, &ctx, counts);
    CHECK(counts[0] == NPICKS / 3 || counts[0] == NPICKS / 3 + 1);
    CHECK(counts[0] + counts[1] == NPICKS);
    sk_endpoint_set_unref(old);
    sk_endpoint_set_unref(fresh);
    free_cluster(cl);
}

static void test_table(void)
{
    CHECK(sk_balancer_get(SK_LB_ROUND_ROBIN) == &sk_balancer_round_robin);
    CHECK(sk_balancer_get(SK_LB_LEAST_REQUEST) == &sk_balancer_least_request);
    CHECK(sk_balancer_get(SK_LB_RANDOM) == &sk_balancer_random);
    CHECK(sk_balancer_get(SK_LB_RING_HASH) == &sk_balancer_ring_hash);
    CHECK(sk_balancer_get(SK_LB_EWMA) == &sk_balancer_ewma);
    CHECK(sk_balancer_get(99) == &sk_balancer_round_robin);
    CHECK(strcmp(sk_balancer_get(SK_LB_LEAST_REQUEST)->name, "least_request") == 0);
}

/* ---- ring_hash ---------------------------------------------------------------------------- */

#define NKEYS 4000

/* The owner of key "user-k" for each k, by address port - 9000 (or -1). */
static void map_keys(const sk_endpoint_set *set, sk_balance_ctx *ctx, int *owner)
{
    for (int k = 0; k < NKEYS; k++) {
        char key[32];
        int len = snprintf(key, sizeof(key), "user-%d", k);
        ctx->hash_key = key;
        ctx->hash_key_len = (size_t)len;
        sk_endpoint *e = sk_balancer_ring_hash.pick(set, ctx);
        owner[k] =
            e ? (int)(strrchr(e->address.text, ':') ? atoi(strrchr(e->address.text, ':') + 1) - 9000 : -1)
              : -1;
    }
}

/* A cluster of ring_hash with endpoints 9000+ports[i] and weights. */
static sk_cluster *make_ring(const unsigned *ports, const uint32_t *weights, size_t n)
{
    sk_cluster *cl = make_lb(SK_LB_RING_HASH, 0, NULL);
    if (!cl) return NULL;
    sk_addr addrs[16];
    for (size_t i = 0; i < n; i++) {
        char text[32];
        snprintf(text, sizeof(text), "127.0.0.1:%u", 9000 + ports[i]);
        if (sk_parse_addr(text, &addrs[i]) < 0) return NULL;
    }
    return sk_cluster_set_endpoints(cl, addrs, weights, n, "test") == 0 ? cl : NULL;
}

static void test_ring_hash(void)
{
    static int owner[NKEYS], again[NKEYS], after[NKEYS];
    unsigned ports[5] = {0, 1, 2, 3, 4};
    sk_cluster *cl = make_ring(ports, NULL, 4);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set && set->ring && set->n == 4);
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    map_keys(set, &ctx, owner);
    unsigned counts[5] = {0};
    for (int k = 0; k < NKEYS; k++) {
        ASSERT(owner[k] >= 0 && owner[k] < 4);
        counts[owner[k]]++;
    }
    /* equal weights: each endpoint owns a quarter of the keys, within 5 points
     * (1024 points per endpoint; the hash is fixed, so this is exact to reproduce) */
    for (int i = 0; i < 4; i++) CHECK(counts[i] > NKEYS * 20 / 100 && counts[i] < NKEYS * 30 / 100);
    /* affinity: the same keys, the same owners, whatever the thread's state */
    ctx = make_ctx(NULL, 0);
    cursor = 77;
    map_keys(set, &ctx, again);
    CHECK(memcmp(owner, again, sizeof(owner)) == 0);

    /* the third endpoint leaves (a new set of the other three): only its keys move */
    sk_addr three[3];
    for (int i = 0, j = 0; i < 4; i++)
        if (i != 2) three[j++] = set->eps[i]->address;
    ASSERT(sk_cluster_set_endpoints(cl, three, NULL, 3, "test") == 0);
    sk_endpoint_set *s3 = sk_cluster_endpoints(cl);
    ASSERT(s3 && s3->ring && s3->n == 3);
    ctx = make_ctx(NULL, 0);
    map_keys(s3, &ctx, after);
    unsigned moved = 0;
    bool only_its = true;
    for (int k = 0; k < NKEYS; k++) {
        if (after[k] != owner[k]) moved++;
        if (owner[k] != 2 && after[k] != owner[k]) only_its = false;
        if (after[k] == 2) only_its = false;
    }
    CHECK(only_its);
    CHECK(moved == counts[2] && moved <= NKEYS / 3);

    /* the same with the endpoint still in the set but unusable (unhealthy or
     * ejected): skipped to the next on the ring, exactly as without it */
    bool usable[4] = {true, true, false, true};
    ctx = make_ctx(NULL, 0);
    ctx.usable = usable;
    map_keys(set, &ctx, again);
    CHECK(memcmp(after, again, sizeof(after)) == 0);

    /* a fifth endpoint comes: it takes keys, the others only lose keys to it */
    sk_addr five[5];
    for (int i = 0; i < 4; i++) five[i] = set->eps[i]->address;
    ASSERT(sk_parse_addr("127.0.0.1:9004", &five[4]) == 0);
    ASSERT(sk_cluster_set_endpoints(cl, five, NULL, 5, "test") == 0);
    sk_endpoint_set *s5 = sk_cluster_endpoints(cl);
    ASSERT(s5 && s5->n == 5);
    ctx = make_ctx(NULL, 0);
    map_keys(s5, &ctx, after);
    unsigned to_new = 0;
    bool consistent = true;
    for (int k = 0; k < NKEYS; k++) {
        if (after[k] == 4)
            to_new++;
        else if (after[k] != owner[k])
            consistent = false;
    }
    CHECK(consistent && to_new > NKEYS / 10 && to_new < NKEYS * 3 / 10);

    /* a request that tried the owner goes to the next one; all tried: still one */
    char key[] = "user-1";
    ctx = make_ctx(NULL, 0);
    ctx.hash_key = key;
    ctx.hash_key_len = strlen(key);
    sk_endpoint *first = sk_balancer_ring_hash.pick(set, &ctx);
    ASSERT(first);
    ctx.avoid = &first;
    ctx.navoid = 1;
    sk_endpoint *second = sk_balancer_ring_hash.pick(set, &ctx);
    CHECK(second && second != first);
    sk_endpoint *all[4] = {set->eps[0], set->eps[1], set->eps[2], set->eps[3]};
    ctx.avoid = all;
    ctx.navoid = 4;
    CHECK(sk_balancer_ring_hash.pick(set, &ctx) == first);
    /* nothing usable: nothing */
    bool none[4] = {false, false, false, false};
    ctx = make_ctx(NULL, 0);
    ctx.hash_key = key;
    ctx.hash_key_len = strlen(key);
    ctx.usable = none;
    CHECK(sk_balancer_ring_hash.pick(set, &ctx) == NULL);
    /* no key: round robin */
    ctx = make_ctx(NULL, 0);
    for (size_t k = 0; k < 8; k++) CHECK(sk_balancer_ring_hash.pick(set, &ctx) == set->eps[k % 4]);

    sk_endpoint_set_unref(set);
    sk_endpoint_set_unref(s3);
    sk_endpoint_set_unref(s5);
    free_cluster(cl);

    /* weights 1, 2, 3, 4: the key shares follow them, within 5 points */
    static const uint32_t w1234[4] = {1, 2, 3, 4};
    cl = make_ring(ports, w1234, 4);
    ASSERT(cl);
    set = sk_cluster_endpoints(cl);
    ASSERT(set && set->ring);
    ctx = make_ctx(NULL, 0);
    map_keys(set, &ctx, owner);
    memset(counts, 0, sizeof(counts));
    for (int k = 0; k < NKEYS; k++)
        if (owner[k] >= 0) counts[owner[k]]++;
    for (int i = 0; i < 4; i++) {
        double share = (double)counts[i] / NKEYS, want = w1234[i] / 10.0;
        CHECK(share > want - 0.05 && share < want + 0.05);
    }
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

/* ---- ewma ---------------------------------------------------------------------------------- */

#define MS 1000000ull

static void test_ewma_estimate(void)
{
    sk_endpoint e;
    memset(&e, 0, sizeof(e));
    uint64_t t0 = 1000 * MS, tau = 1000 * MS; /* a 1 s time constant */
    CHECK(sk_ewma_estimate(&e, t0, tau) == 0);
    sk_ewma_update(&e, 100 * MS, t0, tau); /* the first sample is the estimate */
    CHECK(e.ewma_ns == 100 * MS && sk_ewma_estimate(&e, t0, tau) == 100 * MS);
    sk_ewma_update(&e, 300 * MS, t0 + MS, tau); /* a higher one: the peak, at once */
    CHECK(e.ewma_ns == 300 * MS);
    /* a lower one a whole time constant later: 1/e of the old value stays, decay included */
    sk_ewma_update(&e, 10 * MS, t0 + MS + tau, tau);
    double want = 300e6 * exp(-1.) + 10e6 * (1. - exp(-1.));
    CHECK(fabs((double)e.ewma_ns - want) < 1e3);
    /* between samples the estimate decays towards 0 */
    uint64_t now = t0 + MS + tau;
    double v = (double)e.ewma_ns;
    CHECK(fabs((double)sk_ewma_estimate(&e, now + tau, tau) - v * exp(-1.)) < 1e3);
    CHECK(sk_ewma_estimate(&e, now + 20 * tau, tau) < 1000);
    /* a lower sample right after the last one barely moves it (weights are in time) */
    sk_ewma_update(&e, 1 * MS, now + 1000, tau);
    CHECK(e.ewma_ns > (uint64_t)(v * 0.999));
}

static void test_ewma(void)
{
    sk_cluster *cl = make_lb(SK_LB_EWMA, 3, NULL);
    ASSERT(cl);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set && set->n == 3);
    unsigned counts[4];
    /* no samples, idle: an even spread (the first drawn wins the tie) */
    sk_balance_ctx ctx = make_ctx(NULL, 0);
    run(&sk_balancer_ewma, set, &ctx, counts);
    for (int i = 0; i < 3; i++) CHECK(near_share(counts[i], 1, 3));
    /* a slow endpoint (100 ms against 1 ms) loses every comparison: two distinct draws */
    uint64_t now = sk_now_ns(), tau = 60000 * MS;
    sk_ewma_update(set->eps[0], 100 * MS, now, tau);
    sk_ewma_update(set->eps[1], 1 * MS, now, tau);
    sk_ewma_update(set->eps[2], 1 * MS, now, tau);
    ctx = make_ctx(NULL, 0);
    ctx.ewma_decay_ns = tau;
    run(&sk_balancer_ewma, set, &ctx, counts);
    /* (the classic P2C's "the next one when drawn twice" leans 5:4 between the two left) */
    CHECK(counts[0] == 0 && counts[1] > NPICKS * 2 / 5 && counts[2] > NPICKS * 2 / 5);
    /* load counts: equal estimates, one endpoint with 5 in flight gets nothing */
    sk_ewma_update(set->eps[0], 1 * MS, now, tau);
    set->eps[0]->ewma_ns = 1 * MS;
    set->eps[1]->active = 5;
    ctx = make_ctx(NULL, 0);
    ctx.ewma_decay_ns = tau;
    run(&sk_balancer_ewma, set, &ctx, counts);
    CHECK(counts[1] == 0 && counts[0] > 0 && counts[2] > 0);
    set->eps[1]->active = 0;
    /* a slow endpoint's estimate decays: after many time constants it is tried again */
    set->eps[0]->ewma_ns = 100 * MS;
    set->eps[0]->ewma_stamp_ns = now - 3000 * MS; /* 100 ms, 3 s ago with a 100 ms constant: ~0 now */
    set->eps[1]->ewma_stamp_ns = set->eps[2]->ewma_stamp_ns = now;
    ctx = make_ctx(NULL, 0);
    ctx.ewma_decay_ns = 100 * MS;
    run(&sk_balancer_ewma, set, &ctx, counts);
    CHECK(counts[0] > NPICKS / 2); /* a decayed estimate (< 1 µs floor) beats 1 ms */
    /* the avoid set holds */
    sk_endpoint *avoid[1] = {set->eps[0]};
    ctx = make_ctx(avoid, 1);
    ctx.ewma_decay_ns = 100 * MS;
    run(&sk_balancer_ewma, set, &ctx, counts);
    CHECK(counts[0] == 0 && counts[1] + counts[2] == NPICKS);

    /* a new endpoint starts with the median of the others' estimates (cluster.c) */
    now = sk_now_ns();
    static const uint64_t est[3] = {10 * MS, 20 * MS, 900 * MS};
    for (int i = 0; i < 3; i++) {
        set->eps[i]->ewma_ns = est[i];
        set->eps[i]->ewma_stamp_ns = now;
    }
    sk_addr addrs[4];
    for (int i = 0; i < 3; i++) addrs[i] = set->eps[i]->address;
    ASSERT(sk_parse_addr("127.0.0.1:9010", &addrs[3]) == 0);
    cl->ewma_decay_ms = 60000;
    ASSERT(sk_cluster_set_endpoints(cl, addrs, NULL, 4, "test") == 0);
    sk_endpoint_set *s4 = sk_cluster_endpoints(cl);
    ASSERT(s4 && s4->n == 4);
    CHECK(s4->eps[3]->ewma_stamp_ns != 0);
    CHECK(s4->eps[3]->ewma_ns > 19 * MS && s4->eps[3]->ewma_ns <= 20 * MS);
    CHECK(s4->eps[3]->added_ms != 0 && s4->eps[0]->added_ms == 0);
    sk_endpoint_set_unref(s4);
    sk_endpoint_set_unref(set);
    free_cluster(cl);

    /* weights, idle and without samples: the shares are the weights' */
    static const uint32_t wts[4] = {1, 3, 10, 6};
    cl = make_lb(SK_LB_EWMA, 4, wts);
    ASSERT(cl);
    set = sk_cluster_endpoints(cl);
    ASSERT(set);
    ctx = make_ctx(NULL, 0);
    run(&sk_balancer_ewma, set, &ctx, counts);
    for (int i = 0; i < 4; i++) CHECK(near_share(counts[i], wts[i], 20));
    sk_endpoint_set_unref(set);
    free_cluster(cl);
}

/* ---- through the pool layer: health, ejection, panic, slow start -------------------------- */

static sk_wcluster the_wc;
static void *wc_of(sk_wctx *wx, const void *cluster)
{
    return &the_wc;
}

/* Picks NPICKS times through sk_cluster_pick; counts by position in the
 * cluster's set. Returns the number of picks that found nothing. */
static unsigned pick_through(sk_cluster *cl, unsigned *counts, size_t n, const char *key)
{
    memset(counts, 0, n * sizeof(*counts));
    unsigned none = 0;
    for (int k = 0; k < NPICKS; k++) {
        sk_balance_ctx ctx = {.hash_key = key, .hash_key_len = key ? strlen(key) : 0};
        sk_pool *p = sk_cluster_pick(&w, cl, &ctx);
        if (!p) {
            none++;
            continue;
        }
        if (ctx.picked < n && the_wc.pools[ctx.picked] == p) counts[ctx.picked]++;
    }
    return none;
}

static void set_health(sk_cluster *cl, sk_endpoint *e, int h)
{
    e->health = h;
    sk__cluster_health_changed(cl);
}

static void test_pick_view(void)
{
    sk_cluster *cl = make_cluster(4);
    ASSERT(cl);
    cl->panic_threshold = 50;
    w.rng = 12345;
    w.cluster_state = wc_of;
    sk_wcluster_init(&the_wc, 0);
    unsigned counts[8];
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    for (int i = 0; i < 4; i++) CHECK(counts[i] == NPICKS / 4);
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set);
    /* one unhealthy: no traffic to it, the rest share evenly */
    set_health(cl, set->eps[1], SK_HEALTH_UNHEALTHY);
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    CHECK(counts[1] == 0 && counts[0] + counts[2] + counts[3] == NPICKS);
    CHECK(counts[0] > NPICKS / 3 - 2 && counts[0] < NPICKS / 3 + 2);
    /* and one ejected (for a while): two of four left, 50 % is not below the threshold */
    __atomic_store_n(&set->eps[2]->ejected_until_ms, sk_now_ms() + 60000, __ATOMIC_RELEASE);
    sk__cluster_health_changed(cl);
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    CHECK(counts[1] == 0 && counts[2] == 0 && counts[0] == NPICKS / 2 && counts[3] == NPICKS / 2);
    CHECK(((sk_cluster_state *)cl->upstream)->panic == 0);
    /* a third one unhealthy: 1 of 4 is below 50 %: panic, all four get traffic */
    set_health(cl, set->eps[3], SK_HEALTH_UNHEALTHY);
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    for (int i = 0; i < 4; i++) CHECK(counts[i] == NPICKS / 4);
    CHECK(((sk_cluster_state *)cl->upstream)->panic == 1);
    uint64_t panics = ((sk_cluster_state *)cl->upstream)->stats->panics;
    CHECK(panics >= 1);
    /* without a panic threshold: only the healthy one */
    cl->panic_threshold = 0;
    sk__cluster_health_changed(cl);
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    CHECK(counts[0] == NPICKS);
    /* none healthy and no panic: nothing */
    set_health(cl, set->eps[0], SK_HEALTH_UNHEALTHY);
    CHECK(pick_through(cl, counts, 4, NULL) == NPICKS);
    /* the ejection ends by time alone (no change is announced) */
    set_health(cl, set->eps[0], SK_HEALTH_HEALTHY);
    uint64_t end = sk_now_ms() + 2;
    __atomic_store_n(&set->eps[2]->ejected_until_ms, end, __ATOMIC_RELEASE);
    sk__cluster_health_changed(cl);
    CHECK(pick_through(cl, counts, 4, NULL) == 0 && counts[2] == 0);
    for (int k = 0; k < 1000000 && sk_now_ms() <= end; k++) {
    }
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    CHECK(counts[2] == NPICKS / 2 && counts[0] == NPICKS / 2);
    sk_endpoint_set_unref(set);
    sk_pools_free(&the_wc, 1);

    /* ring_hash through the pool: an unhealthy owner's keys go to the next one, and come back */
    sk_cluster *rc = make_lb(SK_LB_RING_HASH, 4, NULL);
    ASSERT(rc);
    rc->panic_threshold = 50;
    sk_wcluster_init(&the_wc, 0);
    CHECK(pick_through(rc, counts, 4, "alice") == 0);
    size_t owner = 4;
    for (size_t i = 0; i < 4; i++)
        if (counts[i] == NPICKS) owner = i;
    ASSERT(owner < 4);
    set = sk_cluster_endpoints(rc);
    ASSERT(set);
    set_health(rc, set->eps[owner], SK_HEALTH_UNHEALTHY);
    CHECK(pick_through(rc, counts, 4, "alice") == 0);
    CHECK(counts[owner] == 0);
    bool one = false;
    for (size_t i = 0; i < 4; i++) one |= counts[i] == NPICKS;
    CHECK(one);
    set_health(rc, set->eps[owner], SK_HEALTH_HEALTHY);
    CHECK(pick_through(rc, counts, 4, "alice") == 0 && counts[owner] == NPICKS);
    /* no key: round robin over the usable ones */
    set_health(rc, set->eps[owner], SK_HEALTH_UNHEALTHY);
    CHECK(pick_through(rc, counts, 4, NULL) == 0 && counts[owner] == 0);
    sk_endpoint_set_unref(set);
    sk_pools_free(&the_wc, 1);
    free_cluster(rc);
    free_cluster(cl);
}

static void test_slow_start(void)
{
    sk_cluster *cl = make_cluster(3);
    ASSERT(cl);
    cl->slow_start_ms = 60000;
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    ASSERT(set);
    /* the first endpoints do not ramp; a later one does, from its arrival */
    uint64_t now = sk_now_ms();
    CHECK(set->eps[0]->added_ms == 0 && sk_endpoint_ramp(cl, set->eps[0], now) == 1.);
    sk_addr addrs[4];
    for (int i = 0; i < 3; i++) addrs[i] = set->eps[i]->address;
    ASSERT(sk_parse_addr("127.0.0.1:9100", &addrs[3]) == 0);
    ASSERT(sk_cluster_set_endpoints(cl, addrs, NULL, 4, "test") == 0);
    sk_endpoint_set *s4 = sk_cluster_endpoints(cl);
    ASSERT(s4 && s4->n == 4);
    sk_endpoint *fresh = s4->eps[3];
    CHECK(fresh->added_ms >= now && s4->eps[0]->added_ms == 0);
    uint64_t t = fresh->added_ms;
    CHECK(fabs(sk_endpoint_ramp(cl, fresh, t) - SK_SLOW_START_MIN) < 1e-9);
    CHECK(fabs(sk_endpoint_ramp(cl, fresh, t + 30000) - (SK_SLOW_START_MIN + (1 - SK_SLOW_START_MIN) / 2)) <
          1e-9);
    CHECK(sk_endpoint_ramp(cl, fresh, t + 60000) == 1. && sk_endpoint_ramp(cl, fresh, t + 99999) == 1.);
    cl->slow_start_ms = 0;
    CHECK(sk_endpoint_ramp(cl, fresh, t) == 1.); /* off */
    cl->slow_start_ms = 60000;
    /* through the pool: the new endpoint starts at about a tenth of a share (0.1 / 3.1) */
    w.rng = 999;
    w.cluster_state = wc_of;
    sk_wcluster_init(&the_wc, 0);
    unsigned counts[4];
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    CHECK(counts[3] > NPICKS * 2 / 100 && counts[3] < NPICKS * 5 / 100);
    CHECK(counts[0] + counts[1] + counts[2] + counts[3] == NPICKS);
    /* half-way: (0.55 / 3.55) */
    fresh->added_ms = sk_now_ms() - 30000;
    sk__cluster_health_changed(cl);
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    CHECK(counts[3] > NPICKS * 13 / 100 && counts[3] < NPICKS * 18 / 100);
    /* ramped: an even share, and no view any more */
    fresh->added_ms = sk_now_ms() - 60000;
    sk__cluster_health_changed(cl);
    CHECK(pick_through(cl, counts, 4, NULL) == 0);
    CHECK(counts[3] == NPICKS / 4 && !the_wc.view_active);
    sk_pools_free(&the_wc, 1);
    /* a cluster that had no endpoints: its first ones do not ramp */
    sk_cluster *empty = make_cluster(0);
    ASSERT(empty);
    empty->slow_start_ms = 60000;
    ASSERT(sk_cluster_set_endpoints(empty, addrs, NULL, 2, "test") == 0);
    sk_endpoint_set *se = sk_cluster_endpoints(empty);
    CHECK(se && se->eps[0]->added_ms == 0);
    sk_endpoint_set_unref(se);
    free_cluster(empty);
    sk_endpoint_set_unref(set);
    sk_endpoint_set_unref(s4);
    free_cluster(cl);
}

int main(void)
{
    test_round_robin();
    test_least_request();
    test_random();
    test_avoid_and_edges(&sk_balancer_round_robin);
    test_avoid_and_edges(&sk_balancer_least_request);
    test_avoid_and_edges(&sk_balancer_random);
    test_round_robin_weighted();
    test_random_weighted();
    test_least_request_weighted();
    test_weighted_avoid();
    test_swap_in_flight();
    test_table();
    test_ring_hash();
    test_ewma_estimate();
    test_ewma();
    test_pick_view();
    test_slow_start();
    printf("test_balancer: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
