/*
 * test_cluster.c — unit tests of upstream/cluster.c: the first set from
 * the static endpoints, a replacement that keeps the objects of endpoints
 * that stay and drops the others with their last reference, balanced
 * refcounts, repeated addresses, and the endpoint set under concurrent
 * updates (one thread replacing sets in a bounded loop while two threads
 * take sets, pick through a balancer and hold and release endpoint
 * references and in-flight counts, as worker pools do). Meant to run under
 * the ASan build, and built with -fsanitize=thread too (unit_cluster_tsan).
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balancer.h"
#include "cluster.h"

#include "check.h"

/* 127.0.0.1:port, made by hand: the TSan build of this test links no
 * config parser. */
static sk_addr addr(unsigned port)
{
    sk_addr a;
    memset(&a, 0, sizeof(a));
    struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.len = sizeof(*sin);
    snprintf(a.text, sizeof(a.text), "127.0.0.1:%u", port);
    return a;
}

static int refs(const sk_endpoint *e)
{
    return __atomic_load_n(&e->refcnt, __ATOMIC_ACQUIRE);
}

/* The endpoint of s at address port, or NULL. */
static sk_endpoint *find(const sk_endpoint_set *s, unsigned port)
{
    sk_addr a = addr(port);
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->eps[i]->address.text, a.text) == 0) return s->eps[i];
    return NULL;
}

static void test_first_set(void)
{
    sk_endpoint_conf eps[2] = {{.address = addr(8001), .index = 0}, {.address = addr(8002), .index = 1}};
    sk_cluster cl = {.name = "c", .endpoints = eps, .nendpoints = 2};
    sk_cluster *cls[1] = {&cl};
    sk_config cfg = {.clusters = cls, .nclusters = 1};
    CHECK(sk_cluster_endpoints(&cl) == NULL && sk_cluster_version(&cl) == 0);
    ASSERT(sk_clusters_init(&cfg) == 0);
    ASSERT(cl.upstream && cl.upstream_free);
    sk_cluster_state *st = cl.upstream;
    CHECK(sk_clusters_init(&cfg) == 0 && cl.upstream == st); /* once */
    sk_endpoint_set *s = sk_cluster_endpoints(&cl);
    ASSERT(s);
    CHECK(s->version == 1 && sk_cluster_version(&cl) == 1);
    CHECK(s->n == 2 && s->total_weight == 2);
    CHECK(strcmp(s->eps[0]->address.text, "127.0.0.1:8001") == 0);
    CHECK(strcmp(s->eps[1]->address.text, "127.0.0.1:8002") == 0);
    CHECK(s->eps[0]->weight == 1 && strcmp(s->eps[0]->source, "static") == 0);
    CHECK(sk_endpoint_healthy(s->eps[0]) && s->eps[0]->active == 0);
    CHECK(refs(s->eps[0]) == 1 && s->refcnt == 2); /* the cluster's and ours */
    sk_endpoint_set_unref(s);
    CHECK(st->set->refcnt == 1);
    cl.upstream_free(cl.upstream);
}

