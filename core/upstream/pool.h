/*
 * pool.h — per-thread keep-alive pools of upstream connections, one per
 * shared endpoint object (upstream/cluster.h) of a cluster, that follow the
 * cluster's endpoint set; endpoint choice through the cluster's balancer
 * (upstream/balancer.h); the circuit-breaker limits on connections.
 */
#ifndef SK_POOL_H
#define SK_POOL_H

#include "balancer.h"
#include "cluster.h"
#include "config.h"
#include "h1_client.h"
#include "list.h"
#include "wctx.h"

#define SK_UPSTREAM_IDLE_MS 60000 /* idle pooled upstream connections close after */

typedef struct sk_pool sk_pool;

/* Idle upstream connections of one (cluster, endpoint) on one thread. */
struct sk_pool {
    sk_link idle;          /* sk_upconn.link, most recently used first */
    size_t nidle;          /* number of idle connections */
    sk_cluster *cluster;   /* the cluster */
    sk_endpoint *endpoint; /* the endpoint it serves (a reference, dropped when the pool is freed) */
    unsigned active;       /* requests in flight to this endpoint on this thread */
    unsigned conns;        /* open connections (idle + in use) */
    bool orphan;           /* the endpoint left the cluster: freed when conns = 0 */
    bool retired;          /* its generation is no longer current: no idle connections */
    bool kept;             /* scratch of adopt_endpoints (pool.c) */
};

/* One thread's state of a cluster. */
typedef struct sk_wcluster {
    sk_endpoint_set *set; /* the adopted endpoint set (a reference), NULL = none yet */
    sk_pool **pools;      /* pools[i] serves set->eps[i] */
    size_t npools;        /* number of pools (= set->n) */
    uint32_t rr;          /* round-robin cursor */
    int64_t *rr_current;  /* smooth weighted round-robin state, [npools], zeroed with each adopted set
                           * and each remade view */
    /* Which endpoints may get traffic now, and at what weight (pool.c
     * refresh_view): remade when the cluster's health_gen moves, at
     * view_until_ms, and with each adopted set. */
    sk_endpoint_set *view;  /* this thread's set of the usable endpoints (all of them in panic) with
                             * their effective (slow-start) weights, capacity npools; its eps are the
                             * adopted set's (not referenced); in use only when view_active */
    size_t *view_pos;       /* view->eps[k] is set->eps[view_pos[k]] */
    bool *usable;           /* usable[i]: set->eps[i] may get traffic (ring_hash walks over the rest) */
    bool view_active;       /* some endpoint is left out or weighted down: balance over `view` */
    bool view_made;         /* view, usable and view_active describe the adopted set */
    uint64_t view_gen;      /* the cluster's health_gen they were made at */
    uint64_t view_until_ms; /* remade at this sk_now_ms() (an ejection ends, slow start moves on);
                             * UINT64_MAX = only on a change */
} sk_wcluster;

/* Initialises a thread's state of a cluster (no pools until first use). */
void sk_wcluster_init(sk_wcluster *wc, uint32_t rr_start);
/* Picks an endpoint of cl through its balancer and returns the thread's
 * pool of it, adopting the cluster's endpoint set in force first if it
 * changed. ctx carries the request's hash key and endpoints to avoid; this
 * fills in the thread's part. NULL when the cluster has no endpoint. */
sk_pool *sk_cluster_pick(sk_wctx *w, sk_cluster *cl, sk_balance_ctx *ctx);

/* How sk_pool_get went. */
enum sk_pool_got {
    SK_POOL_REUSED = 0,      /* an idle connection */
    SK_POOL_CONNECTED = 1,   /* a new one, connected at once */
    SK_POOL_CONNECTING = 2,  /* a new one, connect in progress (holds a max_pending slot) */
    SK_POOL_OVERLOADED = -2, /* max_connections or max_pending reached */
    SK_POOL_FAILED = -1,     /* the connect failed at once */
};

/* Takes an idle connection of p, or opens one; counts the request as in
 * flight on p. *got says which (enum sk_pool_got); NULL on the failures. */
sk_upconn *sk_pool_get(sk_wctx *w, sk_pool *p, int *got);
/* A request is done with u: back to its pool (reuse) or closed. */
void sk_pool_put(sk_upconn *u, bool reuse);

/* Frees the pools of a thread's cluster states (a generation no request
 * of the thread uses any more, or exit). */
void sk_pools_free(sk_wcluster *wcs, size_t n);
/* A generation stops being current: its pools serve the requests already
 * on them, but connections close instead of going back idle. */
void sk_pools_retire(sk_wcluster *wcs, size_t n);
/* Closes the idle connections of these cluster states (drain, exit). */
void sk_pools_close_idle(sk_wcluster *wcs, size_t n);

#endif
