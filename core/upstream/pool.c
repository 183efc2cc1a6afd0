/*
 * pool.c — the per-thread keep-alive pool of each endpoint object of a
 * cluster: endpoint choice through the cluster's balancer, pools that
 * follow the cluster's endpoint set, idle connections taken most recently used first, and the
 * cluster's max_connections / max_pending limits on new connections.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "pool.h"
#include "tls.h"

static void pool_free(sk_pool *p)
{
    sk_endpoint_unref(p->endpoint);
    free(p);
}

/* A request leaves p (its attempt is over). */
static void pool_done(sk_pool *p)
{
    p->active--;
    __atomic_sub_fetch(&p->endpoint->active, 1, __ATOMIC_RELAXED);
}

/* An upstream connection of pool p closes: drop its counts (sk_upconn_owner). */
static void conn_closed(sk_upconn *u)
{
    sk_pool *p = u->owner_data;
    int state = SK_MG_CX_ACTIVE;
    if (!sk_list_empty(&u->link)) {
        sk_list_remove(&u->link);
        p->nidle--;
        state = SK_MG_CX_IDLE;
    }
    if (u->req) { /* closed under a request (an error): the request is gone from it */
        pool_done(p);
        sk_upconn_detach(u);
    }
    __atomic_sub_fetch(&p->cluster->active_connections, 1, __ATOMIC_RELAXED);
    sk_metrics_gauge(u->worker->metrics, p->cluster->metrics_row, state, -1);
    if (--p->conns == 0 && p->orphan && p->active == 0) pool_free(p);
}

static const sk_upconn_owner pool_owner = {.closed = conn_closed};

/* Closes the idle connections of p. Returns true when that freed p. */
static bool close_idle(sk_pool *p)
{
    while (!sk_list_empty(&p->idle)) {
        bool last = p->conns == 1 && p->active == 0 && p->orphan;
        sk_upconn_close(SK_CONTAINER(p->idle.next, sk_upconn, link));
        if (last) return true;
    }
    return false;
}

static int cmp_pool(const void *a, const void *b)
{
    const sk_endpoint *x = (*(sk_pool *const *)a)->endpoint, *y = (*(sk_pool *const *)b)->endpoint;
    return (x > y) - (x < y);
}

/* The pool of `sorted` (n, by endpoint pointer) serving e, or NULL. */
static sk_pool *find_pool(sk_pool **sorted, size_t n, const sk_endpoint *e)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const sk_endpoint *m = sorted[mid]->endpoint;
        if (m == e) return sorted[mid];
        if (e < m)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* Makes the thread's pools match the cluster's endpoint set in force when
 * it changed: the pool of an endpoint object that stays is kept (with its
 * idle connections), a new endpoint gets a pool, the pools of endpoints
 * that left are orphaned: their idle connections close and they are freed
 * with their last connection. Returns 0, or -1 on OOM or when the cluster
 * has no set (the old set stays). */
static int adopt_endpoints(sk_cluster *cl, sk_wcluster *wc, sk_wctx *w)
{
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    if (!set) return -1;
    size_t n = set->n;
    sk_pool **pools = calloc(n ? n : 1, sizeof(*pools));
    sk_pool **sorted = calloc(wc->npools ? wc->npools : 1, sizeof(*sorted));
    /* the weights may have changed with the set: smooth round robin starts over */
    int64_t *current = calloc(n ? n : 1, sizeof(*current));
    bool ok = pools && sorted && current;
    if (ok) {
        if (wc->npools) memcpy(sorted, wc->pools, wc->npools * sizeof(*sorted));
        qsort(sorted, wc->npools, sizeof(*sorted), cmp_pool);
    }
    for (size_t i = 0; ok && i < n; i++) {
        sk_pool *p = find_pool(sorted, wc->npools, set->eps[i]);
        if (p) {
            p->kept = true;
        } else if ((p = calloc(1, sizeof(*p))) != NULL) {
            sk_list_init(&p->idle);
            p->cluster = cl;
            p->endpoint = set->eps[i];
            sk_endpoint_ref(p->endpoint);
        } else {
            ok = false;
            break;
        }
        pools[i] = p;
    }
    free(sorted);
    if (!ok) {
        /* the old pools stay as they are; the new ones go */
        for (size_t i = 0; pools && i < n && pools[i]; i++) {
            if (pools[i]->kept)
                pools[i]->kept = false;
            else
                pool_free(pools[i]);
        }
        free(pools);
        free(current);
        sk_endpoint_set_unref(set);
        return -1;
    }
    for (size_t j = 0; j < wc->npools; j++) {
        sk_pool *p = wc->pools[j];
        if (p->kept) {
            p->kept = false;
            continue;
        }
        p->orphan = true;
        if (p->conns == 0 && p->active == 0) {
            pool_free(p);
            continue;
        }
        close_idle(p); /* closing the last idle connection of an unused pool frees it */
    }
    free(wc->pools);
    wc->pools = pools;
    wc->npools = n;
    free(wc->rr_current);
    wc->rr_current = current;
    sk_endpoint_set_unref(wc->set);
    wc->set = set;
    sk_debug("worker %d: cluster %s now has %zu endpoint(s)", w->id, cl->name, n);
    return 0;
}

/* Initialises a thread's cluster state. */
void sk_wcluster_init(sk_wcluster *wc, uint32_t rr_start)
{
    memset(wc, 0, sizeof(*wc)); /* pools are made from the endpoint set at first use */
    wc->rr = rr_start;
}

