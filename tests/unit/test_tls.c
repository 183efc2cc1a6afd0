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
static sk_metrics mets; /* handshake outcomes of every connection the tests make */

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
             "-extfile $n.ext -out $n.pem || exit 1; done && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 4242 -days 2 "
             "-extfile server.ext -out server2.pem && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 4343 "
             "-days -1 -extfile server.ext -out expired.pem",
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
    void *cs = sk_tls_conn_new(cctx, -1, "localhost", &mets);
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
    void *ss = sk_tls_conn_new(sctx, fd, NULL, &mets);
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
    /* a key of the same curve that is not the certificate's: refused by signing */
    const char *key = NULL;
    o = (sk_tls_opts){.server = true, .cert = path("server.pem"), .key = path("client.key")};
    CHECK(!sk_tls_ctx_new(&o, err, sizeof(err), &key) && strstr(err, "does not match"));
    CHECK(key && strcmp(key, "key") == 0);
    o = (sk_tls_opts){.server = true, .cert = path("expired.pem"), .key = path("server.key")};
    CHECK(!sk_tls_ctx_new(&o, err, sizeof(err), &key) && strstr(err, "expired"));
    CHECK(key && strcmp(key, "cert") == 0);
    o = (sk_tls_opts){.server = true, .cert = path("server.pem"), .key = path("server.key"), .ca = path("log")};
    CHECK(!sk_tls_ctx_new(&o, err, sizeof(err), &key) && key && strcmp(key, "ca") == 0);
    o = (sk_tls_opts){.server = true, .cert = path("server.pem"), .key = path("server.key"), .ciphers = "NOPE"};
    CHECK(!sk_tls_ctx_new(&o, err, sizeof(err), &key) && key && strcmp(key, "ciphers") == 0);
    /* what a good context says of its certificate */
    o = (sk_tls_opts){.server = true, .cert = path("server2.pem"), .key = path("server.key")};
    sk_tls_ctx *c = sk_tls_ctx_new(&o, err, sizeof(err), NULL);
    ASSERT(c);
    CHECK(strcmp(sk_tls_ctx_info(c)->serial, "1092") == 0); /* 4242 */
    CHECK(strcmp(sk_tls_ctx_info(c)->spiffe_id, SERVER_ID) == 0);
    CHECK(strstr(sk_tls_ctx_info(c)->subject, "CN=server") != NULL);
    CHECK(sk_tls_ctx_info(c)->not_after > time(NULL));
    sk_tls_ctx_unref(c);
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

/* A client's allow-list: another server identity fails the connect with
 * EACCES (the pool's 502 upstream_identity_mismatch) before the owner can
 * write; a prefix pattern admits it. Outcomes are counted. */
static void test_client_allowlist(void)
{
    char *other[] = {"spiffe://example.org/ns/default/sa/other"};
    char *prefix[] = {"spiffe://example.org/ns/default/*"};
    sk_tls_opts so = {.server = true, .cert = path("server.pem"), .key = path("server.key")};
    sk_tls_opts co = {.ca = path("ca.pem"), .verify = SK_TLS_VERIFY_REQUIRED, .peer_ids = other, .npeer_ids = 1};
    sk_tls_ctx *sctx = ctx(&so), *cctx = ctx(&co);
    ASSERT(sctx && cctx);
    uint64_t before = mets.tls_handshakes[1][SK_TLS_IDENTITY_MISMATCH];
    pair p;
    pair_open(&p, sctx, cctx, 256);
    ASSERT(p.accepted);
    CHECK(p.co.connected == 1 && p.co.connect_err == EACCES);
    CHECK(sk_tls_conn_result(&p.c) == SK_TLS_IDENTITY_MISMATCH);
    CHECK(mets.tls_handshakes[1][SK_TLS_IDENTITY_MISMATCH] == before + 1);
    CHECK(p.so.len == 0);
    pair_close(&p);
    sk_tls_ctx_unref(cctx);
    co.peer_ids = prefix;
    cctx = ctx(&co);
    ASSERT(cctx);
    pair_open(&p, sctx, cctx, 256);
    CHECK(p.co.connected == 1 && p.co.connect_err == 0);
    CHECK(p.c.peer_identity && strcmp(p.c.peer_identity, SERVER_ID) == 0);
    CHECK(sk_tls_conn_result(&p.c) == SK_TLS_OK);
    pair_close(&p);
    sk_tls_ctx_unref(sctx);
    sk_tls_ctx_unref(cctx);
}

/* Many small pieces and a large one in one writev arrive whole and in order
 * (the kind gathers small pieces into one record). */
