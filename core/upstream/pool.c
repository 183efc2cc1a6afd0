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
    /* the view: a set of capacity n (eps, cum, weights as make_set lays them out), positions, usable */
    sk_endpoint_set *view =
        calloc(1, sizeof(*view) + n * (sizeof(view->eps[0]) + sizeof(uint64_t) + sizeof(uint32_t)));
    size_t *view_pos = calloc(n ? n : 1, sizeof(*view_pos));
    bool *usable = calloc(n ? n : 1, sizeof(*usable));
    bool ok = pools && sorted && current && view && view_pos && usable;
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
        free(view);
        free(view_pos);
        free(usable);
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
    free(wc->view);
    free(wc->view_pos);
    free(wc->usable);
    view->refcnt = 1; /* never shared: freed with free() */
    view->cum = (uint64_t *)(void *)(view->eps + n);
    view->weights = (uint32_t *)(void *)((uint64_t *)(void *)(view->eps + n) + n);
    memcpy(view->source, set->source, sizeof(view->source));
    view->version = set->version;
    wc->view = view;
    wc->view_pos = view_pos;
    wc->usable = usable;
    wc->view_made = false;
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

/* Whether the thread's view of cl must be remade: never made for this
 * set, the cluster's health changed, or its time came. The common case
 * (nothing ejected, ramping or changed) reads one shared counter and no
 * clock. */
static bool view_stale(const sk_cluster *cl, const sk_wcluster *wc)
{
    const sk_cluster_state *st = cl->upstream;
    return !wc->view_made || (st && __atomic_load_n(&st->health_gen, __ATOMIC_ACQUIRE) != wc->view_gen) ||
           (wc->view_until_ms != UINT64_MAX && sk_now_ms() >= wc->view_until_ms);
}

/* Slow start moves the effective weights on in steps of this much of
 * slow_start (at least 50 ms). */
#define RAMP_STEPS 20

/*
 * Works out which endpoints of the adopted set may get traffic now and at
 * what weight: the usable ones (not unhealthy, not ejected), or all of them
 * when the cluster is in panic; each weight times its slow-start ramp
 * (scaled by 100 so that ramping endpoints of weight 1 move in steps). When
 * every endpoint is in at its full weight the balancer gets the adopted set
 * itself (view_active off). When the next change is due by time alone (an
 * ejection ending, a ramp step) view_until_ms says when.
 */
static void refresh_view(sk_cluster *cl, sk_wcluster *wc)
{
    const sk_cluster_state *st = cl->upstream;
    const sk_endpoint_set *set = wc->set;
    uint64_t gen = st ? __atomic_load_n(&st->health_gen, __ATOMIC_ACQUIRE) : 0;
    uint64_t now = sk_now_ms(), until = UINT64_MAX;
    size_t nusable;
    bool panic = sk_cluster_check_panic(cl, set, now, &nusable), ramping = false;
    uint64_t step = cl->slow_start_ms / RAMP_STEPS < 50 ? 50 : cl->slow_start_ms / RAMP_STEPS;
    for (size_t i = 0; i < set->n; i++) {
        const sk_endpoint *e = set->eps[i];
        wc->usable[i] = panic || sk_endpoint_usable(e, now);
        uint64_t end = __atomic_load_n(&e->ejected_until_ms, __ATOMIC_ACQUIRE);
        if (end > now && end < until) until = end;
        if (sk_endpoint_ramp(cl, e, now) < 1.) {
            ramping = true;
            if (now + step < until) until = now + step;
        }
    }
    bool all = nusable == set->n || panic;
    wc->view_active = !all || ramping;
    wc->view_made = true;
    wc->view_gen = gen;
    wc->view_until_ms = until;
    if (!wc->view_active) return;
    /* the worker-local set: the adopted set's layout (cluster.c make_set), filled in place */
    sk_endpoint_set *v = wc->view;
    uint32_t *w = (uint32_t *)v->weights;
    uint64_t *cum = (uint64_t *)v->cum;
    uint64_t scale = ramping && set->total_weight < (UINT32_MAX / 100) ? 100 : 1;
    v->n = 0;
    v->total_weight = 0;
    v->uniform = true;
    for (size_t i = 0; i < set->n; i++) {
        if (!wc->usable[i]) continue;
        double ramp = ramping ? sk_endpoint_ramp(cl, set->eps[i], now) : 1.;
        uint64_t wi = (uint64_t)((double)(set->weights[i] * scale) * ramp + 0.5);
        if (wi < 1) wi = 1;
        if (v->n && wi != w[0]) v->uniform = false;
        w[v->n] = (uint32_t)wi;
        v->total_weight += wi;
        cum[v->n] = v->total_weight;
        wc->view_pos[v->n] = i;
        v->eps[v->n++] = set->eps[i];
    }
    /* positions and weights changed: smooth round robin starts over */
    memset(wc->rr_current, 0, (wc->npools ? wc->npools : 1) * sizeof(*wc->rr_current));
}

/* Picks the pool of an endpoint of cl through the cluster's balancer,
 * adopting a changed endpoint set and remaking the usable view first.
 * ring_hash with a key walks the adopted set's ring (skipping what may not
 * be picked); without one it is round robin. NULL when no endpoint may get
 * traffic. */
sk_pool *sk_cluster_pick(sk_wctx *w, sk_cluster *cl, sk_balance_ctx *ctx)
{
    sk_wcluster *wc = w->cluster_state(w, cl);
    if (!wc) return NULL;
    if (!wc->set || sk_cluster_version(cl) != wc->set->version) adopt_endpoints(cl, wc, w);
    if (!wc->set) return NULL;
    if (view_stale(cl, wc)) refresh_view(cl, wc);
    ctx->w = w;
    ctx->cursor = &wc->rr;
    ctx->rr_current = wc->rr_current;
    ctx->usable = wc->view_active ? wc->usable : NULL;
    ctx->ewma_decay_ns = cl->ewma_decay_ms * 1000000;
    if (cl->lb == SK_LB_RING_HASH && ctx->hash_key_len && wc->set->ring) {
        if (!sk_balancer_ring_hash.pick(wc->set, ctx)) return NULL;
        return wc->pools[ctx->picked];
    }
    const sk_balancer *b = cl->lb == SK_LB_RING_HASH ? &sk_balancer_round_robin : sk_balancer_get(cl->lb);
    if (!b->pick(wc->view_active ? wc->view : wc->set, ctx)) return NULL;
    if (wc->view_active) ctx->picked = wc->view_pos[ctx->picked];
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
        free(wc->view);
        free(wc->view_pos);
        free(wc->usable);
        wc->view = NULL;
        wc->view_pos = NULL;
        wc->usable = NULL;
        wc->view_made = wc->view_active = false;
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