static void test_replacement(void)
{
    sk_cluster cl = {.name = "c"};
    sk_addr a1[3] = {addr(1), addr(2), addr(3)};
    uint32_t w1[3] = {5, 6, 7};
    ASSERT(sk_cluster_set_endpoints(&cl, a1, w1, 3, "disc") == 0);
    /* no static endpoints: the first (empty) set was replaced */
    sk_endpoint_set *s1 = sk_cluster_endpoints(&cl);
    ASSERT(s1 && s1->n == 3);
    CHECK(s1->version == 2 && s1->total_weight == 18);
    sk_endpoint *e1 = find(s1, 1), *e2 = find(s1, 2), *e3 = find(s1, 3);
    ASSERT(e1 && e2 && e3);
    CHECK(e1->weight == 5 && strcmp(e1->source, "disc") == 0);
    e2->active = 4;
    e2->health = SK_HEALTH_HEALTHY;
    sk_endpoint_ref(e1); /* as a pool serving e1 does */

    /* 2 and 3 stay (in another order, 3 with a new weight), 1 leaves, 4 comes */
    sk_addr a2[4] = {addr(3), addr(4), addr(2), addr(3)};
    uint32_t w2[4] = {9, 1, 6, 100};
    ASSERT(sk_cluster_set_endpoints(&cl, a2, w2, 4, "other") == 0);
    sk_endpoint_set *s2 = sk_cluster_endpoints(&cl);
    ASSERT(s2);
    CHECK(s2->version == 3 && sk_cluster_version(&cl) == 3);
    CHECK(s2->n == 3); /* the repeated 3 counts once, with the first weight */
    CHECK(s2->total_weight == 16);
    CHECK(s2->eps[0] == e3 && s2->eps[2] == e2); /* same address, same object, in the given order */
    CHECK(find(s2, 1) == NULL && find(s2, 4) && find(s2, 4) != e1);
    CHECK(e3->weight == 9 && strcmp(e3->source, "other") == 0);
    CHECK(e2->active == 4 && e2->health == SK_HEALTH_HEALTHY); /* its state survived */
    CHECK(refs(e2) == 2 && refs(e3) == 2);                     /* in s1 and s2 */
    CHECK(refs(e1) == 2);                                      /* s1 and the "pool" */
    CHECK(s1->refcnt == 1);                                    /* only ours: the cluster dropped it */
    e2->active = 0;

    sk_endpoint_set_unref(s1); /* e1 lives on in the pool */
    CHECK(refs(e1) == 1 && refs(e2) == 1 && refs(e3) == 1);
    CHECK(strcmp(e1->address.text, "127.0.0.1:1") == 0);
    sk_endpoint_unref(e1); /* freed now: ASan sees any later use */

    /* an empty set is a set */
    ASSERT(sk_cluster_set_endpoints(&cl, NULL, NULL, 0, "other") == 0);
    sk_endpoint_set *s3 = sk_cluster_endpoints(&cl);
    ASSERT(s3);
    CHECK(s3->n == 0 && s3->total_weight == 0 && s3->version == 4);
    CHECK(refs(e2) == 1 && refs(e3) == 1); /* s2 only */
    sk_endpoint_set_unref(s3);
    sk_endpoint_set_unref(s2); /* e2, e3 and 4 go */
    cl.upstream_free(cl.upstream);
}

/* ---- the endpoint set under concurrent updates -------------------------------------------- */

#define REPLACEMENTS 3000
#define HELD         16

static sk_cluster shared = {.name = "shared"};
static int writer_done;
static int readers_ready; /* readers that picked once: the writer starts after both */

/* The main thread's part: replaces the set REPLACEMENTS times with windows
 * of 1..6 endpoints over 10 addresses, so objects stay, leave and come back. */
static void *writer(void *arg)
{
    sk_addr all[10];
    for (unsigned i = 0; i < 10; i++) all[i] = addr(7000 + i);
    for (unsigned k = 0; k < 10000000 && __atomic_load_n(&readers_ready, __ATOMIC_ACQUIRE) < 2; k++)
        sched_yield();
    int rc = 0;
    for (unsigned k = 0; k < REPLACEMENTS && rc == 0; k++) {
        size_t start = k % 10, n = 1 + k % 6;
        sk_addr win[6];
        uint32_t w[6];
        for (size_t i = 0; i < n; i++) {
            win[i] = all[(start + i) % 10];
            w[i] = 1 + (uint32_t)i;
        }
        rc = sk_cluster_set_endpoints(&shared, win, w, n, "disc");
        if (k % 64 == 0) sched_yield(); /* let the readers interleave on a busy machine too */
    }
    __atomic_store_n(&writer_done, 1, __ATOMIC_RELEASE);
    return (void *)(intptr_t)rc;
}

typedef struct reader_result {
    unsigned picks, adopted, bad;
} reader_result;

