/*
 * table.c — the cost of ratelimit.so's shared bucket table (decide()), with
 * no proxy around it: the plugin's .c is included and driven from 1..N
 * threads, each thread doing ITER decisions, on one key for every thread
 * (worst contention: one shard, one cache line) or on distinct keys
 * (N_KEYS keys per thread, spread over the shards).
 *
 *     cc -O2 -I../../../core/include table.c -lhiredis -lm -lpthread -o table && ./table
 *
 * Prints CPU ns per decision (each thread's CLOCK_THREAD_CPUTIME_ID over its
 * decisions, averaged over the threads: what a worker pays, independent of
 * other load on the machine) and the wall-clock throughput of all threads.
 */
#include "../../../plugins/ratelimit/ratelimit.c"

#define ITER   2000000
#define N_KEYS 10000

static void nolog(sk_instance *s, int l, const char *f, ...)
{
    (void)s, (void)l, (void)f;
}
static const char *name(sk_instance *s)
{
    (void)s;
    return "bench";
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
    int id, distinct;
    pthread_barrier_t *bar;
    uint64_t cpu_ns;
} job;

static void *run(void *arg)
{
    job *j = arg;
    char key[32];
    verdict v;
    pthread_barrier_wait(j->bar);
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (int i = 0; i < ITER; i++) {
        int n = j->distinct ? snprintf(key, sizeof key, "t%d-k%d", j->id, i % N_KEYS)
                            : snprintf(key, sizeof key, "one");
        decide(j->rl, key, (size_t)n, &v);
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    j->cpu_ns = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec;
    return NULL;
}

int main(void)
{
    sk_kv kv[] = {{"rate", "1000000000/s", 1}, {"key", "header:x", 2}, {"max_keys", "100000", 3}};
    char err[256];
    for (int distinct = 0; distinct < 2; distinct++)
        for (int nt = 1; nt <= 4; nt *= 2) {
            ratelimit *rl = create(&host, NULL, kv, 3, err, sizeof err);
            if (!rl) return fprintf(stderr, "%s\n", err), 1;
            pthread_t t[4];
            job j[4];
            pthread_barrier_t bar;
            pthread_barrier_init(&bar, NULL, (unsigned)nt + 1);
            for (int i = 0; i < nt; i++) {
                j[i] = (job){rl, i, distinct, &bar, 0};
                pthread_create(&t[i], NULL, run, &j[i]);
            }
            uint64_t t0 = now_ns();
            pthread_barrier_wait(&bar);
            for (int i = 0; i < nt; i++) pthread_join(t[i], NULL);
            uint64_t dt = now_ns() - t0, cpu = 0;
            for (int i = 0; i < nt; i++) cpu += j[i].cpu_ns;
            printf("%-13s %d thread%s: %6.1f CPU ns per decision, %5.1f M decisions/s in all (wall)\n",
                   distinct ? "distinct keys" : "one key", nt, nt > 1 ? "s" : " ", (double)cpu / nt / ITER,
                   (double)ITER * nt / ((double)dt / 1e3));
            pthread_barrier_destroy(&bar);
            destroy(rl);
        }
    return 0;
}
