/*
 * test_cluster.c — unit tests of upstream/cluster.c: the first set from
 * the static endpoints, a replacement that keeps the objects of endpoints
 * that stay and drops the others with their last reference, balanced
 * refcounts, repeated addresses, and the endpoint set under concurrent
 * updates (one thread replacing sets in a bounded loop while two threads
 * take sets, pick through a balancer and hold and release endpoint
 * references and in-flight counts, as worker pools do); discovery's state
 * of a cluster and its carry-over by a reload; outlier detection (ejection
 * at exactly outlier_failures failures in a row, the reset by a response,
 * max_ejection_percent with 1, 2, 3 and 10 endpoints, the growth of the
 * ejection time and its cap, the level's reset after a good spell, the end
 * of an ejection by a passed check) and the same shared state under
 * concurrent reports from several threads (failure counts, ejections,
 * ewma estimates, panic state). Meant to run under the ASan build, and
 * built with -fsanitize=thread too (unit_cluster_tsan).
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

/* The weight of the endpoint of s at address port, 0 when absent. */
static uint32_t weight_of(const sk_endpoint_set *s, unsigned port)
{
    sk_addr a = addr(port);
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->eps[i]->address.text, a.text) == 0) return s->weights[i];
    return 0;
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
    CHECK(s->weights[0] == 1 && s->weights[1] == 1 && s->uniform && strcmp(s->source, "static") == 0);
    CHECK(s->cum[0] == 1 && s->cum[1] == 2);
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
    CHECK(weight_of(s1, 1) == 5 && weight_of(s1, 3) == 7 && strcmp(s1->source, "disc") == 0 && !s1->uniform);
    CHECK(s1->cum[0] == 5 && s1->cum[1] == 11 && s1->cum[2] == 18);
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
    CHECK(weight_of(s2, 3) == 9 && strcmp(s2->source, "other") == 0);
    CHECK(weight_of(s1, 3) == 7 && strcmp(s1->source, "disc") == 0); /* the old set did not change */
    CHECK(e2->active == 4 && e2->health == SK_HEALTH_HEALTHY);       /* its state survived */
    CHECK(refs(e2) == 2 && refs(e3) == 2);                           /* in s1 and s2 */
    CHECK(refs(e1) == 2);                                            /* s1 and the "pool" */
    CHECK(s1->refcnt == 1);                                          /* only ours: the cluster dropped it */
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

/* Discovery's answers and words: the state a set and sk_cluster_set_state
 * leave, the message's bounds, the Prometheus series. */
