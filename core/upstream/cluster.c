/*
 * cluster.c — shared endpoint objects and immutable endpoint sets of a
 * cluster (see cluster.h): made from the static endpoints after a load,
 * replaced by discovery on the main thread, adopted by workers with one
 * short lock per change.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"

/* Takes a reference on e. */
void sk_endpoint_ref(sk_endpoint *e)
{
    __atomic_add_fetch(&e->refcnt, 1, __ATOMIC_RELAXED);
}

/* Drops a reference on e; the last one frees it. */
void sk_endpoint_unref(sk_endpoint *e)
{
    if (e && __atomic_sub_fetch(&e->refcnt, 1, __ATOMIC_ACQ_REL) == 0) free(e);
}

/* Healthy for the balancers: not failing its checks and not ejected. */
bool sk_endpoint_healthy(const sk_endpoint *e)
{
    return __atomic_load_n(&e->health, __ATOMIC_RELAXED) != SK_HEALTH_UNHEALTHY &&
           !__atomic_load_n(&e->ejected, __ATOMIC_RELAXED);
}

/* Takes a reference on s. */
void sk_endpoint_set_ref(sk_endpoint_set *s)
{
    __atomic_add_fetch(&s->refcnt, 1, __ATOMIC_RELAXED);
}

/* Drops a reference on s; the last one frees it and drops its endpoints. */
void sk_endpoint_set_unref(sk_endpoint_set *s)
{
    if (!s || __atomic_sub_fetch(&s->refcnt, 1, __ATOMIC_ACQ_REL) != 0) return;
    for (size_t i = 0; i < s->n; i++) sk_endpoint_unref(s->eps[i]);
    free(s);
}

