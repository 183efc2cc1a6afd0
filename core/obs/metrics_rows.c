/*
 * metrics_rows.c — the process-wide registry of metric rows and the
 * per-worker tables that hold them (see metrics.h).
 *
 * A row is named by a kind and up to two label values ("r" main api: the
 * route api of listener main; "e" api 10.0.0.1:80: that endpoint of
 * cluster api). Two generations that both have route api of listener main
 * share its row, so its counters go on across a reload.
 *
 * Rows of listeners, routes and clusters are kept for the life of the
 * process: their names come from the config file, so there are as many as
 * the operator ever wrote, and a route that a reload removes and a later
 * one brings back goes on from its count. Endpoint rows come and go with
 * discovery, so they are reference-counted by the endpoint objects that
 * carry their index: the last object of an address gives its row back, and
 * the row is zeroed before another name gets it. So the tables grow with
 * the endpoints in use at once, not with every address ever seen.
 *
 * Tables are arrays of fixed-size chunks of rows, allocated here on the
 * main thread for every table before the row's index is handed out, and
 * never moved: a worker indexes its table without a check beyond a NULL
 * chunk, and the admin thread reads the same memory while it renders.
 *
 * One mutex guards the registry: acquire (main thread, at a load or an
 * endpoint set change), release (whichever thread frees the last holder:
 * rare, never per request), and the list of tables. Counting and
 * rendering never take it.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

typedef struct slot {
    char *key;     /* kind, a, '\x1f', b; NULL when the row is free */
    unsigned refs; /* holders of the row */
    bool kept;     /* a listener, route or cluster row: never given back */
    size_t next;   /* next row of the same hash bucket, or of the free list; 0 = end */
} slot;

static struct {
    pthread_mutex_t lock;
    slot *slots;      /* slots[0..nslots): every row ever handed out; 0 is the sink */
    size_t nslots;    /* rows that exist in the tables (high-water mark, >= 1) */
    size_t cap;       /* allocated slots */
    size_t *buckets;  /* hash buckets: first row of each chain, 0 = empty */
    size_t nbuckets;  /* a power of two, or 0 */
    size_t free_head; /* first free row, 0 = none */
    size_t in_use;    /* rows with a name */
    bool warned;      /* the warning of a row that could not be had was logged */
    sk_metrics *tables;
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER, .nslots = 1};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Allocates chunk c of table m if missing. 0 or -1. Locked. */
static int ensure_chunk(sk_metrics *m, size_t c)
{
    if (m->chunks[c]) return 0;
    sk_mrow *chunk = calloc(SK_MROW_CHUNK, sizeof(*chunk));
    if (!chunk) return -1;
    __atomic_store_n(&m->chunks[c], chunk, __ATOMIC_RELEASE);
    return 0;
}

/* Gives every table the chunk of `row`. 0 or -1. Locked. */
static int ensure_row(size_t row)
{
    for (sk_metrics *m = reg.tables; m; m = m->next_table)
        if (ensure_chunk(m, row / SK_MROW_CHUNK) < 0) return -1;
    return 0;
}

/* Doubles the buckets and rehashes. Locked. Failure keeps the old ones. */
static void grow_buckets(void)
{
    size_t nb = reg.nbuckets ? reg.nbuckets * 2 : 64;
    size_t *b = calloc(nb, sizeof(*b));
    if (!b) return;
    for (size_t r = 1; r < reg.nslots; r++) {
        if (!reg.slots[r].key) continue;
        size_t i = hash(reg.slots[r].key) & (nb - 1);
        reg.slots[r].next = b[i];
        b[i] = r;
    }
    free(reg.buckets);
    reg.buckets = b;
    reg.nbuckets = nb;
}

/* Builds the key of (kind, a, b); NULL on OOM. */
static char *make_key(char kind, const char *a, const char *b)
{
    size_t la = a ? strlen(a) : 0, lb = b ? strlen(b) : 0;
    char *k = malloc(la + lb + 3);
    if (!k) return NULL;
    k[0] = kind;
    if (la) memcpy(k + 1, a, la);
    size_t n = 1 + la;
    if (b) {
        k[n++] = '\x1f';
        memcpy(k + n, b, lb);
        n += lb;
    }
    k[n] = 0;
    return k;
}

