/*
 * harness.h — the worker the HTTP fuzz targets drive (included by one
 * target each: everything here is static).
 *
 * A config is loaded from text with sk_config_load(); a worker is
 * assembled by hand on the fuzzer's thread as worker_init() in
 * core/runtime/worker.c does it, minus listening sockets, threads and the drain
 * async; connections are handed to sk_conn_accept() as accepted sockets
 * are. The loop only ever runs with EVRUN_NOWAIT; timeouts are fired by
 * hand (fuzz_fire_timers) instead of waiting for them.
 */
#ifndef SK_FUZZ_HARNESS_H
#define SK_FUZZ_HARNESS_H

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "generation.h"
#include "h2_server.h"
#include "request.h"
#include "server.h"
#include "worker.h"

/* main.c is not part of sidekick_core: admin.c needs these two. */
sk_server sk_srv;
void sk_server_drain(void) {}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static sk_worker fuzz_worker;
static const sk_listener *fuzz_listener; /* the config's first listener */
static bool fuzz_verbose;                /* SK_FUZZ_VERBOSE=1: print what peers received */

/* Peer sockets (client, fake upstreams) whose input is read and dropped
 * while the loop spins; -1 when unused. */
#define FUZZ_PEERS 8
static int fuzz_peers[FUZZ_PEERS] = {-1, -1, -1, -1, -1, -1, -1, -1};

static void fuzz_die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz: %s: %s\n", what, detail ? detail : strerror(errno));
    abort();
}

static void fuzz_setup(const char *config_text)
{
    signal(SIGPIPE, SIG_IGN);
    fuzz_verbose = getenv("SK_FUZZ_VERBOSE") != NULL;

    char dir[] = "/tmp/sk-fuzz-XXXXXX";
    if (!mkdtemp(dir)) fuzz_die("mkdtemp", NULL);
    char path[sizeof(dir) + 16];
    snprintf(path, sizeof(path), "%s/fuzz.ini", dir);
    FILE *f = fopen(path, "w");
    if (!f) fuzz_die("fopen", NULL);
    fputs(config_text, f);
    fclose(f);
    char *err = NULL;
    sk_config *cfg = sk_config_load(path, &err);
    unlink(path);
    rmdir(dir);
    if (!cfg) fuzz_die("config", err);
    sk_log_level = fuzz_verbose ? SK_LOG_DEBUG : SK_LOG_ERROR;

    /* sk_workers_start(…, 0 workers, …) starts and binds nothing, but
     * allocates the per-listener connection counters that
     * the worker's connection-closed hook (from sk_conn_close) decrements:
     * without it that is a NULL dereference. The counter is never
     * incremented here (on_accept does that), so it wraps; it is unsigned
     * and only read by on_accept, which never runs. */
    if (sk_workers_start(cfg, NULL, 0, -1, &err) < 0) fuzz_die("sk_workers_start", err);

    sk_worker *w = &fuzz_worker;
    sk_metrics *m = sk_metrics_new();
    if (!m) fuzz_die("sk_metrics_new", "out of memory");
    /* SK_FUZZ_ACCESSLOG=1: access log lines on stderr (exercises accesslog.c). */
    int logfd = getenv("SK_FUZZ_ACCESSLOG") ? 2 : -1;
    /* the worker's generation takes a reference; the load's stays */
    if (sk_worker_init_local(w, 0, cfg, m, logfd, &err) < 0) fuzz_die("sk_worker_init_local", err);
    w->rng = 0x9E3779B97F4A7C15ull; /* fixed: runs are reproducible */
    sk_metrics_assign_rows(cfg);
    fuzz_listener = cfg->listeners[0];
}

static void fuzz_add_peer(int fd)
{
    for (int i = 0; i < FUZZ_PEERS; i++)
        if (fuzz_peers[i] < 0) {
            fuzz_peers[i] = fd;
            return;
        }
    close(fd); /* more peers than expected: they see a reset */
}

static void fuzz_close_peer(int fd)
{
    for (int i = 0; i < FUZZ_PEERS; i++)
        if (fuzz_peers[i] == fd) fuzz_peers[i] = -1;
    close(fd);
}

/* Reads and drops what the proxy sent to every peer. Returns bytes read. */
static size_t fuzz_drain_peers(void)
{
    char buf[65536];
    size_t total = 0;
    for (int i = 0; i < FUZZ_PEERS; i++) {
        if (fuzz_peers[i] < 0) continue;
        ssize_t n;
        while ((n = read(fuzz_peers[i], buf, sizeof(buf))) > 0) {
            if (fuzz_verbose) fwrite(buf, 1, (size_t)n, stderr);
            total += (size_t)n;
        }
    }
    return total;
}

/* Called after every pass of the loop (a target may accept upstream
 * connections there). Returns true when it did something. */
static bool (*fuzz_on_pass)(void);

/* Runs the loop without blocking until three passes in a row change
 * nothing (bounded). */
