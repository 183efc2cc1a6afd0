/* Full TLS handshakes per second: one new connection per request (tests/bench/tls/bench-tls).
 *
 *   hsload HOST PORT CONCURRENCY SECONDS MAXCONNS CERT KEY GROUPS CIPHERSUITES PATH
 *
 * Keeps CONCURRENCY connections in flight; each one: TCP connect, a full TLS 1.3 handshake
 * (OpenSSL client, no session resumption: the client keeps no session and offers no ticket)
 * presenting CERT/KEY as client certificate, offering only GROUPS for the key exchange and
 * CIPHERSUITES; then `GET PATH` with `Connection: close`, the whole response read (status
 * 200 and Content-Length bytes of body required), close_notify, close. Stops after SECONDS or
 * MAXCONNS connections started, whichever comes first, and waits (bounded) for the ones in
 * flight. The server certificate is not verified by the client (the measurement is of the
 * server; the client also skips the work of checking the chain); the server's
 * CertificateVerify signature is still checked by OpenSSL, as in every TLS 1.3 handshake.
 *
 * Output, one `key value` per line: done, failed, seconds, rate (connections/s),
 * client_cpu_us (this process's own CPU time per connection: when it nears 1e6 / rate the
 * client, not the server, sets the rate), then
 * version, cipher and group of the first connection, and the first error if any.
 * Exit status 1 when any connection failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, HANDSHAKE, WRITING, READING, SHUTDOWN };

struct conn {
    int fd, state, used;
    unsigned events; /* epoll interest */
    SSL *ssl;
    char buf[4096];
    size_t len, want; /* bytes of the response read, total expected (0 = head not complete) */
};

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static int ep;
static char req[512];
static size_t reqlen;
static long done, failed, started;
static char first_err[256], version[32], cipher[64], group[64];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(struct conn *c, const char *why)
{
    if (!first_err[0]) {
        unsigned long e = ERR_peek_error();
        snprintf(first_err, sizeof first_err, "%s (state %d, %s)", why, c->state,
                 e ? ERR_error_string(e, NULL) : strerror(errno));
    }
    ERR_clear_error();
    failed++;
}

/* Wait for what OpenSSL asked for (or for the connect to complete): level-triggered epoll
 * with only that interest, so that the loop sleeps instead of spinning on a writable socket. */
static void want(struct conn *c, unsigned ev)
{
    if (c->events == ev) return;
    c->events = ev;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void finish(struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->ssl) SSL_free(c->ssl);
    close(c->fd);
    c->ssl = NULL;
    c->used = 0;
}

static void start(struct conn *c)
{
    memset(c, 0, sizeof *c);
    c->used = 1;
    started++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        fail(c, "connect");
        finish(c);
    }
}

/* Parse the response head once it is complete: 200 and Content-Length. */
static int head_done(struct conn *c)
{
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return c->len < sizeof c->buf - 1 ? 0 : -1;
    if (c->len < 12 || memcmp(c->buf + 9, "200", 3) != 0) return -1;
    c->buf[c->len] = 0;
    char *cl = strcasestr(c->buf, "\r\ncontent-length:");
    if (!cl || cl > end) return -1;
    c->want = (size_t)(end + 4 - c->buf) + strtoul(cl + 17, NULL, 10);
    return 1;
}

static void step(struct conn *c)
{
    int r = 0, e;
    for (;;) {
        switch (c->state) {
        case CONNECTING: {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            if (err) {
                errno = err;
                fail(c, "connect");
                finish(c);
                return;
            }
            c->ssl = SSL_new(ctx);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_tlsext_host_name(c->ssl, "localhost");
            c->state = HANDSHAKE;
            continue;
        }
        case HANDSHAKE:
            r = SSL_connect(c->ssl);
            if (r == 1) {
                if (!version[0]) {
                    snprintf(version, sizeof version, "%s", SSL_get_version(c->ssl));
                    snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(c->ssl));
                    int nid = SSL_get_negotiated_group(c->ssl);
                    snprintf(group, sizeof group, "%s", nid ? OBJ_nid2sn(nid) : "?");
                }
                c->state = WRITING;
                continue;
            }
            break;
        case WRITING:
            r = SSL_write(c->ssl, req, (int)reqlen);
            if (r == (int)reqlen) {
                c->state = READING;
                continue;
            }
            break;
        case READING:
            r = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof c->buf - 1 - c->len));
            if (r > 0) {
                c->len += (size_t)r;
                if (!c->want) {
                    int h = head_done(c);
                    if (h < 0) {
                        fail(c, "bad response");
                        finish(c);
                        return;
                    }
                    if (!h) continue;
                }
                if (c->len >= c->want) {
                    done++;
                    c->state = SHUTDOWN;
                    continue;
                }
                if (c->len > sizeof c->buf / 2) { /* body bytes are only counted */
                    c->want -= c->len;
                    c->len = 0;
                }
                continue;
            }
            break;
        case SHUTDOWN:
            SSL_shutdown(c->ssl); /* close_notify; the peer's is not awaited */
            finish(c);
            return;
        }
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            want(c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
            return;
        }
        fail(c, c->state == HANDSHAKE ? "handshake" : c->state == WRITING ? "write" : "read");
        finish(c);
        return;
    }
}

int main(int argc, char **argv)
{
    if (argc != 11) {
        fprintf(stderr, "usage: hsload HOST PORT CONCURRENCY SECONDS MAXCONNS CERT KEY GROUPS CIPHERSUITES PATH\n");
        return 2;
    }
    int conc = atoi(argv[3]);
    double secs = atof(argv[4]);
    long maxconns = atol(argv[5]);
    if (conc < 1 || conc > 1024 || secs <= 0 || secs > 600 || maxconns < 1) {
        fprintf(stderr, "hsload: bad CONCURRENCY/SECONDS/MAXCONNS\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    reqlen = (size_t)snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", argv[10]);

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, argv[6]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[7], SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_set1_groups_list(ctx, argv[8]) != 1 || SSL_CTX_set_ciphersuites(ctx, argv[9]) != 1) {
        ERR_print_errors_fp(stderr);
        return 2;
    }
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);

    ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)conc, sizeof *cs);
    double t0 = now(), stop = t0 + secs, hard = stop + 10;
    for (int i = 0; i < conc; i++) start(&cs[i]);
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        int live = 0;
        for (int i = 0; i < conc; i++) {
            if (!cs[i].used && t < stop && started < maxconns) start(&cs[i]);
            live += cs[i].used;
        }
        if (!live || t > hard) break;
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->used) step(c);
        }
    }
    double el = now() - t0;
    for (int i = 0; i < conc; i++)
        if (cs[i].used) {
            fail(&cs[i], "timed out");
            finish(&cs[i]);
        }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                 ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
    printf("done %ld\nfailed %ld\nseconds %.3f\nrate %.1f\n", done, failed, el, done / el);
    printf("client_cpu_us %.1f\n", done ? cpu * 1e6 / (double)done : 0.0); /* this process, per connection */
    printf("version %s\ncipher %s\ngroup %s\n", version[0] ? version : "-", cipher[0] ? cipher : "-",
           group[0] ? group : "-");
    if (first_err[0]) printf("error %s\n", first_err);
    return failed ? 1 : 0;
}