/* A worker's part: adopts the set when its version changed (holding it, as
 * sk_wcluster does), picks through round_robin, and holds the picked
 * endpoint with a reference and an in-flight count for a while, as a pool
 * and a request do, releasing the oldest when HELD are held. Bounded: it
 * stops when the writer is done, or after 2,000,000 picks. */
static void *reader(void *arg)
{
    reader_result *res = arg;
    sk_wctx w = {.rng = (uint64_t)(uintptr_t)arg | 1};
    uint32_t cursor = 0;
    sk_endpoint_set *set = NULL;
    sk_endpoint *held[HELD] = {0};
    unsigned nheld = 0;
    for (unsigned k = 0; k < 2000000 && !__atomic_load_n(&writer_done, __ATOMIC_ACQUIRE); k++) {
        if (!set || sk_cluster_version(&shared) != set->version) {
            sk_endpoint_set *next = sk_cluster_endpoints(&shared);
            if (set && next->version < set->version) res->bad++;
            sk_endpoint_set_unref(set);
            set = next;
            res->adopted++;
        }
        sk_endpoint *avoid = held[(nheld + HELD - 1) % HELD];
        sk_balance_ctx ctx = {.avoid = &avoid, .navoid = avoid ? 1 : 0, .w = &w, .cursor = &cursor};
        sk_endpoint *e = sk_balancer_round_robin.pick(set, &ctx);
        if (!e || ctx.picked >= set->n || set->eps[ctx.picked] != e ||
            __atomic_load_n(&e->weight, __ATOMIC_RELAXED) < 1 ||
            __atomic_load_n(&e->weight, __ATOMIC_RELAXED) > 6) {
            res->bad++;
            continue;
        }
        if (res->picks++ == 0) __atomic_add_fetch(&readers_ready, 1, __ATOMIC_RELEASE);
        sk_endpoint_ref(e);
        __atomic_add_fetch(&e->active, 1, __ATOMIC_RELAXED);
        sk_endpoint *old = held[nheld % HELD];
        held[nheld++ % HELD] = e;
        if (old) {
            __atomic_sub_fetch(&old->active, 1, __ATOMIC_RELAXED);
            sk_endpoint_unref(old);
        }
    }
    for (unsigned i = 0; i < HELD; i++) {
        if (!held[i]) continue;
        __atomic_sub_fetch(&held[i]->active, 1, __ATOMIC_RELAXED);
        sk_endpoint_unref(held[i]);
    }
    sk_endpoint_set_unref(set);
    return NULL;
}

static void test_concurrent_updates(void)
{
    sk_addr first = addr(7000);
    ASSERT(sk_cluster_set_endpoints(&shared, &first, NULL, 1, "disc") == 0);
    pthread_t tw, tr[2];
    reader_result res[2] = {{0}};
    ASSERT(pthread_create(&tr[0], NULL, reader, &res[0]) == 0);
    ASSERT(pthread_create(&tr[1], NULL, reader, &res[1]) == 0);
    ASSERT(pthread_create(&tw, NULL, writer, NULL) == 0);
    void *wrc;
    pthread_join(tw, &wrc);
    pthread_join(tr[0], NULL);
    pthread_join(tr[1], NULL);
    CHECK(wrc == NULL);
    CHECK(res[0].bad == 0 && res[1].bad == 0);
    CHECK(res[0].picks > 0 && res[1].picks > 0);
    CHECK(sk_cluster_version(&shared) == 2 + REPLACEMENTS);
    /* every reference and count taken was given back: only the cluster's set holds its endpoints */
    sk_endpoint_set *s = sk_cluster_endpoints(&shared);
    ASSERT(s);
    CHECK(s->refcnt == 2);
    bool balanced = true;
    for (size_t i = 0; i < s->n; i++) balanced &= refs(s->eps[i]) == 1 && s->eps[i]->active == 0;
    CHECK(balanced);
    sk_endpoint_set_unref(s);
    shared.upstream_free(shared.upstream); /* the last set and its endpoints: LeakSanitizer checks the rest */
}

int main(void)
{
    test_first_set();
    test_replacement();
    test_concurrent_updates();
    printf("test_cluster: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
