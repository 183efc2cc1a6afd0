/*
 * transport.c — the plain TCP transport: the socket, its watchers, and a
 * non-blocking connect with a timeout.
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

static void on_io_read(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_transport *t = io->data;
    t->cbs->on_readable(t);
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

/* Ends a connect: gives the timer back, reports err (0 = connected). */
static void connect_done(sk_transport *t, int err)
{
    t->connecting = false;
    timer_return(t);
    if (!t->want_write) ev_io_stop(t->loop, &t->wio);
    if (!err && t->want_read && !ev_is_active(&t->rio)) ev_io_start(t->loop, &t->rio);
    t->cbs->on_connected(t, err);
}

static void on_io_write(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_transport *t = io->data;
    if (t->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
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

/* Sets up t around fd (plain TCP) without watching anything yet. */
static void init(sk_transport *t, struct ev_loop *loop, int fd, const sk_transport_cbs *cbs, void *data)
{
    memset(t, 0, sizeof(*t));
    t->ops = &plain_ops;
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
void sk_transport_accept(sk_transport *t, struct ev_loop *loop, int fd, const sk_transport_cbs *cbs,
                         void *data)
{
    init(t, loop, fd, cbs, data);
}

/* Starts a non-blocking connect (see transport.h). */
int sk_transport_connect(sk_transport *t, struct ev_loop *loop, const struct sockaddr *sa, socklen_t len,
                         uint64_t timeout_ms, ev_timer *timer, const sk_transport_cbs *cbs, void *data)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        memset(t, 0, sizeof(*t));
        t->fd = -1;
        return -1;
    }
    init(t, loop, fd, cbs, data);
    if (connect(fd, sa, len) == 0) return 1;
    if (errno != EINPROGRESS) {
        int e = errno;
        sk_transport_close(t);
        errno = e;
        return -1;
    }
    t->connecting = true;
    ev_io_start(loop, &t->wio);
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
    return 0;
}

/* Turns readable events on or off (deferred while connecting). */
void sk_transport_want_read(sk_transport *t, bool on)
{
    t->want_read = on;
    if (t->fd < 0 || t->connecting) return;
    if (on && !ev_is_active(&t->rio)) ev_io_start(t->loop, &t->rio);
    if (!on && ev_is_active(&t->rio)) ev_io_stop(t->loop, &t->rio);
}

/* Turns writable events on or off (the connect watches writability itself). */
void sk_transport_want_write(sk_transport *t, bool on)
{
    t->want_write = on;
    if (t->fd < 0 || t->connecting) return;
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
    t->want_read = t->want_write = t->connecting = false;
}
