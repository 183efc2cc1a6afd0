/*
 * test_retry.c — unit tests of proxy/retry.c: the retry budget (ratio of
 * the window's requests, the per-second minimum, exact under concurrent
 * takers) and the backoff steps.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "traffic.h"

#include "check.h"

static uint32_t second(void)
{
    return (uint32_t)(sk_now_ms() / 1000);
}

static sk_cluster *cluster(uint32_t ppm, unsigned min)
{
    sk_cluster *cl = calloc(1, sizeof(*cl));
    if (!cl) exit(2);
    cl->retry_budget_ppm = ppm;
    cl->retry_budget_min = min;
    return cl;
}

/* Takes until refused (at most `cap` times); the number taken. */
static unsigned take_all(sk_cluster *cl, unsigned cap)
{
    unsigned n = 0;
    while (n < cap && sk__retry_budget_take(cl)) n++;
    return n;
}

static void test_ratio(void)
{
    sk_cluster *cl = cluster(200000, 0); /* 20%, no minimum */
    CHECK(!sk__retry_budget_take(cl));   /* no request yet: nothing */
    for (int i = 0; i < 100; i++) sk__retry_budget_deposit(cl);
    CHECK(take_all(cl, 1000) == 20); /* the window spans 10 s: a second boundary changes nothing */
    for (int i = 0; i < 10; i++) sk__retry_budget_deposit(cl);
    CHECK(take_all(cl, 1000) == 2);
    free(cl);

    cl = cluster(SK_PPM, 0); /* 100%: one retry per request */
    for (int i = 0; i < 7; i++) sk__retry_budget_deposit(cl);
    CHECK(take_all(cl, 1000) == 7);
    free(cl);

    cl = cluster(SK_RETRY_BUDGET_OFF, 0);
    CHECK(take_all(cl, 1000) == 1000);
    free(cl);
}

static void test_minimum(void)
{
    for (int attempt = 0; attempt < 3; attempt++) { /* a second boundary in between: try again */
        sk_cluster *cl = cluster(200000, 5);
        uint32_t s = second();
        unsigned n = take_all(cl, 1000);
        bool same = second() == s;
        free(cl);
        if (!same) continue;
        CHECK(n == 5);
        return;
    }
    CHECK(!"three second boundaries in a row");
}

/* The ratio part under 4 threads: exactly the allowance, never more. */
static sk_cluster *shared;
static unsigned taken[4];

static void *taker(void *arg)
{
    unsigned *t = arg;
    for (int i = 0; i < 20000; i++)
        if (sk__retry_budget_take(shared)) (*t)++;
    return NULL;
}

static void test_concurrent(void)
{
    shared = cluster(100000, 0); /* 10% */
    for (int i = 0; i < 5000; i++) sk__retry_budget_deposit(shared);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, taker, &taken[i]);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    CHECK(taken[0] + taken[1] + taken[2] + taken[3] == 500);
    free(shared);
}

static void test_backoff(void)
{
    sk_route rt;
    memset(&rt, 0, sizeof(rt));
    CHECK(sk__retry_backoff_ms(&rt, 1, 12345) == 0); /* no retry_backoff: at once */
    rt.retry_backoff_ms = 25;
    /* retry n waits between half and all of 25 ms x 2^(n-1), capped at 250 ms */
    static const uint64_t steps[] = {25, 50, 100, 200, 250, 250, 250};
    for (unsigned n = 1; n <= SK_ARRAY_LEN(steps); n++) {
        uint64_t lo = ~0ull, hi = 0;
        for (uint32_t rnd = 0; rnd < 1000; rnd++) {
            uint64_t ms = sk__retry_backoff_ms(&rt, n, rnd * 2654435761u);
            lo = ms < lo ? ms : lo;
            hi = ms > hi ? ms : hi;
        }
        uint64_t step = steps[n - 1];
        CHECK(lo == step / 2 && hi == step);
    }
    rt.retry_backoff_ms = 1;
    CHECK(sk__retry_backoff_ms(&rt, 1, 0) == 0 && sk__retry_backoff_ms(&rt, 1, 1) == 1);
    CHECK(sk__retry_backoff_ms(&rt, 100, 9) <= 10);
}

int main(void)
{
    test_ratio();
    test_minimum();
    test_concurrent();
    test_backoff();
    printf("test_retry: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
