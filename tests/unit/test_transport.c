/*
 * test_transport.c — unit tests of transport.c over real sockets on one
 * loop: the plain kind's readable / writable / connected events, a connect
 * refused and a connect timed out (with the owner's timer given back), and
 * a second transport kind with a handshake — a toy "secure" kind written
 * here in a few lines, as a TLS kind will be: its handshake must finish
 * before the owner hears anything (on_connected on a connect, on_readable on
 * an accepted socket), it may wait for reads several times, a failed one is
 * reported as a connect error, and the connect timeout covers it. The loop
 * runs in non-blocking steps only; no clock is asserted.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport.h"

#include "check.h"
#include "loopback.h"

/* ---- an owner that records what it heard ---- */

typedef struct owner {
    int readable, writable, connected, connect_err;
    char got[256];
    size_t len;
} owner;

static void o_readable(sk_transport *t)
{
    owner *o = t->data;
    o->readable++;
    ssize_t n = sk_transport_read(t, o->got + o->len, sizeof(o->got) - o->len - 1);
    if (n > 0) o->len += (size_t)n;
}

static void o_writable(sk_transport *t)
{
    owner *o = t->data;
    o->writable++;
    sk_transport_want_write(t, false);
}

static void o_connected(sk_transport *t, int err)
{
    owner *o = t->data;
    o->connected++;
    o->connect_err = err;
}

static const sk_transport_cbs owner_cbs = {o_readable, o_writable, o_connected};

/* ---- a toy secure kind: the handshake reads "HELLO" from the peer ---- */

typedef struct toy {
    char hello[5];
    size_t n;    /* bytes of HELLO read so far */
    int calls;   /* handshake steps */
    bool refuse; /* fail the handshake on a wrong byte */
} toy;

static int toy_handshake(sk_transport *t)
{
    toy *y = t->ctx;
    y->calls++;
    while (y->n < 5) {
        ssize_t k = read(t->fd, y->hello + y->n, 5 - y->n);
        if (k < 0 && errno == EAGAIN) {
            sk_transport_wait(t, true, false);
            return 1;
        }
        if (k <= 0) {
            errno = ECONNRESET;
            return -1;
        }
        y->n += (size_t)k;
    }
    if (memcmp(y->hello, "HELLO", 5) != 0) {
        errno = EPROTO;
        return -1;
    }
    return 0;
}

static ssize_t toy_read(sk_transport *t, void *buf, size_t len)
{
    return read(t->fd, buf, len);
}

static ssize_t toy_writev(sk_transport *t, const struct iovec *iov, int n)
{
    return writev(t->fd, iov, n);
}

static void toy_shutdown(sk_transport *t)
{
    shutdown(t->fd, SHUT_WR);
}

static void toy_close(sk_transport *t)
{
    close(t->fd);
    t->fd = -1;
}

static const sk_transport_ops toy_ops = {toy_read, toy_writev, toy_handshake, toy_shutdown, toy_close};

/* ---- helpers ---- */

static struct ev_loop *loop;

static void spin(void)
{
    for (int i = 0; i < 20; i++) ev_run(loop, EVRUN_NOWAIT);
}

static void idle_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (*(int *)w->data)++;
}

/* ---- tests ---- */

/* Plain kind, accepted: readable events only while wanted, writable once asked. */
static void test_plain_accepted(void)
{
    int sv[2];
    ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    owner o = {0};
    sk_transport t;
    sk_transport_accept(&t, loop, sv[0], NULL, NULL, &owner_cbs, &o);
    CHECK(write(sv[1], "abc", 3) == 3);
    spin();
    CHECK(o.readable == 0); /* not wanted yet */
    sk_transport_want_read(&t, true);
    spin();
    CHECK(o.readable >= 1 && o.len == 3 && memcmp(o.got, "abc", 3) == 0);
    sk_transport_want_write(&t, true);
    spin();
    CHECK(o.writable == 1);
    sk_transport_close(&t);
    sk_transport_close(&t); /* twice is harmless */
    CHECK(t.fd == -1);
    close(sv[1]);
}

