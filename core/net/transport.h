/*
 * transport.h — the byte-stream layer under every connection.
 *
 * HTTP code never calls read(2)/writev(2) itself: it goes through an
 * sk_transport, so that TLS (wolfSSL) can be slotted under a connection
 * later without touching the codecs. Plain TCP is the only transport today.
 */
#ifndef SK_TRANSPORT_H
#define SK_TRANSPORT_H

#include <sys/uio.h>

#include "sk.h"

typedef struct sk_transport sk_transport;

typedef struct sk_transport_ops {
    /* Reads up to len bytes. Returns >0 bytes, 0 at EOF, -1 with errno
     * (EAGAIN when nothing is available). */
    ssize_t (*read)(sk_transport *t, void *buf, size_t len);
    /* Writes from iov. Returns bytes written (may be partial), or -1 with
     * errno (EAGAIN when the socket buffer is full). */
    ssize_t (*writev)(sk_transport *t, const struct iovec *iov, int iovcnt);
    /* Shuts the write side (half close); may be a no-op. */
    void (*shutdown)(sk_transport *t);
    /* Closes the transport and its fd. */
    void (*close)(sk_transport *t);
} sk_transport_ops;

struct sk_transport {
    const sk_transport_ops *ops; /* the implementation (static storage) */
    int fd;                      /* the socket; -1 once closed */
    void *ctx;                   /* implementation data (TLS session), owned by ops */
};

/* Initialises t as a plain TCP transport over fd (which it then owns). */
void sk_transport_plain(sk_transport *t, int fd);

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
