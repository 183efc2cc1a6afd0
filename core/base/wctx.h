/*
 * wctx.h — what the layers below the runtime need of the thread they run
 * on: its loop, its metrics, a random number source, recycled read buffers,
 * the drain flag, and frees deferred to a safe point of the loop (never
 * free an object inside its own callback: libuv's uv_close, Redis'
 * freeClientAsync).
 *
 * sk_worker (runtime/worker.h) starts with these fields, so a codec or a
 * pool holds an sk_wctx * and never sees workers, generations or listeners
 * of the runtime.
 */
#ifndef SK_WCTX_H
#define SK_WCTX_H

#include <ev.h>

#include "list.h"
#include "sk.h"

#define SK_READ_BUF 32768 /* bytes of one read buffer */

struct sk_metrics;

/* A free deferred to the next safe point. */
typedef struct sk_deferred {
    void (*fn)(void *p);
    void *p;
} sk_deferred;

#define SK_WCTX_FIELDS                                                                     \
    int id;                     /* worker number 0..n-1 */                                 \
    struct ev_loop *loop;       /* the thread's loop */                                    \
    struct sk_metrics *metrics; /* counters, written only by this thread */                \
    bool draining;              /* shutting down: no new work, close after responses */    \
    uint64_t rng;               /* xorshift64* state, never 0 */                           \
    char **free_bufs;           /* recycled read buffers (SK_READ_BUF bytes each) */       \
    size_t nfree_bufs, free_bufs_cap;                                                      \
    sk_deferred *dead; /* frees due at the next safe point */                              \
    size_t ndead, dead_cap;                                                                \
    sk_link free_reqs; /* recycled requests (proxy/request.c) */                           \
    int accesslog_fd;  /* where access log lines go, -1 when off */                        \
    sk_buf logline;    /* the access log line being built */                               \
    /* this thread's state of a cluster (upstream/pool.h sk_wcluster), set by the runtime, \
     * which keeps one per cluster of every generation the thread still uses */            \
    void *(*cluster_state)(struct sk_wctx * w, const void *cluster);

typedef struct sk_wctx {
    SK_WCTX_FIELDS
} sk_wctx;

/* The next pseudo-random number of the thread. */
uint32_t sk_wctx_rand(sk_wctx *w);
/* A read buffer of SK_READ_BUF bytes (recycled or new), or NULL on OOM. */
char *sk_wctx_buf_get(sk_wctx *w);
/* Gives a read buffer back (NULL is ignored). */
void sk_wctx_buf_put(sk_wctx *w, char *buf);
/* Calls fn(p) at the next safe point of the loop (sk_wctx_reap). On OOM it
 * leaks p rather than freeing it under a caller that may still use it. */
void sk_wctx_defer(sk_wctx *w, void (*fn)(void *), void *p);
/* Runs the deferred frees (from an ev_prepare watcher, and at exit). */
void sk_wctx_reap(sk_wctx *w);
/* Releases the buffers and the deferred list (thread exit, after a reap). */
void sk_wctx_free(sk_wctx *w);

#endif