/* sk_cluster.upstream_free: the config that owns the cluster is freed. */
static void state_free(sk_cluster_state *st)
{
    sk_endpoint_set_unref(st->set);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

static int cmp_endpoint(const void *a, const void *b)
{
    return strcmp((*(sk_endpoint *const *)a)->address.text, (*(sk_endpoint *const *)b)->address.text);
}

/* Orders indices into an sk_addr array by address text, equal texts by index. */
static int cmp_index(const void *a, const void *b, void *arg)
{
    const sk_addr *addrs = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int c = strcmp(addrs[i].text, addrs[j].text);
    return c ? c : (i > j) - (i < j);
}

/* The endpoint of `sorted` (n, by address) with address text `text`, or NULL. */
static sk_endpoint *find_endpoint(sk_endpoint **sorted, size_t n, const char *text)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(text, sorted[mid]->address.text);
        if (c == 0) return sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/*
 * Makes the set that replaces `old` (NULL for the first): endpoints of old
 * with an address of addrs are taken over (weight and source updated), the
 * others are new objects; repeated addresses count once. Main thread, with
 * old held. Returns the set (refcnt 1) or NULL on OOM.
 */
static sk_endpoint_set *make_set(const sk_endpoint_set *old, const sk_addr *addrs, const uint32_t *weights,
                                 size_t n, const char *source)
{
    size_t nold = old ? old->n : 0;
    sk_endpoint_set *s = calloc(1, sizeof(*s) + n * sizeof(s->eps[0]));
    sk_endpoint **sorted = calloc(nold ? nold : 1, sizeof(*sorted));
    size_t *order = calloc(n ? n : 1, sizeof(*order));
    bool *dup = calloc(n ? n : 1, sizeof(*dup));
    bool ok = s && sorted && order && dup;
    if (ok) {
        if (nold) memcpy(sorted, old->eps, nold * sizeof(*sorted));
        qsort(sorted, nold, sizeof(*sorted), cmp_endpoint);
        for (size_t i = 0; i < n; i++) order[i] = i;
        qsort_r(order, n, sizeof(*order), cmp_index, (void *)addrs);
        for (size_t i = 1; i < n; i++)
            if (strcmp(addrs[order[i]].text, addrs[order[i - 1]].text) == 0) dup[order[i]] = true;
        s->refcnt = 1;
        s->version = old ? old->version + 1 : 1;
    }
    for (size_t i = 0; ok && i < n; i++) {
        if (dup[i]) continue;
        uint32_t w = weights ? weights[i] : 1;
        sk_endpoint *e = find_endpoint(sorted, nold, addrs[i].text);
        if (e) {
            sk_endpoint_ref(e);
        } else if ((e = calloc(1, sizeof(*e))) != NULL) {
            e->address = addrs[i];
            e->refcnt = 1;
        } else {
            ok = false;
            break;
        }
        s->eps[s->n++] = e;
        s->total_weight += w;
    }
    if (ok) {
        /* Only now that nothing can fail: the objects that stay take the
         * new weights and source. */
        for (size_t i = 0, k = 0; i < n; i++) {
            if (dup[i]) continue;
            sk_endpoint *e = s->eps[k++];
            __atomic_store_n(&e->weight, weights ? weights[i] : 1, __ATOMIC_RELAXED);
            snprintf(e->source, sizeof(e->source), "%s", source ? source : "static");
        }
    } else if (s) {
        s->refcnt = 1;
        sk_endpoint_set_unref(s);
        s = NULL;
    }
    free(sorted);
    free(order);
    free(dup);
    return s;
}

/* Publishes `set` (its reference moves to the cluster) as cl's set in force. */
static void publish(sk_cluster_state *st, sk_endpoint_set *set)
{
    pthread_mutex_lock(&st->lock);
    sk_endpoint_set *old = st->set;
    st->set = set;
    __atomic_store_n(&st->version, set->version, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&st->lock);
    sk_endpoint_set_unref(old);
}

/* The upstream state of cl, made with the static endpoints as its first
 * set when it has none. NULL on OOM. */
static sk_cluster_state *state_of(sk_cluster *cl)
{
    if (cl->upstream) return cl->upstream;
    sk_cluster_state *st = calloc(1, sizeof(*st));
    sk_addr *addrs = calloc(cl->nendpoints ? cl->nendpoints : 1, sizeof(*addrs));
    sk_endpoint_set *set = NULL;
    if (st && addrs) {
        for (size_t i = 0; i < cl->nendpoints; i++) addrs[i] = cl->endpoints[i].address;
        set = make_set(NULL, addrs, NULL, cl->nendpoints, "static");
    }
    free(addrs);
    if (!set) {
        free(st);
        return NULL;
    }
    pthread_mutex_init(&st->lock, NULL);
    st->set = set;
    st->version = set->version;
    cl->upstream = st;
    cl->upstream_free = state_free;
    return st;
}

/* Gives each cluster of cfg its upstream state (see cluster.h). */
int sk_clusters_init(sk_config *cfg)
{
    for (size_t i = 0; i < cfg->nclusters; i++)
        if (!state_of(cfg->clusters[i])) return -1;
    return 0;
}

/* Replaces the set in force of cl (see cluster.h). */
int sk_cluster_set_endpoints(sk_cluster *cl, const sk_addr *addrs, const uint32_t *weights, size_t n,
                             const char *source)
{
    sk_cluster_state *st = state_of(cl);
    if (!st) return -1;
    /* The main thread is the only writer: st->set cannot change under us. */
    sk_endpoint_set *set = make_set(st->set, addrs, weights, n, source);
    if (!set) return -1;
    publish(st, set);
    return 0;
}

/* The set in force of cl, with a reference (see cluster.h). */
sk_endpoint_set *sk_cluster_endpoints(const sk_cluster *cl)
{
    sk_cluster_state *st = cl->upstream;
    if (!st) return NULL;
    pthread_mutex_lock(&st->lock);
    sk_endpoint_set *s = st->set;
    sk_endpoint_set_ref(s);
    pthread_mutex_unlock(&st->lock);
    return s;
}

/* The version of the set in force of cl, 0 without upstream state. */
uint64_t sk_cluster_version(const sk_cluster *cl)
{
    const sk_cluster_state *st = cl->upstream;
    return st ? __atomic_load_n(&st->version, __ATOMIC_ACQUIRE) : 0;
}
