/*
 * out.c — sk_out, the write queue towards one transport: pieces by
 * reference or by copy, one writev per flush, the rest copied aside.
 */
#include <errno.h>
#include <string.h>

#include "out.h"

/* Queues a piece by reference; falls back to copying when the iov is full. */
int sk_out_ref(sk_out *o, const void *p, size_t n)
{
    if (n == 0) return 0;
    if (o->niov == SK_OUT_IOV && sk_out_detach(o) < 0) return -1;
    o->iov[o->niov].iov_base = (void *)p;
    o->iov[o->niov].iov_len = n;
    o->niov++;
    o->iov_bytes += n;
    return 0;
}

/* Queues a copy: small pieces go to scratch, larger ones to the backlog. */
int sk_out_copy(sk_out *o, const void *p, size_t n)
{
    if (n == 0) return 0;
    if (n <= sizeof(o->scratch) - o->scratch_len && o->niov < SK_OUT_IOV) {
        char *dst = o->scratch + o->scratch_len;
        memcpy(dst, p, n);
        o->scratch_len += n;
        return sk_out_ref(o, dst, n);
    }
    if (sk_out_detach(o) < 0) return -1;
    return sk_buf_append(&o->backlog, p, n);
}

/* Copies the referenced pieces into the backlog and empties the iov. */
int sk_out_detach(sk_out *o)
{
    for (int i = 0; i < o->niov; i++)
        if (sk_buf_append(&o->backlog, o->iov[i].iov_base, o->iov[i].iov_len) < 0) return -1;
    o->niov = 0;
    o->iov_bytes = 0;
    o->scratch_len = 0;
    return 0;
}

/* Writes backlog and pieces with one writev; keeps the rest in the backlog. */
int sk_out_flush(sk_out *o, sk_transport *t)
{
    if (t == NULL || t->fd < 0) return sk_out_detach(o);
    while (sk_out_pending(o) > 0) {
        struct iovec iov[SK_OUT_IOV + 1];
        int n = 0;
        size_t blen = sk_buf_pending(&o->backlog);
        if (blen) {
            iov[n].iov_base = o->backlog.data + o->backlog.off;
            iov[n].iov_len = blen;
            n++;
        }
        memcpy(iov + n, o->iov, sizeof(struct iovec) * (size_t)o->niov);
        n += o->niov;
        ssize_t w = t->ops->writev(t, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        size_t done = (size_t)w;
        size_t fromb = SK_MIN(done, blen);
        sk_buf_consume(&o->backlog, fromb);
        done -= fromb;
        int i = 0;
        while (i < o->niov && done >= o->iov[i].iov_len) {
            done -= o->iov[i].iov_len;
            o->iov_bytes -= o->iov[i].iov_len;
            i++;
        }
        if (i < o->niov && done > 0) {
            o->iov[i].iov_base = (char *)o->iov[i].iov_base + done;
            o->iov[i].iov_len -= done;
            o->iov_bytes -= done;
        }
        memmove(o->iov, o->iov + i, sizeof(struct iovec) * (size_t)(o->niov - i));
        o->niov -= i;
        if (o->niov == 0) o->scratch_len = 0;
    }
    return sk_out_detach(o);
}

/* Drops everything queued. */
void sk_out_clear(sk_out *o)
{
    sk_buf_reset(&o->backlog);
    o->niov = 0;
    o->iov_bytes = 0;
    o->scratch_len = 0;
}

/* Frees the backlog storage. */
void sk_out_free(sk_out *o)
{
    sk_out_clear(o);
    sk_buf_free(&o->backlog);
}
