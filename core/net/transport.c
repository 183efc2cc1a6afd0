/*
 * transport.c — the socket, its watchers, a non-blocking connect with a
 * timeout, and the handshake of a secure transport kind, around the plain
 * TCP kind (the only one today).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport.h"

static ssize_t plain_read(sk_transport *t, void *buf, size_t len)
{
    ssize_t n;
    do {
        n = read(t->fd, buf, len);
    } while (n < 0 && errno == EINTR);
    return n;
}

static ssize_t plain_writev(sk_transport *t, const struct iovec *iov, int iovcnt)
{
    ssize_t n;
    do {
        n = writev(t->fd, iov, iovcnt);
    } while (n < 0 && errno == EINTR);
    return n;
}

static void plain_shutdown(sk_transport *t)
{
    if (t->fd >= 0) shutdown(t->fd, SHUT_WR);
}

static void plain_close(sk_transport *t)
{
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
}

static const sk_transport_ops plain_ops = {
    .read = plain_read,
    .writev = plain_writev,
    .shutdown = plain_shutdown,
    .close = plain_close,
};

/* Puts the watchers where the owner wants them (after a connect or a
 * handshake, which use them for themselves). */
static void apply_wants(sk_transport *t)
{
    if (t->want_read && !ev_is_active(&t->rio)) ev_io_start(t->loop, &t->rio);
    if (!t->want_read && ev_is_active(&t->rio)) ev_io_stop(t->loop, &t->rio);
    if (t->want_write && !ev_is_active(&t->wio)) ev_io_start(t->loop, &t->wio);
    if (!t->want_write && ev_is_active(&t->wio)) ev_io_stop(t->loop, &t->wio);
}

/* Gives the borrowed timer back to its owner, stopped. */
static void timer_return(sk_transport *t)
{
    if (!t->timer) return;
    ev_timer_stop(t->loop, t->timer);
    ev_set_cb(t->timer, t->timer_cb);
    t->timer->data = t->timer_data;
    t->timer = NULL;
}

/* Ends a connect (and its handshake): gives the timer back, reports err
 * (0 = connected). */
static void connect_done(sk_transport *t, int err)
{
    t->connecting = false;
    t->handshaking = false;
    timer_return(t);
    if (err) {
        ev_io_stop(t->loop, &t->rio);
        ev_io_stop(t->loop, &t->wio);
    } else {
        apply_wants(t);
    }
    t->cbs->on_connected(t, err);
}

/* Advances the handshake of a secure transport. When it is done, a
 * connecting transport reports on_connected; an accepted one hands over to
 * its owner, with an on_readable at once when the owner reads (bytes may
 * already wait inside the TLS library; a failed handshake shows as a read
 * error there). */
static void drive_handshake(sk_transport *t)
{
    int h = t->ops->handshake(t);
    if (h == 1) return; /* it waits for the socket (sk_transport_wait) */
    int err = h < 0 ? (errno ? errno : EPROTO) : 0;
    if (t->connecting) {
        connect_done(t, err);
        return;
    }
    t->handshaking = false;
    apply_wants(t);
    if (t->want_read || err) t->cbs->on_readable(t);
}

static void on_io_read(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_transport *t = io->data;
    if (t->handshaking) {
        drive_handshake(t);
        return;
    }
    t->cbs->on_readable(t);
}

static void on_io_write(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_transport *t = io->data;
    if (t->handshaking) {
        drive_handshake(t);
        return;
    }
    if (t->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (!err && t->ops->handshake) {
            t->handshaking = true; /* the connect timeout goes on: it covers the handshake */
            drive_handshake(t);
            return;
        }
        connect_done(t, err);
        return;
    }
    t->cbs->on_writable(t);
}

static void on_connect_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    sk_transport *t = w->data;
    connect_done(t, ETIMEDOUT);
}

