/*
 * out.h — sk_out, output towards one transport (out.c).
 */
#ifndef SK_OUT_H
#define SK_OUT_H

#include <sys/uio.h>

#include "sk.h"
#include "transport.h"

#define SK_OUT_IOV 8

/*
 * sk_out — output towards one transport.
 *
 * Pieces are queued by reference (sk_out_ref: zero-copy, the memory must
 * stay valid until the next sk_out_flush) or by copy. sk_out_flush() writes
 * the backlog and the referenced pieces with one writev and copies whatever
 * the socket did not take into the backlog, so no reference outlives the
 * event handler that made it.
 */
typedef struct sk_out {
    sk_buf backlog;                /* bytes that must go first (already copied) */
    struct iovec iov[SK_OUT_IOV];  /* referenced pieces after the backlog */
    int niov;                      /* number of pieces */
    size_t iov_bytes;              /* total bytes in iov */
    char scratch[SK_OUT_IOV * 12]; /* small copied pieces (chunk headers) */
    size_t scratch_len;            /* bytes used in scratch */
} sk_out;

/* Queues n bytes at p by reference. Returns 0 or -1 on OOM. */
int sk_out_ref(sk_out *o, const void *p, size_t n);
/* Queues a copy of n bytes. Returns 0 or -1 on OOM. */
int sk_out_copy(sk_out *o, const void *p, size_t n);
/* Bytes queued in total (backlog + pieces). */
static inline size_t sk_out_pending(const sk_out *o)
{
    return sk_buf_pending(&o->backlog) + o->iov_bytes;
}
/*
 * Writes what it can to t (t may be NULL: not connected yet, copy only).
 * Returns 0, or -1 with errno on a write error (the connection is dead).
 */
int sk_out_flush(sk_out *o, sk_transport *t);
/* Moves all referenced pieces into the backlog (before their memory goes). */
int sk_out_detach(sk_out *o);
/* Drops everything queued. */
void sk_out_clear(sk_out *o);
/* Frees the backlog storage. */
void sk_out_free(sk_out *o);

#endif