/* Plain kind, connect: to a listener (at once or reported), refused. */
static void test_plain_connect(void)
{
    struct sockaddr_in a;
    int lfd = listener(&a);
    ASSERT(lfd >= 0);
    owner o = {0};
    sk_transport t;
    ev_timer idle;
    int fired = 0;
    ev_timer_init(&idle, idle_cb, 0., 0.);
    idle.data = &fired;
    int rc = sk_transport_connect(&t, loop, (struct sockaddr *)&a, sizeof(a), 1000, &idle, NULL, NULL,
                                  &owner_cbs, &o);
    CHECK(rc == 0 || rc == 1);
    spin();
    CHECK(rc == 1 ? o.connected == 0 : (o.connected == 1 && o.connect_err == 0));
    /* the owner's timer came back, stopped, with its own callback and data */
    CHECK(!ev_is_active(&idle) && idle.cb == idle_cb && idle.data == &fired);
    sk_transport_close(&t);
    close(lfd);
    /* refused: nothing listens on the port any more */
    owner r = {0};
    rc = sk_transport_connect(&t, loop, (struct sockaddr *)&a, sizeof(a), 1000, &idle, NULL, NULL, &owner_cbs,
                              &r);
    if (rc == 0) {
        spin();
        CHECK(r.connected == 1 && r.connect_err == ECONNREFUSED);
    } else {
        CHECK(rc == -1 && errno == ECONNREFUSED);
    }
    CHECK(!ev_is_active(&idle) && idle.cb == idle_cb);
    sk_transport_close(&t);
}

/* Toy kind, accepted: the owner hears nothing until HELLO came whole (in
 * two pieces), then reads what followed it. */
static void test_handshake_accepted(void)
{
    int sv[2];
    ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    owner o = {0};
    toy y = {0};
    sk_transport t;
    sk_transport_accept(&t, loop, sv[0], &toy_ops, &y, &owner_cbs, &o);
    sk_transport_want_read(&t, true);
    sk_transport_want_write(&t, true); /* deferred until the handshake is done */
    CHECK(write(sv[1], "HEL", 3) == 3);
    spin();
    CHECK(y.calls >= 1 && y.n == 3);
    CHECK(o.readable == 0 && o.writable == 0);
    CHECK(write(sv[1], "LOdata", 6) == 6);
    spin();
    CHECK(y.n == 5);
    CHECK(o.readable >= 1 && o.len == 4 && memcmp(o.got, "data", 4) == 0);
    CHECK(o.writable == 1); /* the owner's wish, put back after the handshake */
    sk_transport_close(&t);
    close(sv[1]);
}

/* Toy kind, connect: on_connected only once the peer said HELLO; a wrong
 * greeting is a connect error; silence runs into the connect timeout. */
static void test_handshake_connect(void)
{
    struct sockaddr_in a;
    int lfd = listener(&a);
    ASSERT(lfd >= 0);
    ev_timer idle;
    int fired = 0;
    ev_timer_init(&idle, idle_cb, 0., 0.);
    idle.data = &fired;

    owner o = {0};
    toy y = {0};
    sk_transport t;
    int rc = sk_transport_connect(&t, loop, (struct sockaddr *)&a, sizeof(a), 5000, &idle, &toy_ops, &y,
                                  &owner_cbs, &o);
    CHECK(rc == 0); /* never "connected at once" with a handshake */
    spin();
    int peer = accept(lfd, NULL, NULL);
    ASSERT(peer >= 0);
    spin();
    CHECK(o.connected == 0); /* TCP is up, the handshake is not */
    CHECK(write(peer, "HELLO", 5) == 5);
    spin();
    CHECK(o.connected == 1 && o.connect_err == 0);
    CHECK(!ev_is_active(&idle) && idle.cb == idle_cb);
    sk_transport_close(&t);
    close(peer);

    owner b = {0};
    toy z = {0};
    rc = sk_transport_connect(&t, loop, (struct sockaddr *)&a, sizeof(a), 5000, &idle, &toy_ops, &z,
                              &owner_cbs, &b);
    CHECK(rc == 0);
    spin();
    peer = accept(lfd, NULL, NULL);
    ASSERT(peer >= 0);
    CHECK(write(peer, "HOWDY", 5) == 5);
    spin();
    CHECK(b.connected == 1 && b.connect_err == EPROTO);
    sk_transport_close(&t);
    close(peer);

    /* silence: fire the (borrowed) connect timer as if its time had passed */
    owner s = {0};
    toy q = {0};
    rc = sk_transport_connect(&t, loop, (struct sockaddr *)&a, sizeof(a), 5000, &idle, &toy_ops, &q,
                              &owner_cbs, &s);
    CHECK(rc == 0);
    spin();
    peer = accept(lfd, NULL, NULL);
    spin();
    CHECK(s.connected == 0 && ev_is_active(&idle) && idle.cb != idle_cb);
    ev_feed_event(loop, &idle, EV_TIMER);
    spin();
    CHECK(s.connected == 1 && s.connect_err == ETIMEDOUT);
    CHECK(!ev_is_active(&idle) && idle.cb == idle_cb && idle.data == &fired && fired == 0);
    sk_transport_close(&t);
    if (peer >= 0) close(peer);
    close(lfd);
}

int main(void)
{
    loop = ev_loop_new(EVBACKEND_EPOLL);
    if (!loop) return 1;
    test_plain_accepted();
    test_plain_connect();
    test_handshake_accepted();
    test_handshake_connect();
    ev_loop_destroy(loop);
    printf("test_transport: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