/* Picks the pool of an endpoint of cl through the cluster's balancer,
 * adopting a changed endpoint set first. NULL when the cluster has no
 * endpoint. */
sk_pool *sk_cluster_pick(sk_wctx *w, sk_cluster *cl, sk_balance_ctx *ctx)
{
    sk_wcluster *wc = w->cluster_state(w, cl);
    if (!wc) return NULL;
    if (!wc->set || sk_cluster_version(cl) != wc->set->version) adopt_endpoints(cl, wc, w);
    if (!wc->set) return NULL;
    ctx->w = w;
    ctx->cursor = &wc->rr;
    ctx->rr_current = wc->rr_current;
    if (!sk_balancer_get(cl->lb)->pick(wc->set, ctx)) return NULL;
    return wc->pools[ctx->picked];
}

/* Takes a pooled or new connection of p (see pool.h). */
sk_upconn *sk_pool_get(sk_wctx *w, sk_pool *p, int *got)
{
    sk_cluster *cl = p->cluster;
    sk_upconn *u;
    if (!sk_list_empty(&p->idle)) {
        sk_link *l = p->idle.next;
        sk_list_remove(l);
        p->nidle--;
        u = SK_CONTAINER(l, sk_upconn, link);
        sk_upconn_unpark(u);
        sk_metrics_gauge(w->metrics, cl->metrics_row, SK_MG_CX_IDLE, -1);
        sk_metrics_gauge(w->metrics, cl->metrics_row, SK_MG_CX_ACTIVE, 1);
        sk_metrics_count(w->metrics, cl->metrics_row, SK_MC_CX_REUSED);
        *got = SK_POOL_REUSED;
    } else {
        if (__atomic_add_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED) > cl->max_connections) {
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            sk_metrics_count(w->metrics, cl->metrics_row, SK_MC_OVERFLOW_CONNECTIONS);
            *got = SK_POOL_OVERLOADED;
            return NULL;
        }
        /* max_pending: requests waiting for a new connection to come up. */
        if (__atomic_add_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED) > cl->max_pending) {
            __atomic_sub_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED);
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            sk_metrics_count(w->metrics, cl->metrics_row, SK_MC_OVERFLOW_PENDING);
            *got = SK_POOL_OVERLOADED;
            return NULL;
        }
        const sk_addr *a = &p->endpoint->address;
        void *tls = NULL;
        if (cl->tls && !(tls = sk_tls_slot_conn(cl->tls->state, false, -1, w->metrics))) errno = ENOMEM;
        u = !cl->tls || tls
                ? sk_upconn_open(w, (const struct sockaddr *)&a->ss, a->len, a->text, cl->connect_timeout_ms,
                                 tls ? &sk_tls_ops : NULL, tls, &pool_owner, p)
                : NULL;
        if (!u) {
            sk_debug("connect to %s: %s", a->text, strerror(errno));
            __atomic_sub_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED);
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            *got = SK_POOL_FAILED;
            return NULL;
        }
        sk_metrics_count(w->metrics, cl->metrics_row, SK_MC_CX_CREATED);
        sk_metrics_gauge(w->metrics, cl->metrics_row, SK_MG_CX_ACTIVE, 1);
        p->conns++;
        if (u->connected) {
            __atomic_sub_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED);
            *got = SK_POOL_CONNECTED;
        } else {
            *got = SK_POOL_CONNECTING; /* the caller gives the max_pending slot back when it is up */
        }
    }
    p->active++;
    __atomic_add_fetch(&p->endpoint->active, 1, __ATOMIC_RELAXED);
    return u;
}

/* The request is done with u: back to the pool (reuse) or closed. */
void sk_pool_put(sk_upconn *u, bool reuse)
{
    sk_pool *p = u->owner_data;
    if (u->req) {
        pool_done(p);
        sk_upconn_detach(u);
    }
    if (!reuse || p->orphan || p->retired || u->worker->draining || !sk_upconn_reusable(u)) {
        sk_upconn_close(u);
        return;
    }
    sk_upconn_park(u, SK_UPSTREAM_IDLE_MS);
    sk_list_insert(&p->idle, &u->link);
    p->nidle++;
    sk_metrics_gauge(u->worker->metrics, p->cluster->metrics_row, SK_MG_CX_ACTIVE, -1);
    sk_metrics_gauge(u->worker->metrics, p->cluster->metrics_row, SK_MG_CX_IDLE, 1);
}

/* Frees the pools of cluster states: idle connections close; a pool still
 * counting a connection is orphaned and freed with it. */
void sk_pools_free(sk_wcluster *wcs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sk_wcluster *wc = &wcs[i];
        for (size_t j = 0; j < wc->npools; j++) {
            sk_pool *p = wc->pools[j];
            p->orphan = true;
            bool freed = close_idle(p);
            if (!freed && p->conns == 0 && p->active == 0) pool_free(p);
        }
        free(wc->pools);
        wc->pools = NULL;
        wc->npools = 0;
        free(wc->rr_current);
        wc->rr_current = NULL;
        sk_endpoint_set_unref(wc->set);
        wc->set = NULL;
    }
}

/* Closes the idle connections of cluster states (the pools stay). */
void sk_pools_close_idle(sk_wcluster *wcs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < wcs[i].npools; j++) close_idle(wcs[i].pools[j]);
}

/* Retires cluster states: no connection goes back idle any more. */
void sk_pools_retire(sk_wcluster *wcs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < wcs[i].npools; j++) wcs[i].pools[j]->retired = true;
    sk_pools_close_idle(wcs, n);
}
