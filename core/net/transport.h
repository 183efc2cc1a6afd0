/*
 * transport.h — the byte stream under every connection.
 *
 * A transport owns the socket: the fd, its read/write watchers on the
 * owner's loop, a non-blocking connect with its timeout, and (for TLS) the
 * handshake. Its owner — a codec, the TCP relay — never touches the fd: it
 * says what it wants (want_read / want_write) and gets events through the
 * callbacks it registered, as Redis' connection.c does. For plain TCP an
 * event is an fd readiness; for TLS it is not (a read may need the socket to
 * be writable during a renegotiation, bytes may wait inside the TLS
 * library), so a TLS transport is one more sk_transport_ops and the codecs
 * do not change.
 *
 * Threads: a transport lives on one loop (one worker or the main thread).
 */
#ifndef SK_TRANSPORT_H
#define SK_TRANSPORT_H

#include <ev.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "sk.h"

typedef struct sk_transport sk_transport;

/* What a transport tells its owner. Every callback gets the transport; the
 * owner finds itself in t->data. A callback may close the transport. */
typedef struct sk_transport_cbs {
    /* Bytes, EOF or an error can be read now (read() will not block). */
    void (*on_readable)(sk_transport *t);
    /* Output can be written now (only while want_write is on). */
    void (*on_writable)(sk_transport *t);
    /* The connect started by sk_transport_connect() finished: err is 0, or
     * an errno value (ETIMEDOUT after the timeout). Handshakes of a secure
     * transport are part of it. NULL on accepted transports. */
    void (*on_connected)(sk_transport *t, int err);
} sk_transport_cbs;

/* One kind of transport (plain TCP today; TLS later). */
typedef struct sk_transport_ops {
    /* Reads up to len bytes. Returns >0 bytes, 0 at EOF, -1 with errno
     * (EAGAIN when nothing is available). */
    ssize_t (*read)(sk_transport *t, void *buf, size_t len);
    /* Writes from iov. Returns bytes written (may be partial), or -1 with
     * errno (EAGAIN when nothing more fits now). */
    ssize_t (*writev)(sk_transport *t, const struct iovec *iov, int iovcnt);
    /* Advances a handshake: 0 done, 1 in progress (it said what it waits
     * for with sk_transport_wait), -1 failed (errno). NULL: nothing to shake
     * hands about. The transport runs it before the owner hears anything:
     * on a connect before on_connected, on an accepted socket at the first
     * event after want_read. */
    int (*handshake)(sk_transport *t);
    /* Shuts the write side (half close); may be a no-op. */
    void (*shutdown)(sk_transport *t);
    /* Releases the implementation's state and closes the fd. */
    void (*close)(sk_transport *t);
} sk_transport_ops;

struct sk_transport {
    const sk_transport_ops *ops; /* the implementation (static storage) */
    const sk_transport_cbs *cbs; /* the owner's callbacks (static storage) */
    void *data;                  /* the owner */
    struct ev_loop *loop;        /* the loop the watchers run on */
    int fd;                      /* the socket; -1 once closed */
    void *ctx;                   /* implementation data (TLS session), owned by ops */
    ev_io rio, wio;              /* read / write readiness of fd */
    ev_timer *timer;             /* the connect timeout: the owner's timer, lent while connecting */
    void (*timer_cb)(struct ev_loop *, ev_timer *, int); /* the owner's callback of it, given back */
    void *timer_data;                                    /* the owner's data of it, given back */
    bool want_read;                                      /* the owner wants on_readable */
    bool want_write;                                     /* the owner wants on_writable */
    bool connecting;           /* sk_transport_connect() has not finished (connect and handshake) */
    bool handshaking;          /* the kind's handshake runs: events go to it, not to the owner */
    const char *alpn;          /* negotiated application protocol (static), NULL when none (plain TCP) */
    const char *peer_identity; /* verified peer identity (SPIFFE ID), NULL when none */
};

/*
 * Takes over an accepted, non-blocking socket fd on loop as a transport of
 * kind `ops` with its state `ctx` (NULL, NULL: plain TCP): sets TCP_NODELAY,
 * reports to cbs with t->data = data. Nothing is watched until the owner
 * asks (sk_transport_want_read); a kind with a handshake runs it then.
 */
void sk_transport_accept(sk_transport *t, struct ev_loop *loop, int fd, const sk_transport_ops *ops,
                         void *ctx, const sk_transport_cbs *cbs, void *data);

/*
 * Opens a non-blocking TCP connection to sa on loop, a transport of kind
 * `ops` with state `ctx` (NULL, NULL: plain TCP). Returns 1 when it is
 * connected at once (plain TCP only; on_connected is not called), 0 when it
 * is in progress (cbs->on_connected follows once the connect and the kind's
 * handshake are done, with ETIMEDOUT after timeout_ms, which covers both;
 * 0 = no timeout), -1 with errno when it failed at once (t is closed). `timer` is
 * an initialised timer of the owner's, idle while the connect runs (an idle
 * timeout it arms only later): the transport borrows it for the connect
 * timeout and gives it back stopped, with its callback and data, before
 * on_connected runs; so a transport carries no timer of its own.
 */
int sk_transport_connect(sk_transport *t, struct ev_loop *loop, const struct sockaddr *sa, socklen_t len,
                         uint64_t timeout_ms, ev_timer *timer, const sk_transport_ops *ops, void *ctx,
                         const sk_transport_cbs *cbs, void *data);

/* For a kind's handshake: the socket events it waits for (the owner's
 * wishes are put back when the handshake is done). */
void sk_transport_wait(sk_transport *t, bool read, bool write);

/* Turns on_readable / on_writable events on or off. */
void sk_transport_want_read(sk_transport *t, bool on);
void sk_transport_want_write(sk_transport *t, bool on);
/* Makes on_readable run at the next loop iteration even if no new byte
 * arrives (the owner has unparsed input of its own). */
void sk_transport_feed_read(sk_transport *t);

/* Reads / writes through the implementation (see sk_transport_ops). */
static inline ssize_t sk_transport_read(sk_transport *t, void *buf, size_t len)
{
    return t->ops->read(t, buf, len);
}
static inline ssize_t sk_transport_writev(sk_transport *t, const struct iovec *iov, int iovcnt)
{
    return t->ops->writev(t, iov, iovcnt);
}
/* Half-closes the write side. */
static inline void sk_transport_shutdown(sk_transport *t)
{
    t->ops->shutdown(t);
}
/* Stops every watcher and timer and closes the fd. Safe to call twice. */
void sk_transport_close(sk_transport *t);

#endif
