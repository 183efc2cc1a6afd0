/*
 * test_tls.c — unit tests of the TLS transport kind (tls.c) over real
 * loopback TCP connections on one loop, driven in non-blocking steps: a
 * server and a client transport shake hands (the client hears on_connected
 * 0, the server's owner then reads), bytes go both ways (a large reply read
 * in small pieces, which needs the feed of bytes waiting inside wolfSSL),
 * ALPN is negotiated, each side sees the other's SPIFFE ID under mutual TLS;
 * a client that does not trust the CA fails its connect, and a server that
 * requires a client certificate fails a client without one. The CA and the
 * certificates are minted with the openssl command into a temporary
 * directory. No clock is asserted.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls.c" /* its statics: spiffe_valid */

#include "check.h"
#include "loopback.h"

#define SERVER_ID "spiffe://example.org/ns/default/sa/server"
#define CLIENT_ID "spiffe://example.org/ns/default/sa/client"
#define BIG       (64 * 1024)

static char dir[64];
static struct ev_loop *loop;

/* ---- an owner that records what it heard and writes what it is given ---- */

typedef struct owner {
    int readable, connected, connect_err, read_err;
    bool eof;
    size_t chunk; /* bytes per read (small: leaves bytes inside wolfSSL) */
    char *got;
    size_t len, cap;
    const char *out; /* bytes to write, out_len of them, out_off written */
    size_t out_len, out_off;
} owner;

static void o_readable(sk_transport *t)
{
    owner *o = t->data;
    o->readable++;
    if (o->len == o->cap) return;
    size_t want = SK_MIN(o->chunk ? o->chunk : 4096, o->cap - o->len);
    ssize_t n = sk_transport_read(t, o->got + o->len, want);
    if (n > 0)
        o->len += (size_t)n;
    else if (n == 0)
        o->eof = true;
    else if (errno != EAGAIN)
        o->read_err = errno ? errno : -1;
}

static void flush(sk_transport *t)
{
    owner *o = t->data;
    while (o->out_off < o->out_len) {
        struct iovec iov[2];
        size_t rest = o->out_len - o->out_off, half = rest / 2;
        iov[0].iov_base = (char *)o->out + o->out_off; /* two pieces: writev writes them in turn */
        iov[0].iov_len = half ? half : rest;
        iov[1].iov_base = (char *)o->out + o->out_off + iov[0].iov_len;
        iov[1].iov_len = rest - iov[0].iov_len;
        ssize_t n = sk_transport_writev(t, iov, iov[1].iov_len ? 2 : 1);
        if (n < 0) {
            sk_transport_want_write(t, errno == EAGAIN);
            return;
        }
        o->out_off += (size_t)n;
    }
    sk_transport_want_write(t, false);
}

static void o_writable(sk_transport *t)
{
    flush(t);
}

static void o_connected(sk_transport *t, int err)
{
    owner *o = t->data;
    o->connected++;
    o->connect_err = err;
}

static const sk_transport_cbs owner_cbs = {o_readable, o_writable, o_connected};

static void owner_init(owner *o, size_t cap)
{
    memset(o, 0, sizeof(*o));
    o->got = calloc(1, cap);
    o->cap = cap;
}

/* ---- helpers ---- */

static void spin(void)
{
    for (int i = 0; i < 200; i++) ev_run(loop, EVRUN_NOWAIT);
}

static void guard_cb(struct ev_loop *l, ev_timer *w, int revents) {}

/* One loop iteration that waits for an event, at most 10 ms (a guard, not
 * an assertion: on a busy machine loopback bytes may arrive late). */
static void step(void)
{
    ev_timer guard;
    ev_timer_init(&guard, guard_cb, 0.01, 0.);
    ev_timer_start(loop, &guard);
    ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &guard);
}

/* Runs the loop until c holds (at most 1000 steps). */
#define SPIN_UNTIL(c)                                     \
    do {                                                  \
        for (int i_ = 0; i_ < 1000 && !(c); i_++) step(); \
    } while (0)

static char *path(const char *name)
{
    static char buf[8][128];
    static int i;
    char *p = buf[i++ % 8];
    snprintf(p, 128, "%s/%s", dir, name);
    return p;
}

static int sh(const char *fmt, const char *a, const char *b)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), fmt, a, b);
    return system(cmd);
}