/* The row named (kind, a, b), with a reference (see metrics.h). */
size_t sk_metrics_row_acquire(char kind, const char *a, const char *b)
{
    char *key = make_key(kind, a, b);
    if (!key) return 0;
    pthread_mutex_lock(&reg.lock);
    if (reg.nbuckets) {
        for (size_t r = reg.buckets[hash(key) & (reg.nbuckets - 1)]; r; r = reg.slots[r].next) {
            if (strcmp(reg.slots[r].key, key) == 0) {
                if (!reg.slots[r].kept) reg.slots[r].refs++;
                pthread_mutex_unlock(&reg.lock);
                free(key);
                return r;
            }
        }
    }
    size_t row = 0;
    bool reused = false;
    if (reg.free_head) {
        row = reg.free_head;
        reused = true;
    } else if (reg.nslots < SK_MROW_MAX) {
        if (reg.nslots >= reg.cap) { /* slot 0 (the sink) is counted in nslots from the start */
            size_t cap = reg.cap ? reg.cap * 2 : 64;
            slot *s = realloc(reg.slots, cap * sizeof(*s));
            if (!s) goto fail;
            memset(s + reg.cap, 0, (cap - reg.cap) * sizeof(*s));
            reg.slots = s;
            reg.cap = cap;
        }
        row = reg.nslots;
    } else {
        goto fail; /* full: counted in the sink */
    }
    if (reg.in_use + 1 > reg.nbuckets) grow_buckets(); /* keeps the old buckets on OOM */
    if (!reg.nbuckets || ensure_row(row) < 0) goto fail;
    if (reused) {
        reg.free_head = reg.slots[row].next;
        /* nothing writes a free row: it starts again from zero for its new name */
        for (sk_metrics *m = reg.tables; m; m = m->next_table)
            memset(&m->chunks[row / SK_MROW_CHUNK][row % SK_MROW_CHUNK], 0, sizeof(sk_mrow));
    } else {
        reg.nslots++;
    }
    size_t i = hash(key) & (reg.nbuckets - 1);
    reg.slots[row].key = key;
    reg.slots[row].refs = 1;
    reg.slots[row].kept = kind != 'e';
    reg.slots[row].next = reg.buckets[i];
    reg.buckets[i] = row;
    reg.in_use++;
    pthread_mutex_unlock(&reg.lock);
    return row;
fail:
    if (!reg.warned) {
        reg.warned = true;
        for (char *p = key; *p; p++)
            if (*p == '\x1f') *p = ' ';
        sk_warn("metrics: no row for %s (%zu rows in use, or out of memory): its figures are not counted",
                key + 1, reg.in_use);
    }
    pthread_mutex_unlock(&reg.lock);
    free(key);
    return 0;
}

/* Drops a reference on a row (see metrics.h). */
void sk_metrics_row_release(size_t row)
{
    if (row == 0) return;
    pthread_mutex_lock(&reg.lock);
    if (row < reg.nslots && reg.slots[row].key && !reg.slots[row].kept && --reg.slots[row].refs == 0) {
        size_t *p = &reg.buckets[hash(reg.slots[row].key) & (reg.nbuckets - 1)];
        while (*p && *p != row) p = &reg.slots[*p].next;
        if (*p) *p = reg.slots[row].next;
        free(reg.slots[row].key);
        reg.slots[row].key = NULL;
        reg.slots[row].next = reg.free_head;
        reg.free_head = row;
        reg.in_use--;
    }
    pthread_mutex_unlock(&reg.lock);
}

/* Rows with a name now. */
size_t sk_metrics_rows_in_use(void)
{
    pthread_mutex_lock(&reg.lock);
    size_t n = reg.in_use;
    pthread_mutex_unlock(&reg.lock);
    return n;
}

/* A table with every row handed out so far (see metrics.h). */
sk_metrics *sk_metrics_new(void)
{
    sk_metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    pthread_mutex_lock(&reg.lock);
    for (size_t c = 0; c <= (reg.nslots - 1) / SK_MROW_CHUNK; c++) {
        if (ensure_chunk(m, c) < 0) {
            pthread_mutex_unlock(&reg.lock);
            for (size_t i = 0; i < SK_MROW_CHUNKS; i++) free(m->chunks[i]);
            free(m);
            return NULL;
        }
    }
    m->next_table = reg.tables;
    reg.tables = m;
    pthread_mutex_unlock(&reg.lock);
    return m;
}

/* Frees a table (see metrics.h). */
void sk_metrics_free(sk_metrics *m)
{
    if (!m) return;
    pthread_mutex_lock(&reg.lock);
    for (sk_metrics **p = &reg.tables; *p; p = &(*p)->next_table) {
        if (*p == m) {
            *p = m->next_table;
            break;
        }
    }
    pthread_mutex_unlock(&reg.lock);
    for (size_t i = 0; i < SK_MROW_CHUNKS; i++) free(m->chunks[i]);
    free(m);
}

/* Names cfg's rows (see metrics.h). */
void sk_metrics_assign_rows(sk_config *cfg)
{
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        sk_listener *l = cfg->listeners[i];
        l->metrics_row = sk_metrics_row_acquire('l', l->name, NULL);
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        sk_route *rt = cfg->routes[i];
        rt->metrics_row = sk_metrics_row_acquire('r', rt->listener ? rt->listener->name : "", rt->name);
    }
    for (size_t i = 0; i < cfg->nclusters; i++) {
        sk_cluster *cl = cfg->clusters[i];
        cl->metrics_row = sk_metrics_row_acquire('c', cl->name, NULL);
    }
}
