/*
 * plugin_ratelimit_table.c — ratelimit.so's shared bucket table under
 * threads: the plugin's .c is included and decide() is driven from 4
 * threads at once, as 4 workers would. Built twice (tests/unit/CMakeLists):
 * unit_ratelimit_table checks the counts, unit_ratelimit_table_tsan runs the
 * same under ThreadSanitizer (halts on a data race).
 *
 * No refill during the test (rate 1/h), so the counts are exact: every
 * token of a bucket is taken exactly once, whichever thread asks.
 */
#include "../../plugins/ratelimit/ratelimit.c"

#include "check.h"

#define THREADS 4

static void nolog(sk_instance *s, int l, const char *f, ...)
{
    (void)s, (void)l, (void)f;
}
static const char *name(sk_instance *s)
{
    (void)s;
    return "table";
}
static sk_metric *cl(sk_instance *s, const char *n, const char *h, const char *l, const char *const *v,
                     size_t k)
{
    (void)s, (void)n, (void)h, (void)l, (void)v, (void)k;
    static int d;
    return (sk_metric *)&d;
}
static sk_metric *c(sk_instance *s, const char *n, const char *h)
{
    (void)s, (void)n, (void)h;
    static int d;
    return (sk_metric *)&d;
}
static sk_host_api host = {.log = nolog, .instance_name = name, .counter_labelled = cl, .counter = c};

typedef struct job {
    ratelimit *rl;
    int id, mode, iter, nkeys;
    pthread_barrier_t *bar;
    long allowed, errors;
} job;

enum { ONE_KEY, OWN_KEYS, SHARED_KEYS };

static void *run(void *arg)
{
    job *j = arg;
    char key[48];
    verdict v;
    pthread_barrier_wait(j->bar);
    for (int i = 0; i < j->iter; i++) {
        int n;
        if (j->mode == ONE_KEY)
            n = snprintf(key, sizeof key, "one");
        else if (j->mode == OWN_KEYS)
            n = snprintf(key, sizeof key, "t%d-k%d", j->id, i % j->nkeys);
        else
            n = snprintf(key, sizeof key, "k%d", (i * 7 + j->id) % j->nkeys);
        if (decide(j->rl, key, (size_t)n, &v) < 0)
            j->errors++;
        else if (v.allowed)
            j->allowed++;
    }
    return NULL;
}

/* Runs THREADS threads of `iter` decisions; the total allowed. */
static long hammer(const char *burst, const char *max_keys, int mode, int iter, int nkeys, long *errors)
{
    sk_kv kv[] = {{"rate", "1/h", 1}, {"burst", burst, 2}, {"key", "header:x", 3}, {"max_keys", max_keys, 4}};
    char err[256];
    ratelimit *rl = create(&host, NULL, kv, 4, err, sizeof err);
    if (!rl) {
        fprintf(stderr, "create: %s\n", err);
        return -1;
    }
    pthread_t t[THREADS];
    job j[THREADS];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        j[i] = (job){rl, i, mode, iter, nkeys, &bar, 0, 0};
        pthread_create(&t[i], NULL, run, &j[i]);
    }
    long allowed = 0;
    *errors = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        allowed += j[i].allowed;
        *errors += j[i].errors;
    }
    pthread_barrier_destroy(&bar);
    destroy(rl);
    return allowed;
}

int main(void)
{
    long errors;
    /* one bucket of 1000 tokens, 4 x 5000 requests: exactly 1000 pass */
    CHECK(hammer("1000", "100000", ONE_KEY, 5000, 1, &errors) == 1000);
    CHECK(errors == 0);
    /* the same on the unsharded table (max_keys below 4096: one shard) */
    CHECK(hammer("1000", "100", ONE_KEY, 5000, 1, &errors) == 1000);
    CHECK(errors == 0);
    /* 4 x 500 keys of their own, 3 tokens each, each key asked 10 times:
     * 3 pass per key, spread over the 64 shards */
    CHECK(hammer("3", "100000", OWN_KEYS, 5000, 500, &errors) == 4L * 500 * 3);
    CHECK(errors == 0);
    /* 200 keys shared by every thread, 5 tokens each: 5 per key in all */
    CHECK(hammer("5", "100000", SHARED_KEYS, 5000, 200, &errors) == 200L * 5);
    CHECK(errors == 0);
    /* more keys than max_keys (one shard of 64): least recently used
     * buckets are dropped and come back full, so more pass than the
     * buckets hold, never an error, and the LRU stays consistent */
    long n = hammer("2", "64", SHARED_KEYS, 5000, 1000, &errors);
    CHECK(n > 64L * 2 && n <= 4L * 5000);
    CHECK(errors == 0);
    printf("plugin_ratelimit_table: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
