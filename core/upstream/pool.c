/*
 * pool.c — the per-thread keep-alive pool of each (cluster, endpoint):
 * endpoint choice by the cluster's lb, pools that follow the cluster's
 * endpoint set, idle connections taken most recently used first, and the
 * cluster's max_connections / max_pending limits on new connections.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "pool.h"

static void pool_free(sk_pool *p)
{
    free(p);
}

/* An upstream connection of pool p closes: drop its counts (sk_upconn_owner). */
static void conn_closed(sk_upconn *u)
{
    sk_pool *p = u->owner_data;
    if (!sk_list_empty(&u->link)) {
        sk_list_remove(&u->link);
        p->nidle--;
    }
    if (u->req) { /* closed under a request (an error): the request is gone from it */
        p->active--;
        sk_upconn_detach(u);
    }
    __atomic_sub_fetch(&p->cluster->active_connections, 1, __ATOMIC_RELAXED);
    SK_DEC(u->worker->metrics->upstream_active);
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

/* Makes the thread's pools match the cluster's endpoint set when discovery
 * changed it: pools of endpoints that stay are kept (with their idle
 * connections), new endpoints get a pool, pools of endpoints that left are
 * orphaned: their idle connections close and they are freed with their
 * last connection. Returns 0, or -1 on OOM (the old set stays). */
static int adopt_endpoints(sk_cluster *cl, sk_wcluster *wc, sk_wctx *w)
{
    pthread_mutex_lock(&cl->eps_lock);
    uint64_t version = __atomic_load_n(&cl->eps_version, __ATOMIC_ACQUIRE);
    size_t n = cl->neps;
    sk_pool **pools = calloc(n ? n : 1, sizeof(*pools));
    bool ok = pools != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        const sk_addr *a = &cl->eps[i];
        for (size_t j = 0; j < wc->npools && !pools[i]; j++) {
            if (wc->pools[j] && strcmp(wc->pools[j]->endpoint.address.text, a->text) == 0) {
                pools[i] = wc->pools[j];
                wc->pools[j] = NULL;
            }
        }
        if (!pools[i]) {
            if (!(pools[i] = calloc(1, sizeof(sk_pool)))) {
                ok = false;
                break;
            }
            sk_list_init(&pools[i]->idle);
            pools[i]->cluster = cl;
            pools[i]->endpoint.address = *a;
        }
    }
    pthread_mutex_unlock(&cl->eps_lock);
    if (!ok) {
        /* put the pools taken from the old set back; free the new ones */
        for (size_t i = 0; pools && i < n; i++) {
            if (!pools[i]) continue;
            bool back = false;
            for (size_t j = 0; j < wc->npools && !back; j++)
                if (!wc->pools[j] && pools[i]->endpoint.index == (int)j) wc->pools[j] = pools[i], back = true;
            if (!back && pools[i]->conns == 0 && pools[i]->active == 0) free(pools[i]);
        }
        free(pools);
        return -1;
    }
    for (size_t j = 0; j < wc->npools; j++) {
        sk_pool *p = wc->pools[j];
        if (!p) continue;
        p->orphan = true;
        if (p->conns == 0 && p->active == 0) {
            pool_free(p);
            continue;
        }
        close_idle(p); /* closing the last idle connection of an unused pool frees it */
    }
    for (size_t i = 0; i < n; i++) pools[i]->endpoint.index = (int)i;
    free(wc->pools);
    wc->pools = pools;
    wc->npools = n;
    wc->version = version;
    sk_debug("worker %d: cluster %s now has %zu endpoint(s)", w->id, cl->name, n);
    return 0;
}

/* Initialises a thread's cluster state. */
void sk_wcluster_init(sk_wcluster *wc, uint32_t rr_start)
{
    memset(wc, 0, sizeof(*wc));
    wc->version = UINT64_MAX; /* pools are made from the endpoint set at first use */
    wc->rr = rr_start;
}

/* Picks the pool of an endpoint of cl by the cluster's lb policy, adopting
 * a changed endpoint set first. NULL when the cluster has no endpoint. */
sk_pool *sk_cluster_pick(sk_wctx *w, sk_cluster *cl, const sk_pool *avoid)
{
    sk_wcluster *wc = w->cluster_state(w, cl);
    if (!wc) return NULL;
    if (__atomic_load_n(&cl->eps_version, __ATOMIC_ACQUIRE) != wc->version) adopt_endpoints(cl, wc, w);
    size_t n = wc->npools;
    if (n == 0) return NULL;
    if (n == 1) return wc->pools[0];
    switch (cl->lb) {
    case SK_LB_RANDOM: return wc->pools[sk_wctx_rand(w) % n];
    case SK_LB_LEAST_REQUEST: {
        /* power of two choices over this thread's in-flight counts */
        size_t a = sk_wctx_rand(w) % n, b = sk_wctx_rand(w) % n;
        if (a == b) b = (a + 1) % n;
        if (avoid && wc->pools[a] == avoid) a = b;
        return wc->pools[wc->pools[a]->active <= wc->pools[b]->active ? a : b];
    }
    default: return wc->pools[wc->rr++ % n];
    }
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
        SK_INC(w->metrics->upstream_reused);
        *got = SK_POOL_REUSED;
    } else {
        if (__atomic_add_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED) > cl->max_connections) {
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            *got = SK_POOL_OVERLOADED;
            return NULL;
        }
        /* max_pending: requests waiting for a new connection to come up. */
        if (__atomic_add_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED) > cl->max_pending) {
            __atomic_sub_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED);
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            *got = SK_POOL_OVERLOADED;
            return NULL;
        }
        SK_INC(w->metrics->upstream_opened);
        const sk_addr *a = &p->endpoint.address;
        u = sk_upconn_open(w, (const struct sockaddr *)&a->ss, a->len, a->text, cl->connect_timeout_ms,
                           &pool_owner, p);
        if (!u) {
            sk_debug("connect to %s: %s", a->text, strerror(errno));
            __atomic_sub_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED);
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            *got = SK_POOL_FAILED;
            return NULL;
        }
        SK_INC(w->metrics->upstream_active);
        p->conns++;
        if (u->connected) {
            __atomic_sub_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED);
            *got = SK_POOL_CONNECTED;
        } else {
            *got = SK_POOL_CONNECTING; /* the caller gives the max_pending slot back when it is up */
        }
    }
    p->active++;
    return u;
}

/* The request is done with u: back to the pool (reuse) or closed. */
void sk_pool_put(sk_upconn *u, bool reuse)
{
    sk_pool *p = u->owner_data;
    if (u->req) {
        p->active--;
        sk_upconn_detach(u);
    }
    if (!reuse || p->orphan || p->retired || u->worker->draining || !sk_upconn_reusable(u)) {
        sk_upconn_close(u);
        return;
    }
    sk_upconn_park(u, SK_UPSTREAM_IDLE_MS);
    sk_list_insert(&p->idle, &u->link);
    p->nidle++;
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