static void test_gathered_writes(void)
{
    sk_tls_opts so = {.server = true, .cert = path("server.pem"), .key = path("server.key")};
    sk_tls_opts co = {.ca = path("ca.pem"), .verify = SK_TLS_VERIFY_REQUIRED};
    sk_tls_ctx *sctx = ctx(&so), *cctx = ctx(&co);
    ASSERT(sctx && cctx);
    enum { N = 40, TOTAL = N * 7 + 20000 };
    static char expect[TOTAL];
    struct iovec iov[N + 1];
    size_t off = 0;
    for (int i = 0; i < N; i++) {
        iov[i].iov_base = expect + off;
        iov[i].iov_len = 7;
        for (int j = 0; j < 7; j++) expect[off++] = (char)('A' + i % 26);
    }
    for (int j = 0; j < 20000; j++) expect[off + (size_t)j] = (char)('a' + j % 26);
    iov[N].iov_base = expect + off;
    iov[N].iov_len = 20000;
    pair p;
    pair_open(&p, sctx, cctx, TOTAL + 1);
    ASSERT(p.accepted && p.co.connect_err == 0);
    size_t sent = 0;
    for (int tries = 0; tries < 1000 && sent < TOTAL; tries++) {
        /* re-offer from where the last call stopped, as an owner does */
        struct iovec rest[N + 1];
        int n = 0;
        size_t skip = sent;
        for (int i = 0; i <= N; i++) {
            if (skip >= iov[i].iov_len) {
                skip -= iov[i].iov_len;
                continue;
            }
            rest[n].iov_base = (char *)iov[i].iov_base + skip;
            rest[n++].iov_len = iov[i].iov_len - skip;
            skip = 0;
        }
        ssize_t w = sk_transport_writev(&p.c, rest, n);
        if (w > 0) sent += (size_t)w;
        step();
    }
    CHECK(sent == TOTAL);
    SPIN_UNTIL(p.so.len == TOTAL);
    CHECK(p.so.len == TOTAL && memcmp(p.so.got, expect, TOTAL) == 0);
    pair_close(&p);
    sk_tls_ctx_unref(sctx);
    sk_tls_ctx_unref(cctx);
}

/* A slot re-reads changed files: a new certificate takes over, unchanged
 * files are left alone, a broken replacement keeps the one in force. */
static void test_slot_reload(void)
{
    char cert[128], key[128], cmd[512];
    snprintf(cert, sizeof(cert), "%s/slot.pem", dir);
    snprintf(key, sizeof(key), "%s/slot.key", dir);
    snprintf(cmd, sizeof(cmd), "cp %s/server.pem %s && cp %s/server.key %s", dir, cert, dir, key);
    ASSERT(system(cmd) == 0);
    sk_tls t = {.name = "s", .cert = cert, .key = key, .verify = -1, .min_version = 12, .server_side = true};
    char err[512];
    const char *bad = NULL;
    ASSERT(sk_tls_load(&t, err, sizeof(err), &bad) == 0 && t.state);
    sk_tls_slot_info info;
    sk_tls_slot_info_get(t.state, &info);
    char first[96];
    snprintf(first, sizeof(first), "%s", info.cert.serial);
    CHECK(sk_tls_slot_reload(t.state, err, sizeof(err)) == 0); /* nothing changed */
    void *held = sk_tls_slot_conn(t.state, true, -1, NULL);    /* a connection made before the rotation */
    CHECK(held != NULL);
    snprintf(cmd, sizeof(cmd), "cp %s/server2.pem %s.tmp && mv %s.tmp %s", dir, cert, cert, cert);
    ASSERT(system(cmd) == 0);
    CHECK(sk_tls_slot_reload(t.state, err, sizeof(err)) == 1);
    sk_tls_slot_info_get(t.state, &info);
    CHECK(strcmp(info.cert.serial, "1092") == 0 && strcmp(info.cert.serial, first) != 0);
    CHECK(info.reloads_ok == 1 && info.reloads_failed == 0);
    sk_tls_conn_free(held); /* the old context lived on for it; freed with it (ASan checks) */
    snprintf(cmd, sizeof(cmd), "head -c 100 %s/server.pem > %s.tmp && mv %s.tmp %s", dir, cert, cert, cert);
    ASSERT(system(cmd) == 0);
    CHECK(sk_tls_slot_reload(t.state, err, sizeof(err)) == -1 && strstr(err, "cert"));
    sk_tls_slot_info_get(t.state, &info);
    CHECK(strcmp(info.cert.serial, "1092") == 0 && info.reloads_failed == 1 && info.last_error[0]);
    CHECK(sk_tls_slot_reload(t.state, err, sizeof(err)) == 0); /* the refused version is not retried */
    t.state_free(t.state);
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
    test_client_allowlist();
    test_gathered_writes();
    test_slot_reload();
    CHECK(mets.tls_handshakes[0][SK_TLS_OK] > 0 && mets.tls_handshakes[1][SK_TLS_OK] > 0);
    CHECK(mets.tls_handshakes[1][SK_TLS_UNKNOWN_CA] >= 1); /* test_untrusted_server */
    CHECK(mets.tls_handshakes[0][SK_TLS_NO_CLIENT_CERT] >= 1); /* test_client_cert_required */
    ev_loop_destroy(loop);
    sk_tls_thread_exit();
    sh("rm -rf %s%s", dir, "");
    printf("test_tls: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
