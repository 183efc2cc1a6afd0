/*
 * test_balancer.c — unit tests of the balancers (upstream/balancer.h):
 * for round_robin, least_request and random, the distribution over N
 * endpoints with a fixed random seed, the avoid set honoured while another
 * endpoint exists, a single endpoint returned even when avoided, an empty
 * set giving NULL; the share each endpoint gets of many picks against its
 * weight (smooth weighted round robin exactly, the random draws within a
 * bound, deterministic seeds), weights under retries and across a set
 * swapped while a worker still holds the old one; and the `lb` → policy
 * table.
 */
#include <stdio.h>
#include <string.h>

#include "balancer.h"
#include "cluster.h"

#include "check.h"

#define NPICKS 4000

/* A cluster (not from a config) whose set in force has n endpoints
 * 127.0.0.1:9000+i with these weights (NULL: all 1). */
static sk_cluster *make_weighted(size_t n, const uint32_t *weights)
{
    static sk_cluster clusters[64];
    static size_t used;
    if (used == SK_ARRAY_LEN(clusters)) return NULL;
    sk_cluster *cl = &clusters[used++];
    memset(cl, 0, sizeof(*cl));
    cl->name = "t";
    sk_addr addrs[16];
    for (size_t i = 0; i < n; i++) {
        char text[32];
        snprintf(text, sizeof(text), "127.0.0.1:%zu", 9000 + i);
        if (sk_parse_addr(text, &addrs[i]) < 0) return NULL;
    }
    if (sk_cluster_set_endpoints(cl, addrs, weights, n, "test") < 0) return NULL;
    return cl;
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
    CHECK(sk_balancer_get(99) == &sk_balancer_round_robin);
    CHECK(strcmp(sk_balancer_get(SK_LB_LEAST_REQUEST)->name, "least_request") == 0);
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
    printf("test_balancer: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