/* Mints ca (trusted), other (not trusted), server and client leaves. */
static int mint(void)
{
    strcpy(dir, "/tmp/sk_tls_XXXXXX");
    if (!mkdtemp(dir)) return -1;
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "cd %s && exec >log 2>&1 && "
             "for ca in ca other; do openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout $ca.key -out $ca.pem -days 2 -subj /CN=$ca || exit 1; done && "
             "printf 'subjectAltName=URI:" SERVER_ID
             ",DNS:localhost\\nbasicConstraints=CA:FALSE\\n' >server.ext && "
             "printf 'subjectAltName=URI:" CLIENT_ID "\\nbasicConstraints=CA:FALSE\\n' >client.ext && "
             "for n in server client; do openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout $n.key -out $n.csr -subj /CN=$n && "
             "openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -set_serial $$$$ -days 2 "
             "-extfile $n.ext -out $n.pem || exit 1; done",
             dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* One connection: client and server transports and their owners. */
typedef struct pair {
    sk_transport c, s;
    owner co, so;
    ev_timer idle;
    bool accepted;
} pair;

static void idle_cb(struct ev_loop *l, ev_timer *w, int revents) {}

/* Connects a client of cctx to a server of sctx over loopback and spins
 * the loop until both handshakes had their chance. */
static void pair_open(pair *p, sk_tls_ctx *sctx, sk_tls_ctx *cctx, size_t cap)
{
    memset(p, 0, sizeof(*p));
    owner_init(&p->co, cap);
    owner_init(&p->so, cap);
    struct sockaddr_in a;
    int lfd = listener(&a);
    if (lfd < 0) return;
    ev_timer_init(&p->idle, idle_cb, 0., 0.);
    void *cs = sk_tls_conn_new(cctx, -1, "localhost", NULL);
    int rc = sk_transport_connect(&p->c, loop, (struct sockaddr *)&a, sizeof(a), 10000, &p->idle, &sk_tls_ops,
                                  cs, &owner_cbs, &p->co);
    CHECK(cs && rc == 0);
    int fd = -1;
    for (int i = 0; i < 500 && fd < 0; i++) {
        step();
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    }
    close(lfd);
    CHECK(fd >= 0);
    if (fd < 0) return;
    void *ss = sk_tls_conn_new(sctx, fd, NULL, NULL);
    CHECK(ss != NULL);
    sk_transport_accept(&p->s, loop, fd, &sk_tls_ops, ss, &owner_cbs, &p->so);
    sk_transport_want_read(&p->s, true);
    p->accepted = true;
    SPIN_UNTIL(p->co.connected && !p->s.handshaking);
    spin();
}

static void pair_close(pair *p)
{
    sk_transport_close(&p->c);
    if (p->accepted) sk_transport_close(&p->s);
    free(p->co.got);
    free(p->so.got);
}

static sk_tls_ctx *ctx(const sk_tls_opts *o)
{
    char err[256] = "";
    sk_tls_ctx *c = sk_tls_ctx_new(o, err, sizeof(err), NULL);
    if (!c) fprintf(stderr, "sk_tls_ctx_new: %s\n", err);
    return c;
}

/* ---- tests ---- */

/* Contexts refuse what cannot work. */
static void test_ctx_errors(void)
{
    char err[256];
    sk_tls_opts o = {.server = true, .cert = path("server.pem")};
    CHECK(!sk_tls_ctx_new(&o, err, sizeof(err), NULL) && strstr(err, "cert and key"));
    o = (sk_tls_opts){.server = false, .verify = SK_TLS_VERIFY_REQUIRED};
    CHECK(!sk_tls_ctx_new(&o, err, sizeof(err), NULL) && strstr(err, "ca"));
    o = (sk_tls_opts){.server = false, .ca = path("missing.pem"), .verify = SK_TLS_VERIFY_REQUIRED};
    CHECK(!sk_tls_ctx_new(&o, err, sizeof(err), NULL) && strstr(err, "missing.pem"));
    o = (sk_tls_opts){.server = false, .min_version = 11};
    CHECK(!sk_tls_ctx_new(&o, err, sizeof(err), NULL) && strstr(err, "min_version"));
}

/* Server-verified TLS: handshake, bytes both ways, ALPN, the server's ID. */
static void test_basic(int min_version)
{
    sk_tls_opts so = {.server = true,
                      .cert = path("server.pem"),
                      .key = path("server.key"),
                      .alpn = "h2,http/1.1",
                      .min_version = min_version};
    sk_tls_opts co = {.ca = path("ca.pem"),
                      .verify = SK_TLS_VERIFY_REQUIRED,
                      .alpn = "http/1.1",
                      .min_version = min_version};
    sk_tls_ctx *sctx = ctx(&so), *cctx = ctx(&co);
    ASSERT(sctx && cctx);
    static char big[BIG];
    for (size_t i = 0; i < BIG; i++) big[i] = (char)('a' + i % 26);
    pair p;
    pair_open(&p, sctx, cctx, BIG + 1); /* room for the EOF read */
    ASSERT(p.accepted);
    CHECK(p.co.connected == 1 && p.co.connect_err == 0);
    CHECK(p.c.alpn && strcmp(p.c.alpn, "http/1.1") == 0);
    CHECK(p.c.peer_identity && strcmp(p.c.peer_identity, SERVER_ID) == 0);
    sk_transport_want_read(&p.c, true);
    /* client -> server */
    p.co.out = "ping";
    p.co.out_len = 4;
    flush(&p.c);
    SPIN_UNTIL(p.so.len == 4);
    CHECK(p.so.len == 4 && memcmp(p.so.got, "ping", 4) == 0);
    CHECK(p.s.alpn && strcmp(p.s.alpn, "http/1.1") == 0);
    CHECK(p.s.peer_identity == NULL); /* no client certificate asked for */
    /* server -> client: 64 KiB read 100 bytes at a time */
    p.co.chunk = 100;
    p.so.out = big;
    p.so.out_len = BIG;
    flush(&p.s);
    SPIN_UNTIL(p.co.len == BIG);
    CHECK(p.so.out_off == BIG);
    CHECK(p.co.len == BIG && memcmp(p.co.got, big, BIG) == 0);
    /* half close: close_notify reads as EOF */
    sk_transport_shutdown(&p.s);
    SPIN_UNTIL(p.co.eof || p.co.read_err);
    CHECK(p.co.eof && p.co.read_err == 0);
    pair_close(&p);
    sk_tls_ctx_unref(sctx);
    sk_tls_ctx_unref(cctx);
}

/* Mutual TLS with verify = required: each side sees the other's ID, h2 by ALPN. */
static void test_mtls(void)
{
    sk_tls_opts so = {.server = true,
                      .cert = path("server.pem"),
                      .key = path("server.key"),
                      .ca = path("ca.pem"),
                      .verify = SK_TLS_VERIFY_REQUIRED,
                      .alpn = "h2,http/1.1"};
    sk_tls_opts co = {.cert = path("client.pem"),
                      .key = path("client.key"),
                      .ca = path("ca.pem"),
                      .verify = SK_TLS_VERIFY_REQUIRED,
                      .alpn = "h2,http/1.1"};
    sk_tls_ctx *sctx = ctx(&so), *cctx = ctx(&co);
    ASSERT(sctx && cctx);
    pair p;
    pair_open(&p, sctx, cctx, 256);
    ASSERT(p.accepted);
    CHECK(p.co.connected == 1 && p.co.connect_err == 0);
    CHECK(p.c.alpn && strcmp(p.c.alpn, "h2") == 0);
    CHECK(p.c.peer_identity && strcmp(p.c.peer_identity, SERVER_ID) == 0);
    p.co.out = "hello";
    p.co.out_len = 5;
    flush(&p.c);
    SPIN_UNTIL(p.so.len == 5);
    CHECK(p.so.len == 5 && memcmp(p.so.got, "hello", 5) == 0);
    CHECK(p.s.peer_identity && strcmp(p.s.peer_identity, CLIENT_ID) == 0);
    CHECK(p.s.alpn && strcmp(p.s.alpn, "h2") == 0);
    pair_close(&p);
    sk_tls_ctx_unref(sctx);
    sk_tls_ctx_unref(cctx);
}

/* A client that trusts another CA fails its connect; the server's owner
 * hears a read error, never bytes. */
static void test_untrusted_server(void)
{
    sk_tls_opts so = {.server = true, .cert = path("server.pem"), .key = path("server.key")};
    sk_tls_opts co = {.ca = path("other.pem"), .verify = SK_TLS_VERIFY_REQUIRED};
    sk_tls_ctx *sctx = ctx(&so), *cctx = ctx(&co);
    ASSERT(sctx && cctx);
    pair p;
    pair_open(&p, sctx, cctx, 256);
    ASSERT(p.accepted);
    CHECK(p.co.connected == 1 && p.co.connect_err != 0);
    CHECK(*sk_tls_conn_error(&p.c) != '\0');
    CHECK(p.c.peer_identity == NULL);
    CHECK(p.so.len == 0);
    pair_close(&p);
    sk_tls_ctx_unref(sctx);
    sk_tls_ctx_unref(cctx);
}

/* verify = required on the server and a client without a certificate: the
 * server's handshake fails (its owner hears a read error, never bytes);
 * with verify = optional the same client gets through, without identity. */
static void test_client_cert_required(void)
{
    sk_tls_opts so = {.server = true,
                      .cert = path("server.pem"),
                      .key = path("server.key"),
                      .ca = path("ca.pem"),
                      .verify = SK_TLS_VERIFY_REQUIRED};
    sk_tls_opts co = {.ca = path("ca.pem"), .verify = SK_TLS_VERIFY_REQUIRED};
    sk_tls_ctx *sctx = ctx(&so), *cctx = ctx(&co);
    ASSERT(sctx && cctx);
    pair p;
    pair_open(&p, sctx, cctx, 256);
    ASSERT(p.accepted);
    /* TLS 1.3: the client may finish before the server judges it */
    p.co.out = "data";
    p.co.out_len = 4;
    if (p.co.connected && !p.co.connect_err) {
        flush(&p.c);
        sk_transport_want_read(&p.c, true);
        SPIN_UNTIL(p.co.read_err || p.co.eof);
    }
    CHECK(p.so.readable >= 1 && p.so.read_err != 0 && p.so.len == 0);
    CHECK(p.s.peer_identity == NULL);
    CHECK(p.co.connect_err != 0 || p.co.read_err != 0 || p.co.eof);
    pair_close(&p);
    sk_tls_ctx_unref(sctx);

    so.verify = SK_TLS_VERIFY_OPTIONAL;
    sctx = ctx(&so);
    ASSERT(sctx);
    pair_open(&p, sctx, cctx, 256);
    ASSERT(p.accepted);
    CHECK(p.co.connected == 1 && p.co.connect_err == 0);
    p.co.out = "data";
    p.co.out_len = 4;
    flush(&p.c);
    SPIN_UNTIL(p.so.len == 4);
    CHECK(p.so.len == 4 && p.s.peer_identity == NULL);
    pair_close(&p);
    sk_tls_ctx_unref(sctx);
    sk_tls_ctx_unref(cctx);
}

/* SPIFFE ID rules. */
static void test_spiffe_valid(void)
{
#define V(s) spiffe_valid(s, strlen(s))
    CHECK(V("spiffe://example.org"));
    CHECK(V("spiffe://example.org/ns/default/sa/x_y-z.1"));
    CHECK(!V("spiffe://"));
    CHECK(!V("spiffe:///path"));
    CHECK(!V("spiffe://Example.org/a"));
    CHECK(!V("spiffe://example.org/"));
    CHECK(!V("spiffe://example.org//a"));
    CHECK(!V("spiffe://example.org/a/../b"));
    CHECK(!V("spiffe://example.org/a?q"));
    CHECK(!V("spiffe://example.org:8443/a"));
    CHECK(!V("spiffe://user@example.org/a"));
    CHECK(!V("https://example.org/a"));
#undef V
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (mint() < 0) {
        fprintf(stderr, "test_tls: cannot mint certificates with openssl (see %s/log)\n", dir);
        return 1;
    }
    loop = ev_loop_new(EVBACKEND_EPOLL);
    if (!loop) return 1;
    test_ctx_errors();
    test_basic(12);
    test_basic(13);
    test_mtls();
    test_untrusted_server();
    test_client_cert_required();
    test_spiffe_valid();
    ev_loop_destroy(loop);
    sh("rm -rf %s%s", dir, "");
    printf("test_tls: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
