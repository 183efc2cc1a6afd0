/*
 * fuzz_http1.c — libFuzzer target for the downstream HTTP/1 codec (http1.c)
 * and what it drives (proxy.c, upstream.c, accesslog.c).
 *
 * The input is the byte stream a client sends on one connection. The real
 * code path is used: a config is loaded from a file with sk_config_load(),
 * a worker is assembled by hand on the fuzzer's thread (no worker threads,
 * no listening socket), and each input gets one socketpair whose server end
 * goes through sk_conn_accept() exactly as an accepted TCP socket would.
 *
 * The routes make every part of the request path reachable without a real
 * upstream:
 *   GET /ok          → `respond = 200 ok` (local reply)
 *   /up/...          → cluster "dead" at 127.0.0.1:1 (refused: 502, retried once)
 *   anything else    → 404 no_route
 * and the listener has small limits (4k head, 20 headers, 1k body) so the
 * limit paths are reached with short inputs.
 *
 * Per input: the first byte chooses where the rest is cut into up to four
 * writes (so the parser sees chunk boundaries everywhere); after each write
 * the loop runs with EVRUN_NOWAIT until nothing moves; then the client
 * half-closes (a complete request is still answered), then any timer of
 * the connection is fired by hand (header / idle / route timeouts), then
 * the client closes and whatever is left is closed and reaped, so no state
 * carries over to the next input except the worker's free lists — which is
 * what a long-running worker looks like anyway.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"
#include "worker.h"

/* main.c is not part of sidekick_core: admin.c needs these two. */
sk_server sk_srv;
void sk_server_drain(void) {}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config_text[] =
    "[sidekick]\n"
    "workers = 1\n"
    "admin = off\n"
    "log_level = error\n"
    "access_log = off\n"
    "\n"
    "[listener fuzz]\n"
    "address = 127.0.0.1:39999\n"
    "max_header_bytes = 4k\n"
    "max_headers = 20\n"
    "max_body_bytes = 1k\n"
    "\n"
    "[route ok]\n"
    "listener = fuzz\n"
    "path = /ok\n"
    "respond = 200 ok\n"
    "\n"
    "[route refused]\n"
    "listener = fuzz\n"
    "prefix = /up\n"
    "rewrite_prefix = /\n"
    "cluster = dead\n"
    "timeout = 5s\n"
    "retries = 1\n"
    "\n"
    "[route hdr]\n"
    "listener = fuzz\n"
    "prefix = /h\n"
    "header = x-fuzz: yes\n"
    "method = GET, POST\n"
    "host = *.example.com\n"
    "respond = 204\n"
    "\n"
    "[cluster dead]\n"
    "endpoints = 127.0.0.1:1\n"
    "connect_timeout = 1s\n";

static sk_worker worker;
static const sk_listener *listener;
static bool initialised;
static bool verbose; /* SK_FUZZ_VERBOSE=1: print what the proxy answered */

/* The worker's reaper (worker.c's is static): frees dead connections. */
static void reap(struct ev_loop *loop, ev_prepare *p, int revents)
{
    sk_worker *w = p->data;
    for (size_t i = 0; i < w->ndead; i++) sk_conn_free(w->dead[i]);
    w->ndead = 0;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_http1: %s: %s\n", what, detail ? detail : strerror(errno));
    abort();
}

static void setup(void)
{
    if (initialised) return;
    initialised = true;
    signal(SIGPIPE, SIG_IGN);
    verbose = getenv("SK_FUZZ_VERBOSE") != NULL;
    sk_log_level = SK_LOG_ERROR;

    char dir[] = "/tmp/sk-fuzz-http1-XXXXXX";
    if (!mkdtemp(dir)) die("mkdtemp", NULL);
    char path[sizeof(dir) + 16];
    snprintf(path, sizeof(path), "%s/fuzz.ini", dir);
    FILE *f = fopen(path, "w");
    if (!f) die("fopen", NULL);
    fputs(config_text, f);
    fclose(f);
    char *err = NULL;
    sk_config *cfg = sk_config_load(path, &err);
    unlink(path);
    rmdir(dir);
    if (!cfg) die("config", err);
    sk_log_level = SK_LOG_ERROR; /* log_level in the file is applied by main.c only */

    /* sk_workers_start(…, 0 workers, …) starts nothing and binds nothing,
     * but allocates the per-listener connection counters that
     * sk__listener_conn_closed() (called by sk_conn_close) decrements: without
     * it that is a NULL dereference. (The counter is never incremented here —
     * on_accept does that — so it wraps; it is unsigned and only read by
     * on_accept, which never runs.) */
    if (sk_workers_start(cfg, NULL, 0, -1, &err) < 0) die("sk_workers_start", err);

    /* What worker_init() does, minus listening sockets and the drain async. */
    sk_worker *w = &worker;
    w->id = 0;
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOSIGMASK);
    if (!w->loop) die("ev_loop_new", NULL);
    w->config = cfg; /* takes the load's reference */
    w->metrics = sk_metrics_new(cfg);
    if (!w->metrics) die("sk_metrics_new", "out of memory");
    w->accesslog_fd = -1;
    if (getenv("SK_FUZZ_ACCESSLOG")) w->accesslog_fd = 2; /* exercise accesslog.c too */
    sk_list_init(&w->conns);
    sk_list_init(&w->tcp_conns);
    sk_list_init(&w->free_reqs);
    w->rng = 0x9E3779B97F4A7C15ull; /* deterministic: reproducible runs */
    w->clusters = calloc(cfg->nclusters, sizeof(*w->clusters));
    if (!w->clusters && cfg->nclusters) die("calloc", NULL);
    for (size_t i = 0; i < cfg->nclusters; i++) {
        sk_cluster *cl = cfg->clusters[i];
        sk_wcluster *wc = &w->clusters[i];
        wc->pools = calloc(cl->nendpoints, sizeof(*wc->pools));
        if (!wc->pools) die("calloc", NULL);
        for (size_t e = 0; e < cl->nendpoints; e++) {
            sk_list_init(&wc->pools[e].idle);
            wc->pools[e].cluster = cl;
            wc->pools[e].endpoint = &cl->endpoints[e];
        }
    }
    ev_prepare_init(&w->reap, reap);
    w->reap.data = w;
    ev_prepare_start(w->loop, &w->reap);
    listener = cfg->listeners[0];
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setup();
    return 0;
}

