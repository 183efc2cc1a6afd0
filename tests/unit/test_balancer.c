/*
 * test_balancer.c — unit tests of the balancers (upstream/balancer.h):
 * for round_robin, least_request and random, the distribution over N
 * endpoints with a fixed random seed, the avoid set honoured while another
 * endpoint exists, a single endpoint returned even when avoided, an empty
 * set giving NULL; and the `lb` → policy table.
 */
#include <stdio.h>
#include <string.h>

#include "balancer.h"
#include "cluster.h"

#include "check.h"

#define NPICKS 4000

/* A cluster (not from a config) whose set in force has n endpoints
 * 127.0.0.1:9000+i. */
static sk_cluster *make_cluster(size_t n)
{
    static sk_cluster clusters[16];
    static size_t used;
    sk_cluster *cl = &clusters[used++];
    memset(cl, 0, sizeof(*cl));
    cl->name = "t";
    sk_addr addrs[16];
    for (size_t i = 0; i < n; i++) {
        char text[32];
        snprintf(text, sizeof(text), "127.0.0.1:%zu", 9000 + i);
        if (sk_parse_addr(text, &addrs[i]) < 0) return NULL;
    }
    if (sk_cluster_set_endpoints(cl, addrs, NULL, n, "test") < 0) return NULL;
    return cl;
}

static void free_cluster(sk_cluster *cl)
{
    cl->upstream_free(cl->upstream);
    cl->upstream = NULL;
}

/* A context for a thread with a fixed seed. */
static sk_wctx w;
static uint32_t cursor;
static sk_balance_ctx make_ctx(sk_endpoint *const *avoid, size_t navoid)
{
    w.rng = 0x9e3779b97f4a7c15ull;
    cursor = 0;
    return (sk_balance_ctx){.avoid = avoid, .navoid = navoid, .w = &w, .cursor = &cursor};
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
    test_table();
    printf("test_balancer: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