static void fuzz_spin(void)
{
    int quiet = 0;
    for (int i = 0; i < 200 && quiet < 3; i++) {
        size_t nconns = fuzz_worker.nconns;
        ev_run(fuzz_worker.loop, EVRUN_NOWAIT);
        bool moved = fuzz_drain_peers() > 0;
        if (fuzz_on_pass && fuzz_on_pass()) moved = true;
        if (fuzz_worker.nconns != nconns || ev_pending_count(fuzz_worker.loop) > 0) moved = true;
        quiet = moved ? 0 : quiet + 1;
    }
}

/* Writes all of p to fd, spinning the loop while the socket is full. */
static void fuzz_write(int fd, const uint8_t *p, size_t n)
{
    int stuck = 0;
    while (n > 0 && stuck < 100) {
        ssize_t k = write(fd, p, n);
        if (k > 0) {
            p += (size_t)k;
            n -= (size_t)k;
            stuck = 0;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return; /* peer gone */
        fuzz_spin();
        stuck++;
    }
}

/* Writes p in slices chosen by `mode` (the target's first input byte), with
 * the loop spun after each, so chunk boundaries land everywhere: bits 0-1
 * are the number of cuts (0..3), bits 2-7 shift them; 0xf0..0xff on an
 * input of at most 512 bytes writes one byte at a time. */
static void fuzz_write_sliced(int fd, uint8_t mode, const uint8_t *p, size_t n)
{
    if (mode >= 0xf0 && n <= 512) {
        for (size_t i = 0; i < n; i++) {
            fuzz_write(fd, p + i, 1);
            fuzz_spin();
        }
        return;
    }
    size_t cuts[4], nc = 0, ncuts = mode & 3;
    for (size_t i = 1; i <= ncuts; i++) {
        size_t at = n * i / (ncuts + 1) + (size_t)(mode >> 2) * i;
        if (at > n) at = n;
        if (at > 0 && (nc == 0 || at > cuts[nc - 1])) cuts[nc++] = at;
    }
    if (nc == 0 || cuts[nc - 1] < n) cuts[nc++] = n;
    size_t off = 0;
    for (size_t i = 0; i < nc; i++) {
        fuzz_write(fd, p + off, cuts[i] - off);
        off = cuts[i];
        fuzz_spin();
    }
}

/* Fires a request's route (or paused filter) timeout when it runs. */
static void fuzz_fire_request_timer(void *rq, void *arg)
{
    sk_request *r = rq;
    bool *fired = arg;
    if (ev_is_active(&r->timeout)) {
        ev_feed_event(fuzz_worker.loop, &r->timeout, EV_TIMER);
        *fired = true;
    }
}

/* Fires the pending timeout of every open connection (route timeout
 * first, else header / idle / body timeout), as if the time had passed.
 * On an HTTP/2 connection: every stream's route timeout, else the
 * connection's timer. */
static void fuzz_fire_timers(void)
{
    sk_link *l = fuzz_worker.conns.next;
    while (l != &fuzz_worker.conns) {
        sk_conn *c = SK_CONTAINER(l, sk_conn, link);
        l = l->next;
        if (sk_conn_is_h2(c)) {
            bool fired = false;
            sk_h2_each_request(c, fuzz_fire_request_timer, &fired);
            if (!fired && ev_is_active(&c->timer)) ev_feed_event(fuzz_worker.loop, &c->timer, EV_TIMER);
            continue;
        }
        sk_request *r = c->rq;
        if (r && ev_is_active(&r->timeout))
            ev_feed_event(fuzz_worker.loop, &r->timeout, EV_TIMER);
        else if (ev_is_active(&c->timer))
            ev_feed_event(fuzz_worker.loop, &c->timer, EV_TIMER);
    }
}

/* Opens a client connection: returns the client's end. */
static int fuzz_connect_client(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        fuzz_die("socketpair", NULL);
    struct sockaddr_in peer;
    memset(&peer, 0, sizeof(peer));
    peer.sin_family = AF_INET;
    peer.sin_port = htons(40000);
    peer.sin_addr.s_addr = htonl(0x7f000001);
    sk_worker_accept_http(&fuzz_worker, fuzz_listener, sv[0], (const struct sockaddr *)&peer);
    fuzz_add_peer(sv[1]);
    return sv[1];
}

/* Ends an input: pending timeouts fire (twice: a 408 may follow a route
 * timeout), then the client half-closes (which cancels a request whose
 * response has not started, as a close does: so the timeouts come first),
 * the client closes, and whatever is still open is closed and freed, so no
 * connection carries over to the next input. The worker's free lists do
 * carry over, as in a long-running worker. */
static void fuzz_finish(int client)
{
    fuzz_spin();
    fuzz_fire_timers();
    fuzz_spin();
    fuzz_fire_timers();
    fuzz_spin();
    shutdown(client, SHUT_WR);
    fuzz_spin();
    fuzz_close_peer(client);
    fuzz_spin();
    while (!sk_list_empty(&fuzz_worker.conns))
        sk_conn_close(SK_CONTAINER(fuzz_worker.conns.next, sk_conn, link));
    fuzz_spin();
    sk_wctx_reap(&fuzz_worker.ctx);
    sk_worker_close_idle_upstreams(&fuzz_worker);
    for (int i = 0; i < FUZZ_PEERS; i++)
        if (fuzz_peers[i] >= 0) fuzz_close_peer(fuzz_peers[i]);
}

#endif