static void test_discovery_state(void)
{
    sk_endpoint_conf eps[1] = {{.address = addr(8101), .index = 0}};
    sk_cluster cl = {
        .name = "api", .endpoints = eps, .nendpoints = 1, .discovery = "dns", .discovery_arg = "a:80"};
    sk_cluster plain = {.name = "plain", .endpoints = eps, .nendpoints = 1};
    sk_cluster *cls[2] = {&cl, &plain};
    sk_config cfg = {.clusters = cls, .nclusters = 2};
    CHECK(sk_cluster_discovery(&cl) == NULL);
    ASSERT(sk_clusters_init(&cfg) == 0);
    const sk_discovery_state *d = sk_cluster_discovery(&cl);
    ASSERT(d);
    CHECK(!d->answered && !d->stale && !d->carried && d->last_update == 0 && d->message[0] == 0);

    sk_buf out = {0};
    ASSERT(sk_clusters_render_prometheus(&out, &cfg) == 0 && sk_buf_append(&out, "", 1) == 0);
    CHECK(strstr(out.data, "sidekick_cluster_endpoints{cluster=\"api\",source=\"static\"} 1\n") != NULL);
    CHECK(strstr(out.data, "sidekick_cluster_endpoints{cluster=\"plain\",source=\"static\"} 1\n") != NULL);
    CHECK(strstr(out.data, "discovery_age") == NULL); /* no answer yet */
    sk_buf_reset(&out);

    /* a word before any answer is kept, but the state has no answer yet */
    char longer[400];
    memset(longer, 'x', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = 0;
    longer[3] = '\n';
    longer[4] = (char)0xc3;
    ASSERT(sk_cluster_set_state(&cl, false, longer) == 0);
    CHECK(!d->answered && d->stale);
    CHECK(strlen(d->message) == SK_STATE_MESSAGE_MAX && d->message[3] == '?' && d->message[4] == '?');

    sk_addr a[2] = {addr(8102), addr(8103)};
    uint32_t w[2] = {1, 3};
    uint64_t before = sk_now_ms();
    ASSERT(sk_cluster_set_endpoints(&cl, a, w, 2, "dns") == 0);
    CHECK(d->answered && !d->stale && d->message[0] == 0);
    CHECK(d->last_update > 0 && d->last_update_ms >= before);
    ASSERT(sk_cluster_set_state(&cl, false, "dns: timeout") == 0);
    CHECK(d->stale && strcmp(d->message, "dns: timeout") == 0);
    int64_t first = d->last_update;
    uint64_t first_ms = d->last_update_ms;
    while (sk_now_ms() == first_ms) {
    }
    ASSERT(sk_cluster_set_state(&cl, true, NULL) == 0);
    CHECK(!d->stale && d->message[0] == 0);
    /* ok on an answered cluster: a fresh good answer (the age restarts) */
    CHECK(d->last_update_ms > first_ms && d->last_update >= first);

    ASSERT(sk_clusters_render_prometheus(&out, &cfg) == 0 && sk_buf_append(&out, "", 1) == 0);
    CHECK(strstr(out.data, "sidekick_cluster_endpoints{cluster=\"api\",source=\"dns\"} 2\n") != NULL);
    CHECK(strstr(out.data, "# TYPE sidekick_cluster_discovery_age_seconds gauge\n") != NULL);
    CHECK(strstr(out.data, "sidekick_cluster_discovery_age_seconds{cluster=\"api\"} ") != NULL);
    CHECK(strstr(out.data, "discovery_age_seconds{cluster=\"plain\"}") == NULL);
    sk_buf_free(&out);
    cl.upstream_free(cl.upstream);
    plain.upstream_free(plain.upstream);
}

/* A reload: clusters with the same name and `discovery` line start with
 * the previous generation's set and state; others do not; one the new
 * instance answered at load keeps its own. */
static void test_carry_over(void)
{
    sk_cluster p1 = {.name = "same", .discovery = "dns", .discovery_arg = "a:80"};
    sk_cluster p2 = {.name = "otherarg", .discovery = "dns", .discovery_arg = "a:80"};
    sk_cluster p3 = {.name = "unanswered", .discovery = "dns"};
    sk_cluster p4 = {.name = "answered_at_load", .discovery = "dns"};
    sk_cluster *pc[4] = {&p1, &p2, &p3, &p4};
    sk_config prev = {.clusters = pc, .nclusters = 4};
    ASSERT(sk_clusters_init(&prev) == 0);
    sk_addr a[3] = {addr(8201), addr(8202), addr(8203)};
    uint32_t w[3] = {2, 1, 7};
    ASSERT(sk_cluster_set_endpoints(&p1, a, w, 3, "dns") == 0);
    ASSERT(sk_cluster_set_state(&p1, false, "dns: SERVFAIL") == 0);
    ASSERT(sk_cluster_set_endpoints(&p2, a, w, 1, "dns") == 0);
    ASSERT(sk_cluster_set_endpoints(&p4, a, w, 2, "dns") == 0);

    sk_endpoint_conf st[1] = {{.address = addr(8299), .index = 0}};
    sk_cluster n1 = {
        .name = "same", .discovery = "dns", .discovery_arg = "a:80", .endpoints = st, .nendpoints = 1};
    sk_cluster n2 = {.name = "otherarg", .discovery = "dns", .discovery_arg = "b:80"};
    sk_cluster n3 = {.name = "unanswered", .discovery = "dns"};
    sk_cluster n4 = {.name = "answered_at_load", .discovery = "dns"};
    sk_cluster n5 = {.name = "new", .discovery = "dns"};
    sk_cluster *nc[5] = {&n1, &n2, &n3, &n4, &n5};
    sk_config next = {.clusters = nc, .nclusters = 5};
    ASSERT(sk_cluster_set_endpoints(&n4, a + 2, w + 2, 1, "file") == 0); /* the new instance, in on_cluster */
    ASSERT(sk_clusters_init(&next) == 0);
    CHECK(sk_clusters_carry_over(&next, &prev) == 1);

    sk_endpoint_set *s = sk_cluster_endpoints(&n1), *old = sk_cluster_endpoints(&p1);
    ASSERT(s && old);
    CHECK(s->n == 3 && strcmp(s->source, "dns") == 0 && s->total_weight == 10 && !s->uniform);
    CHECK(weight_of(s, 8201) == 2 && weight_of(s, 8202) == 1 && weight_of(s, 8203) == 7);
    CHECK(s->eps[0] != old->eps[0]); /* objects of the new generation's own */
    const sk_discovery_state *d = sk_cluster_discovery(&n1), *od = sk_cluster_discovery(&p1);
    CHECK(d->answered && d->carried && d->stale && strcmp(d->message, "dns: SERVFAIL") == 0);
    CHECK(d->last_update == od->last_update && d->last_update_ms == od->last_update_ms);
    sk_endpoint_set_unref(s);
    sk_endpoint_set_unref(old);

    s = sk_cluster_endpoints(&n2);
    CHECK(s && s->n == 0 && !sk_cluster_discovery(&n2)->answered); /* another ARG: a new question */
    sk_endpoint_set_unref(s);
    CHECK(!sk_cluster_discovery(&n3)->answered && !sk_cluster_discovery(&n5)->answered);
    s = sk_cluster_endpoints(&n4);
    CHECK(s && s->n == 1 && strcmp(s->source, "file") == 0 && !sk_cluster_discovery(&n4)->carried);
    sk_endpoint_set_unref(s);

    /* the new instance answers: no longer carried */
    ASSERT(sk_cluster_set_endpoints(&n1, a, NULL, 1, "dns") == 0);
    CHECK(!d->carried && !d->stale && d->message[0] == 0);
    CHECK(sk_clusters_carry_over(&next, NULL) == 0);

    for (size_t i = 0; i < 4; i++) pc[i]->upstream_free(pc[i]->upstream);
    for (size_t i = 0; i < 5; i++) nc[i]->upstream_free(nc[i]->upstream);
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
    int64_t current[16];
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
            /* the smooth round-robin state of this set, as sk_wcluster keeps it */
            memset(current, 0, sizeof(current));
            if (set->n > 16) res->bad++;
        }
        sk_endpoint *avoid = held[(nheld + HELD - 1) % HELD];
        sk_balance_ctx ctx = {.avoid = &avoid,
                              .navoid = avoid ? 1 : 0,
                              .w = &w,
                              .cursor = &cursor,
                              .rr_current = k % 2 ? current : NULL};
        sk_endpoint *e = sk_balancer_round_robin.pick(set, &ctx);
        if (!e || ctx.picked >= set->n || set->eps[ctx.picked] != e || set->weights[ctx.picked] < 1 ||
            set->weights[ctx.picked] > 6) {
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

/* ---- outlier detection --------------------------------------------------------------------- */

/* A cluster of n endpoints 127.0.0.1:6000+i with outlier detection. */
static void outlier_cluster(sk_cluster *cl, size_t n, unsigned nfail, uint64_t ejection_ms, unsigned pct)
{
    memset(cl, 0, sizeof(*cl));
    cl->name = "od";
    cl->outlier_failures = nfail;
    cl->outlier_ejection_ms = ejection_ms;
    cl->max_ejection_percent = pct;
    sk_addr a[16];
    for (size_t i = 0; i < n; i++) a[i] = addr(6000 + (unsigned)i);
    sk_cluster_set_endpoints(cl, a, NULL, n, "test");
}

static size_t ejected_now(sk_cluster *cl)
{
    sk_endpoint_set *s = sk_cluster_endpoints(cl);
    size_t k = 0;
    uint64_t now = sk_now_ms();
    for (size_t i = 0; s && i < s->n; i++) k += sk_endpoint_ejected(s->eps[i], now);
    sk_endpoint_set_unref(s);
    return k;
}

static void test_outlier(void)
{
    sk_cluster cl;
    outlier_cluster(&cl, 3, 3, 1000, 50);
    sk_endpoint_set *s = sk_cluster_endpoints(&cl);
    ASSERT(s && s->n == 3);
    sk_endpoint *e = s->eps[0];
    sk_cluster_state *st = cl.upstream;
    uint64_t gen = st->health_gen;
    /* two failures, a response: the count starts over */
    sk_cluster_report(&cl, e, true, 0);
    sk_cluster_report(&cl, e, true, 0);
    CHECK(e->failures == 2 && !sk_endpoint_ejected(e, sk_now_ms()));
    sk_cluster_report(&cl, e, false, 0);
    CHECK(e->failures == 0);
    /* exactly three in a row eject it, for outlier_ejection × 1 */
    sk_cluster_report(&cl, e, true, 0);
    sk_cluster_report(&cl, e, true, 0);
    CHECK(!sk_endpoint_ejected(e, sk_now_ms()) && st->health_gen == gen);
    uint64_t before = sk_now_ms();
    sk_cluster_report(&cl, e, true, 0);
    CHECK(sk_endpoint_ejected(e, sk_now_ms()) && !sk_endpoint_usable(e, sk_now_ms()));
    CHECK(e->ejections == 1 && e->ejection_ms == 1000 && e->failures == 0);
    CHECK(e->ejected_until_ms >= before + 1000 && e->ejected_until_ms <= sk_now_ms() + 1000);
    CHECK(st->health_gen == gen + 1 && st->stats && st->stats->ejections >= 1);
    /* failures while ejected (requests in flight) change nothing */
    uint64_t until = e->ejected_until_ms;
    for (int k = 0; k < 5; k++) sk_cluster_report(&cl, e, true, 0);
    CHECK(e->ejections == 1 && e->ejected_until_ms == until && e->failures == 0);
    /* a second endpoint of three: 50 % of 3 rounds to 1, and one is ejected already */
    for (int k = 0; k < 10; k++) sk_cluster_report(&cl, s->eps[1], true, 0);
    CHECK(!sk_endpoint_ejected(s->eps[1], sk_now_ms()) && ejected_now(&cl) == 1);
    /* the time is up (moved back here): it returns; the next ejection is twice as long */
    __atomic_store_n(&e->ejected_until_ms, sk_now_ms() - 1, __ATOMIC_RELEASE);
    CHECK(!sk_endpoint_ejected(e, sk_now_ms()) && sk_endpoint_usable(e, sk_now_ms()));
    sk_cluster_report(&cl, e, true, 0);
    sk_cluster_report(&cl, e, true, 0);
    CHECK(e->ejections == 1); /* it came back counting from 0 */
    sk_cluster_report(&cl, e, true, 0);
    CHECK(e->ejections == 2 && e->ejection_ms == 2000);
    /* a passed active check ends it at once */
    sk__endpoint_uneject(&cl, e);
    CHECK(!sk_endpoint_ejected(e, sk_now_ms()) && e->failures == 0);
    for (int k = 0; k < 3; k++) sk_cluster_report(&cl, e, true, 0);
    CHECK(e->ejections == 3 && e->ejection_ms == 3000);
    /* after a good spell longer than the cap, the level starts over */
    __atomic_store_n(&e->ejected_until_ms, sk_now_ms() - SK_EJECTION_MAX_MS - 10, __ATOMIC_RELEASE);
    for (int k = 0; k < 3; k++) sk_cluster_report(&cl, e, true, 0);
    CHECK(e->ejections == 4 && e->ejection_ms == 1000);
    /* outlier detection off: nothing */
    cl.outlier_failures = 0;
    for (int k = 0; k < 10; k++) sk_cluster_report(&cl, s->eps[2], true, 0);
    CHECK(s->eps[2]->failures == 0 && !sk_endpoint_ejected(s->eps[2], sk_now_ms()));
    sk_endpoint_set_unref(s);
    cl.upstream_free(cl.upstream);

    /* the cap: 200 s, then 300 s (not 400), then 300 s */
    outlier_cluster(&cl, 1, 2, 200000, 50);
    s = sk_cluster_endpoints(&cl);
    ASSERT(s);
    e = s->eps[0];
    static const uint64_t want[3] = {200000, 300000, 300000};
    for (int round = 0; round < 3; round++) {
        sk_cluster_report(&cl, e, true, 0);
        sk_cluster_report(&cl, e, true, 0);
        CHECK(e->ejection_ms == want[round] && sk_endpoint_ejected(e, sk_now_ms()));
        CHECK(e->ejected_until_ms <= sk_now_ms() + SK_EJECTION_MAX_MS);
        sk__endpoint_uneject(&cl, e); /* as a passed check does */
    }
    sk_endpoint_set_unref(s);
    cl.upstream_free(cl.upstream);

    /* max_ejection_percent with 1, 2, 3 and 10 endpoints (and 20 %, 0 %, 100 % of 10):
     * every endpoint fails; at most that share is ejected, but always one */
    static const struct {
        size_t n;
        unsigned pct;
        size_t ejected;
    } cases[] = {{1, 50, 1},  {2, 50, 1}, {3, 50, 1},    {10, 50, 5},
                 {10, 20, 2}, {10, 0, 1}, {10, 100, 10}, {3, 100, 3}};
    for (size_t c = 0; c < SK_ARRAY_LEN(cases); c++) {
        outlier_cluster(&cl, cases[c].n, 2, 60000, cases[c].pct);
        s = sk_cluster_endpoints(&cl);
        ASSERT(s);
        for (int round = 0; round < 3; round++)
            for (size_t i = 0; i < s->n; i++) sk_cluster_report(&cl, s->eps[i], true, 0);
        CHECK(ejected_now(&cl) == cases[c].ejected);
        if (ejected_now(&cl) != cases[c].ejected)
            fprintf(stderr, "  %zu endpoints at %u%%: %zu ejected\n", cases[c].n, cases[c].pct,
                    ejected_now(&cl));
        /* one that returns makes room for the next */
        for (size_t i = 0; i < s->n; i++)
            if (sk_endpoint_ejected(s->eps[i], sk_now_ms())) {
                sk__endpoint_uneject(&cl, s->eps[i]);
                break;
            }
        for (size_t i = 0; i < s->n; i++) sk_cluster_report(&cl, s->eps[i], true, 0);
        for (size_t i = 0; i < s->n; i++) sk_cluster_report(&cl, s->eps[i], true, 0);
        CHECK(ejected_now(&cl) == cases[c].ejected);
        sk_endpoint_set_unref(s);
        cl.upstream_free(cl.upstream);
    }
}

/* Panic: below panic_threshold percent usable; the state changes once per transition. */
static void test_panic(void)
{
    sk_cluster cl;
    outlier_cluster(&cl, 4, 0, 0, 0);
    cl.panic_threshold = 50;
    sk_endpoint_set *s = sk_cluster_endpoints(&cl);
    ASSERT(s);
    sk_cluster_state *st = cl.upstream;
    size_t usable;
    CHECK(!sk_cluster_check_panic(&cl, s, sk_now_ms(), &usable) && usable == 4);
    s->eps[0]->health = SK_HEALTH_UNHEALTHY;
    s->eps[1]->health = SK_HEALTH_UNHEALTHY;
    CHECK(!sk_cluster_check_panic(&cl, s, sk_now_ms(), &usable) && usable == 2); /* 50 % is not below */
    uint64_t panics = st->stats->panics;
    __atomic_store_n(&s->eps[2]->ejected_until_ms, sk_now_ms() + 60000, __ATOMIC_RELEASE);
    CHECK(sk_cluster_check_panic(&cl, s, sk_now_ms(), &usable) && usable == 1 && st->panic == 1);
    CHECK(sk_cluster_check_panic(&cl, s, sk_now_ms(), &usable)); /* still: counted once */
    CHECK(st->stats->panics == panics + 1);
    s->eps[3]->health = SK_HEALTH_UNHEALTHY;
    CHECK(sk_cluster_check_panic(&cl, s, sk_now_ms(), &usable) && usable == 0);
    cl.panic_threshold = 0; /* off: never, even with none usable */
    CHECK(!sk_cluster_check_panic(&cl, s, sk_now_ms(), &usable) && st->panic == 0);
    sk_endpoint_set_unref(s);
    cl.upstream_free(cl.upstream);
}

/* A reload keeps health, ejection and ewma of the endpoints that stay. */
static void test_inherit(void)
{
    sk_endpoint_conf e1[2] = {{.address = addr(8301), .index = 0}, {.address = addr(8302), .index = 1}};
    sk_endpoint_conf e2[2] = {{.address = addr(8302), .index = 0}, {.address = addr(8303), .index = 1}};
    sk_cluster p1 = {.name = "c",
                     .endpoints = e1,
                     .nendpoints = 2,
                     .health_check = "/h",
                     .outlier_failures = 2,
                     .lb = SK_LB_EWMA};
    sk_cluster n1 = {.name = "c",
                     .endpoints = e2,
                     .nendpoints = 2,
                     .health_check = "/h",
                     .outlier_failures = 2,
                     .lb = SK_LB_EWMA,
                     .health_initial_unhealthy = true};
    sk_cluster n2 = {.name = "other", .endpoints = e1, .nendpoints = 2};
    sk_cluster *pc[1] = {&p1}, *nc[2] = {&n1, &n2};
    sk_config prev = {.clusters = pc, .nclusters = 1}, next = {.clusters = nc, .nclusters = 2};
    ASSERT(sk_clusters_init(&prev) == 0 && sk_clusters_init(&next) == 0);
    sk_endpoint_set *ps = sk_cluster_endpoints(&p1);
    ASSERT(ps);
    sk_endpoint *o = ps->eps[1]; /* 8302, in both */
    o->health = SK_HEALTH_UNHEALTHY;
    o->hc_failures = 4;
    o->ejected_until_ms = sk_now_ms() + 50000;
    o->ejection_ms = 60000;
    o->ejections = 2;
    o->eject_level = 2;
    o->ewma_ns = 7 * 1000000;
    o->ewma_stamp_ns = sk_now_ns();
    sk_clusters_inherit(&next, &prev);
    sk_endpoint_set *ns = sk_cluster_endpoints(&n1);
    ASSERT(ns && ns->n == 2);
    sk_endpoint *e = ns->eps[0], *fresh = ns->eps[1];
    CHECK(e != o && e->health == SK_HEALTH_UNHEALTHY && e->hc_failures == 4);
    CHECK(sk_endpoint_ejected(e, sk_now_ms()) && e->ejection_ms == 60000 && e->ejections == 2 &&
          e->eject_level == 2);
    CHECK(e->ewma_ns == 7 * 1000000 && e->ewma_stamp_ns == o->ewma_stamp_ns);
    CHECK(fresh->health == SK_HEALTH_UNHEALTHY && fresh->hc_failures == 0); /* health_initial = unhealthy */
    /* another cluster of the same addresses keeps nothing */
    sk_endpoint_set *os = sk_cluster_endpoints(&n2);
    CHECK(os && os->eps[1]->health == SK_HEALTH_UNKNOWN && os->eps[1]->ejections == 0);
    sk_endpoint_set_unref(os);
    sk_endpoint_set_unref(ns);
    sk_endpoint_set_unref(ps);
    p1.upstream_free(p1.upstream);
    n1.upstream_free(n1.upstream);
    n2.upstream_free(n2.upstream);
}

/* ---- outlier detection and ewma under concurrent reports ---------------------------------- */

#define REPORTS 200000

static sk_cluster od_shared;
static int od_done;

typedef struct od_result {
    unsigned over_limit; /* samples with more ejected than the limit */
    unsigned samples;
} od_result;

/* A worker's part: reports attempts of random endpoints, failing most of
 * the time, feeding ewma samples; bounded by REPORTS. */
static void *od_reporter(void *arg)
{
    sk_wctx w = {.rng = (uint64_t)(uintptr_t)arg | 1};
    sk_endpoint_set *s = sk_cluster_endpoints(&od_shared);
    for (unsigned k = 0; s && k < REPORTS; k++) {
        uint32_t r = sk_wctx_rand(&w);
        sk_endpoint *e = s->eps[r % s->n];
        sk_cluster_report(&od_shared, e, (r >> 8) % 4 != 0, (r >> 12) % 1000000);
    }
    sk_endpoint_set_unref(s);
    return NULL;
}

/* The main thread's part: ends ejections (as passed checks do) and flips
 * health, until the reporters are done. Then also a monitor: the number
 * ejected never passes the limit. */
static void *od_main(void *arg)
{
    od_result *res = arg;
    sk_endpoint_set *s = sk_cluster_endpoints(&od_shared);
    size_t limit = s->n * od_shared.max_ejection_percent / 100;
    for (unsigned k = 0; k < 10000000 && !__atomic_load_n(&od_done, __ATOMIC_ACQUIRE); k++) {
        size_t ej = ejected_now(&od_shared);
        res->samples++;
        if (ej > limit) res->over_limit++;
        if (k % 16 == 0) sk__endpoint_uneject(&od_shared, s->eps[k % s->n]);
        if (k % 32 == 0) {
            __atomic_store_n(&s->eps[(k / 32) % s->n]->health,
                             (k / 32) % 3 ? SK_HEALTH_HEALTHY : SK_HEALTH_UNHEALTHY, __ATOMIC_RELAXED);
            sk__cluster_health_changed(&od_shared);
        }
        size_t usable;
        sk_cluster_check_panic(&od_shared, s, sk_now_ms(), &usable);
        sched_yield();
    }
    sk_endpoint_set_unref(s);
    return NULL;
}

static void test_outlier_concurrent(void)
{
    outlier_cluster(&od_shared, 8, 2, 60000, 50);
    od_shared.lb = SK_LB_EWMA;
    od_shared.ewma_decay_ms = 1000;
    od_shared.connect_timeout_ms = 1;
    od_shared.panic_threshold = 50;
    pthread_t tr[3], tm;
    od_result res = {0};
    int level = sk_log_level;
    sk_log_level = SK_LOG_ERROR; /* thousands of ejection and panic lines otherwise */
    ASSERT(pthread_create(&tm, NULL, od_main, &res) == 0);
    for (uintptr_t i = 0; i < 3; i++) ASSERT(pthread_create(&tr[i], NULL, od_reporter, (void *)(i + 1)) == 0);
    for (int i = 0; i < 3; i++) pthread_join(tr[i], NULL);
    __atomic_store_n(&od_done, 1, __ATOMIC_RELEASE);
    pthread_join(tm, NULL);
    sk_log_level = level;
    CHECK(res.samples > 0 && res.over_limit == 0);
    sk_endpoint_set *s = sk_cluster_endpoints(&od_shared);
    ASSERT(s);
    unsigned ejections = 0;
    bool sampled = true;
    for (size_t i = 0; i < s->n; i++) {
        ejections += s->eps[i]->ejections;
        sampled &= s->eps[i]->ewma_stamp_ns != 0;
    }
    sk_cluster_state *st = od_shared.upstream;
    CHECK(ejections > 0 && st->stats && st->stats->ejections >= ejections && sampled);
    CHECK(ejected_now(&od_shared) <= 4);
    sk_endpoint_set_unref(s);
    od_shared.upstream_free(od_shared.upstream);
}

int main(void)
{
    test_first_set();
    test_replacement();
    test_discovery_state();
    test_carry_over();
    test_concurrent_updates();
    test_outlier();
    test_panic();
    test_inherit();
    test_outlier_concurrent();
    printf("test_cluster: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