/* Reads and drops whatever the proxy wrote. Returns bytes read, -1 at EOF. */
static ssize_t drain_client(int fd)
{
    char buf[65536];
    ssize_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            if (verbose) fwrite(buf, 1, (size_t)n, stderr);
            total += n;
            continue;
        }
        if (n == 0) return total ? total : -1;
        return total; /* EAGAIN, or an error: nothing more now */
    }
}

/* Runs the loop without blocking until a few passes change nothing. */
static void spin(int client)
{
    int quiet = 0;
    for (int i = 0; i < 200 && quiet < 3; i++) {
        size_t nconns = worker.nconns;
        ev_run(worker.loop, EVRUN_NOWAIT);
        ssize_t got = client >= 0 ? drain_client(client) : 0;
        bool moved = got > 0 || worker.nconns != nconns || ev_pending_count(worker.loop) > 0;
        quiet = moved ? 0 : quiet + 1;
    }
}

/* Writes all of p (the socket buffer is large; spins the loop if full). */
static void write_all(int fd, const uint8_t *p, size_t n)
{
    int stuck = 0;
    while (n > 0 && stuck < 100) {
        ssize_t k = write(fd, p, n);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            stuck = 0;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return; /* peer closed */
        spin(fd);
        stuck++;
    }
}

/* Fires the timers of every connection still open (header, idle, body and
 * route timeouts), as if the time had passed. */
static void fire_timers(void)
{
    sk_link *l = worker.conns.next;
    while (l != &worker.conns) {
        sk_conn *c = SK_CONTAINER(l, sk_conn, link);
        l = l->next;
        if (c->req && ev_is_active(&c->req->timeout))
            ev_feed_event(worker.loop, &c->req->timeout, EV_TIMER);
        else if (ev_is_active(&c->timer))
            ev_feed_event(worker.loop, &c->timer, EV_TIMER);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair", NULL);
    int client = sv[1];

    struct sockaddr_in peer;
    memset(&peer, 0, sizeof(peer));
    peer.sin_family = AF_INET;
    peer.sin_port = htons(40000);
    peer.sin_addr.s_addr = htonl(0x7f000001);
    sk_conn_accept(&worker, listener, sv[0], (const struct sockaddr *)&peer);

    /* Cut points: the first byte picks the number of cuts (bits 0-1: up to
     * 3) and shifts them (bits 2-7); 0xf0..0xff on a short input writes one
     * byte at a time. The rest of the input is the stream. */
    uint8_t mode = size ? data[0] : 0;
    const uint8_t *p = size ? data + 1 : data;
    size_t n = size ? size - 1 : 0;
    size_t cuts[4], nc = 0;
    if (mode >= 0xf0 && n <= 512) {
        for (size_t i = 0; i < n; i++) {
            write_all(client, p + i, 1);
            spin(client);
        }
        n = 0;
    }
    size_t ncuts = mode & 3;
    for (size_t i = 1; i <= ncuts; i++) {
        size_t at = n * i / (ncuts + 1) + (size_t)(mode >> 2) * i;
        if (at > n) at = n;
        if (at > 0 && (nc == 0 || at > cuts[nc - 1])) cuts[nc++] = at;
    }
    if (nc == 0 || cuts[nc - 1] < n) cuts[nc++] = n;

    size_t off = 0;
    for (size_t i = 0; i < nc && n > 0; i++) {
        write_all(client, p + off, cuts[i] - off);
        off = cuts[i];
        spin(client);
    }

    /* Half close: a whole request is still answered, a partial one aborted. */
    shutdown(client, SHUT_WR);
    spin(client);
    /* Whatever still waits (a body, a stalled head, an upstream) times out. */
    fire_timers();
    spin(client);
    fire_timers();
    spin(client);
    close(client);
    spin(-1);

    /* Nothing may survive the input: close the rest (as a timeout would). */
    while (!sk_list_empty(&worker.conns)) sk_conn_close(SK_CONTAINER(worker.conns.next, sk_conn, link));
    spin(-1);
    for (size_t i = 0; i < worker.ndead; i++) sk_conn_free(worker.dead[i]);
    worker.ndead = 0;
    sk_upstream_close_idle(&worker);
    return 0;
}