/* Sets up t around fd with ops (plain TCP when NULL), watching nothing yet. */
static void init(sk_transport *t, struct ev_loop *loop, int fd, const sk_transport_ops *ops, void *ctx,
                 const sk_transport_cbs *cbs, void *data)
{
    memset(t, 0, sizeof(*t));
    t->ops = ops ? ops : &plain_ops;
    t->ctx = ctx;
    t->cbs = cbs;
    t->data = data;
    t->loop = loop;
    t->fd = fd;
    ev_io_init(&t->rio, on_io_read, fd, EV_READ);
    ev_io_init(&t->wio, on_io_write, fd, EV_WRITE);
    t->rio.data = t->wio.data = t;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Takes over an accepted socket (see transport.h). */
void sk_transport_accept(sk_transport *t, struct ev_loop *loop, int fd, const sk_transport_ops *ops,
                         void *ctx, const sk_transport_cbs *cbs, void *data)
{
    init(t, loop, fd, ops, ctx, cbs, data);
    /* the handshake runs at the first event the owner's want_read brings */
    t->handshaking = t->ops->handshake != NULL;
}

/* Starts a non-blocking connect (see transport.h). */
int sk_transport_connect(sk_transport *t, struct ev_loop *loop, const struct sockaddr *sa, socklen_t len,
                         uint64_t timeout_ms, ev_timer *timer, const sk_transport_ops *ops, void *ctx,
                         const sk_transport_cbs *cbs, void *data)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        memset(t, 0, sizeof(*t));
        t->fd = -1;
        return -1;
    }
    init(t, loop, fd, ops, ctx, cbs, data);
    int rc = connect(fd, sa, len);
    if (rc == 0 && !t->ops->handshake) return 1;
    if (rc < 0 && errno != EINPROGRESS) {
        int e = errno;
        sk_transport_close(t);
        errno = e;
        return -1;
    }
    t->connecting = true;
    if (timeout_ms) {
        t->timer = timer;
        t->timer_cb = timer->cb;
        t->timer_data = timer->data;
        ev_timer_stop(loop, timer);
        ev_set_cb(timer, on_connect_timeout);
        timer->data = t;
        timer->repeat = (double)timeout_ms / 1000.0;
        ev_timer_again(loop, timer);
    }
    /* writability says the TCP connect finished (at once, when rc == 0) */
    ev_io_start(loop, &t->wio);
    return 0;
}

/* What a handshake waits for (see transport.h). */
void sk_transport_wait(sk_transport *t, bool read, bool write)
{
    if (read && !ev_is_active(&t->rio)) ev_io_start(t->loop, &t->rio);
    if (!read && ev_is_active(&t->rio)) ev_io_stop(t->loop, &t->rio);
    if (write && !ev_is_active(&t->wio)) ev_io_start(t->loop, &t->wio);
    if (!write && ev_is_active(&t->wio)) ev_io_stop(t->loop, &t->wio);
}

/* Turns readable events on or off (deferred while connecting). */
void sk_transport_want_read(sk_transport *t, bool on)
{
    t->want_read = on;
    if (t->fd < 0 || t->connecting) return;
    if (t->handshaking) { /* an accepted secure transport: the first read starts the handshake */
        if (on && !ev_is_active(&t->rio)) ev_io_start(t->loop, &t->rio);
        return;
    }
    if (on && !ev_is_active(&t->rio)) ev_io_start(t->loop, &t->rio);
    if (!on && ev_is_active(&t->rio)) ev_io_stop(t->loop, &t->rio);
}

/* Turns writable events on or off (the connect watches writability itself). */
void sk_transport_want_write(sk_transport *t, bool on)
{
    t->want_write = on;
    if (t->fd < 0 || t->connecting || t->handshaking) return;
    if (on && !ev_is_active(&t->wio)) ev_io_start(t->loop, &t->wio);
    if (!on && ev_is_active(&t->wio)) ev_io_stop(t->loop, &t->wio);
}

/* Queues a readable event for the next loop iteration. */
void sk_transport_feed_read(sk_transport *t)
{
    if (t->fd >= 0) ev_feed_event(t->loop, &t->rio, EV_READ);
}

/* Stops the watchers and closes the socket. */
void sk_transport_close(sk_transport *t)
{
    if (!t->ops) return;
    if (t->loop) {
        ev_io_stop(t->loop, &t->rio);
        ev_io_stop(t->loop, &t->wio);
        if (t->timer) ev_clear_pending(t->loop, t->timer);
        timer_return(t);
        /* a readable event fed but not yet delivered must not reach a freed owner */
        ev_clear_pending(t->loop, &t->rio);
        ev_clear_pending(t->loop, &t->wio);
    }
    if (t->fd >= 0) t->ops->close(t);
    t->want_read = t->want_write = t->connecting = t->handshaking = false;
}
