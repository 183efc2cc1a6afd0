/*
 * wctx.c — per-thread services of the layers below the runtime: random
 * numbers, read-buffer recycling and deferred frees.
 */
#include <stdlib.h>

#include "wctx.h"

/* Returns the next xorshift64* value. */
uint32_t sk_wctx_rand(sk_wctx *w)
{
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

/* Takes a read buffer from the free list, or allocates one. */
char *sk_wctx_buf_get(sk_wctx *w)
{
    if (w->nfree_bufs > 0) return w->free_bufs[--w->nfree_bufs];
    return malloc(SK_READ_BUF);
}

/* Returns a read buffer to the free list (at most 64 kept), or frees it. */
void sk_wctx_buf_put(sk_wctx *w, char *buf)
{
    if (!buf) return;
    if (w->nfree_bufs < 64) {
        if (w->nfree_bufs == w->free_bufs_cap) {
            size_t cap = w->free_bufs_cap ? w->free_bufs_cap * 2 : 16;
            char **p = realloc(w->free_bufs, cap * sizeof(*p));
            if (!p) {
                free(buf);
                return;
            }
            w->free_bufs = p;
            w->free_bufs_cap = cap;
        }
        w->free_bufs[w->nfree_bufs++] = buf;
        return;
    }
    free(buf);
}

/* Queues fn(p) for the next safe point. */
void sk_wctx_defer(sk_wctx *w, void (*fn)(void *), void *p)
{
    if (w->ndead == w->dead_cap) {
        size_t cap = w->dead_cap ? w->dead_cap * 2 : 64;
        sk_deferred *d = realloc(w->dead, cap * sizeof(*d));
        if (!d) {
            /* Cannot defer: leak it rather than risk a use-after-free. */
            sk_error("out of memory deferring a free");
            return;
        }
        w->dead = d;
        w->dead_cap = cap;
    }
    w->dead[w->ndead].fn = fn;
    w->dead[w->ndead].p = p;
    w->ndead++;
}

/* Runs the deferred frees, including any queued while running them. */
void sk_wctx_reap(sk_wctx *w)
{
    for (size_t i = 0; i < w->ndead; i++) w->dead[i].fn(w->dead[i].p);
    w->ndead = 0;
}

/* Frees the thread's buffers and lists. */
void sk_wctx_free(sk_wctx *w)
{
    sk_wctx_reap(w);
    for (size_t i = 0; i < w->nfree_bufs; i++) free(w->free_bufs[i]);
    free(w->free_bufs);
    free(w->dead);
    w->free_bufs = NULL;
    w->dead = NULL;
    w->nfree_bufs = w->free_bufs_cap = w->ndead = w->dead_cap = 0;
}
