/*
 * worker.c — worker threads: one libev loop each, their own SO_REUSEPORT
 * listening sockets, accept, the connections' owner (lists, generation
 * moves), the reaper of deferred frees, generations and reload switches,
 * and the drain sequence.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "filters.h"
#include "lua_filter.h"
#include "plugin_host.h"
#include "request.h"
#include "tcp.h"
#include "tls.h"
#include "worker.h"

static sk_worker *workers;
static int nworkers;
static int running;                     /* atomic: workers whose loop still runs */
static int drain_requested;             /* atomic */
static __thread sk_worker *this_worker; /* the worker running on this thread */
static int switches_pending;            /* reload messages not applied yet, over all workers (atomic) */

static int bind_listener(const sk_listener *l, char **err)
{
    int fd = socket(l->address.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto fail;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) goto fail;
    if (l->address.ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&l->address.ss, l->address.len) < 0) goto fail;
    if (listen(fd, 1024) < 0) goto fail;
    return fd;
fail:;
    int e = errno;
    if (fd >= 0) close(fd);
    char buf[512];
    snprintf(buf, sizeof(buf), "[listener %s] address: cannot listen on %s: %s", l->name, l->address.text,
             strerror(e));
    *err = strdup(buf);
    return -1;
}

static void on_wake(struct ev_loop *loop, ev_async *a, int revents);
static const sk_tcp_owner tcp_owner;

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_wlistener *wl = io->data;
    sk_worker *w = wl->worker;
    const sk_listener *l = wl->listener;
    if (SK_LOAD(drain_requested)) {
        /* Draining, and the wake-up has not been handled yet: accept nothing
         * more (what waits in the backlog is refused when the socket closes). */
        on_wake(loop, &w->wake, 0);
        return;
    }
    for (int i = 0; i < 64 && wl->fd >= 0; i++) {
        struct sockaddr_storage ss;
        socklen_t slen = sizeof(ss);
        int fd = accept4(wl->fd, (struct sockaddr *)&ss, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                sk_warn("accept on %s: %s", l->address.text, strerror(errno));
            return;
        }
        unsigned *cnt = (unsigned *)&l->active_conns;
        if (__atomic_add_fetch(cnt, 1, __ATOMIC_RELAXED) > l->max_connections) {
            __atomic_sub_fetch(cnt, 1, __ATOMIC_RELAXED);
            sk_debug("listener %s: max_connections %u reached, closing new connection", l->name,
                     l->max_connections);
            close(fd);
            continue;
        }
        if (l->protocol == SK_PROTO_TCP) {
            char addr[64] = "unknown", ip[46];
            if (ss.ss_family == AF_INET) {
                struct sockaddr_in *in = (struct sockaddr_in *)&ss;
                inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
                snprintf(addr, sizeof(addr), "%s:%u", ip, ntohs(in->sin_port));
            } else if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
                inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
                snprintf(addr, sizeof(addr), "[%s]:%u", ip, ntohs(in6->sin6_port));
            }
            sk_tcp_accept(&w->ctx, &tcp_owner, w, w->config, l, fd, addr);
            continue;
        }
        sk_worker_accept_http(w, l, fd, (struct sockaddr *)&ss);
    }
}

/* A connection of listener l closed. */
static void listener_conn_closed(const sk_listener *l)
{
    __atomic_sub_fetch((unsigned *)&l->active_conns, 1, __ATOMIC_RELAXED);
}

static void conn_closed(sk_conn *c);
static void conn_idle(sk_conn *c);
static const sk_conn_owner conn_owner = {.closed = conn_closed, .idle = conn_idle};

/* sk_tcp_owner: a relay starts / ends on worker `owner`. */
static void tcp_opened(void *owner, sk_link *link)
{
    sk_worker *w = owner;
    sk_list_insert(&w->tcp_conns, link);
    w->nconns++;
}

static void tcp_closed(void *owner, sk_link *link, const sk_listener *l)
{
    sk_worker *w = owner;
    listener_conn_closed(l);
    if (!link) return; /* never started */
    sk_list_remove(link);
    w->nconns--;
}

static const sk_tcp_owner tcp_owner = {.opened = tcp_opened, .closed = tcp_closed};

/* Takes over an accepted socket of an HTTP listener. */
void sk_worker_accept_http(sk_worker *w, const sk_listener *l, int fd, const struct sockaddr *sa)
{
    sk_conn *c = sk_conn_accept(&w->ctx, &conn_owner, &sk_proxy_server_cbs, l, w->config, fd, sa);
    if (!c) {
        listener_conn_closed(l);
        return;
    }
    sk_list_insert(&w->conns, &c->link);
    w->nconns++;
}

/* sk_conn_owner.closed: unlists c (sk_conn_close defers its free). */
static void conn_closed(sk_conn *c)
{
    sk_worker *w = (sk_worker *)c->worker;
    listener_conn_closed(c->listener);
    sk_list_remove(&c->link);
    w->nconns--;
}

static void close_listeners(sk_worker *w)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        sk_wlistener *wl = &w->listeners[i];
        if (wl->fd < 0) continue;
        ev_io_stop(w->loop, &wl->io);
        close(wl->fd);
        wl->fd = -1;
    }
}

static void drain_check(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_worker *w = t->data;
    if (w->nconns == 0) ev_break(loop, EVBREAK_ALL);
}

static void on_post(struct ev_loop *loop, ev_async *a, int revents);

static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    sk_worker *w = a->data;
    if (!SK_LOAD(drain_requested) || w->draining) return;
    w->draining = true;
    close_listeners(w);
    sk_worker_close_idle_upstreams(w);
    sk_link *l = w->conns.next;
    while (l != &w->conns) {
        sk_conn *c = SK_CONTAINER(l, sk_conn, link);
        l = l->next;
        sk_conn_drain(c);
    }
    ev_timer_init(&w->drain_timer, drain_check, 0., 0.02);
    w->drain_timer.data = w;
    ev_timer_again(loop, &w->drain_timer);
}

/* Runs the frees deferred during this loop iteration, before blocking. */
static void reap(struct ev_loop *loop, ev_prepare *p, int revents)
{
    sk_worker *w = p->data;
    sk_wctx_reap(&w->ctx);
}

/* ---- generations ---------------------------------------------------------------------- */

static sk_wgen *sk_wgen_new(sk_worker *w, sk_config *cfg)
{
    sk_wgen *g = calloc(1, sizeof(*g));
    if (!g) return NULL;
    g->clusters = calloc(cfg->nclusters ? cfg->nclusters : 1, sizeof(*g->clusters));
    if (!g->clusters) {
        free(g);
        return NULL;
    }
    for (size_t i = 0; i < cfg->nclusters; i++) sk_wcluster_init(&g->clusters[i], (uint32_t)w->id);
    sk_config_ref(cfg);
    g->config = cfg;
    return g;
}

/* Releases the worker's hold on a generation nothing here uses any more. */
static void wgen_free(sk_worker *w, sk_wgen *g)
{
    sk_pools_free(g->clusters, g->config->nclusters);
    sk_plugins_worker_fini(g->config, w->id);
    sk_debug("worker %d: released generation %llu", w->id, (unsigned long long)g->config->generation);
    sk_config_unref(g->config);
    free(g->clusters);
    free(g);
}

/* sk_wctx.cluster_state: the worker's state of cluster cl, in the
 * generation cl belongs to, or NULL. */
static void *cluster_state(sk_wctx *ctx, const void *cluster)
{
    sk_worker *w = (sk_worker *)ctx;
    const sk_cluster *cl = cluster;
    for (sk_wgen *g = w->gen; g; g = sk_wgen_next(w, g))
        if (g->config == cl->config) return &g->clusters[cl->index];
    return NULL;
}

/* Closes the idle pooled connections of every generation of w. */
void sk_worker_close_idle_upstreams(sk_worker *w)
{
    for (sk_wgen *g = w->gen; g; g = sk_wgen_next(w, g))
        sk_pools_close_idle(g->clusters, g->config->nclusters);
}

static bool same_listener(const sk_listener *a, const sk_listener *b)
{
    return a->protocol == b->protocol && strcmp(a->address.text, b->address.text) == 0;
}

/* The listener of cfg with l's address and protocol, or NULL. */
static const sk_listener *listener_like(const sk_config *cfg, const sk_listener *l)
{
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (same_listener(cfg->listeners[i], l)) return cfg->listeners[i];
    return NULL;
}

/* Moves an idle connection to the worker's current generation, or ends
 * it when its listener is gone. */
static void adopt_generation(sk_conn *c)
{
    sk_worker *w = (sk_worker *)c->worker;
    sk_config *nc = w->config;
    if (c->config == nc || c->dead || c->closing) return;
    const sk_listener *nl = listener_like(nc, c->listener);
    if (!nl) { /* the listener was removed: this connection ends after its request */
        sk_conn_close_when_flushed(c);
        return;
    }
    __atomic_sub_fetch((unsigned *)&c->listener->active_conns, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch((unsigned *)&nl->active_conns, 1, __ATOMIC_RELAXED);
    sk_conn_set_generation(c, nc, nl);
}

/* sk_conn_owner.idle: between two requests, a connection of an older
 * generation moves to the current one. */
static void conn_idle(sk_conn *c)
{
    adopt_generation(c);
}

/* Does anything of this worker still use generation cfg? With `cut`, closes
 * what does (drain_timeout reached). */
static bool generation_used(sk_worker *w, const sk_config *cfg, bool cut)
{
    bool used = false;
    sk_link *l = w->conns.next;
    while (l != &w->conns) {
        sk_conn *c = SK_CONTAINER(l, sk_conn, link);
        l = l->next;
        if (c->dead) continue;
        /* a connection moves only between requests: its request runs on its
         * generation (an HTTP/2 connection never moves: its streams finish
         * after a GOAWAY) */
        if (c->config == cfg) {
            used = true;
            if (cut) sk_conn_cut(c, "drain_timeout");
        }
    }
    return sk_tcp_uses_generation(&w->tcp_conns, cfg, cut) || used;
}

static void on_retire_check(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_worker *w = t->data;
    uint64_t now = sk_now_ms();
    for (sk_wgen **pg = &w->retired; *pg;) {
        sk_wgen *g = *pg;
        bool late = now - g->retired_ms > w->config->drain_timeout_ms;
        if (generation_used(w, g->config, late)) {
            if (late)
                sk_warn("worker %d: drain_timeout reached: closed connections still on generation %llu",
                        w->id, (unsigned long long)g->config->generation);
            pg = &g->next;
            continue;
        }
        *pg = g->next;
        wgen_free(w, g);
    }
    if (!w->retired) ev_timer_stop(loop, t);
}

/* A new generation to switch to, for every worker. */
typedef struct reload_msg {
    sk_config *config; /* reference, dropped by the last worker */
    int *fds;          /* [worker][listener] new sockets, -1 = keep the old one */
    int remaining;     /* workers that have not switched yet (atomic) */
} reload_msg;

static void free_reload_msg(reload_msg *m, int nw)
{
    for (int i = 0; i < nw * (int)m->config->nlisteners; i++)
        if (m->fds[i] >= 0) close(m->fds[i]);
    free(m->fds);
    sk_config_unref(m->config);
    free(m);
}

static void start_listener(sk_worker *w, sk_wlistener *wl)
{
    ev_io_init(&wl->io, on_accept, wl->fd, EV_READ);
    wl->io.data = wl;
    ev_io_start(w->loop, &wl->io);
}

/* The worker's side of a reload: runs on its loop (a safe point). */
static void apply_reload(void *arg)
{
    reload_msg *m = arg;
    sk_worker *w = this_worker;
    sk_config *nc = m->config;
    size_t n = nc->nlisteners;
    sk_wlistener *nl = calloc(n ? n : 1, sizeof(*nl));
    sk_wgen *g = sk_wgen_new(w, nc);
    if (!nl || !g) {
        /* Out of memory: this worker stays on the old generation. */
        sk_error("worker %d: out of memory switching to generation %llu", w->id,
                 (unsigned long long)nc->generation);
        free(nl);
        free(g);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        sk_wlistener *wl = &nl[i];
        wl->worker = w;
        wl->listener = nc->listeners[i];
        int *fd = &m->fds[(size_t)w->id * n + i];
        wl->fd = *fd;
        *fd = -1; /* the worker owns it now */
        for (size_t j = 0; wl->fd < 0 && j < w->nlisteners; j++) {
            sk_wlistener *old = &w->listeners[j];
            if (old->fd >= 0 && same_listener(old->listener, wl->listener)) {
                ev_io_stop(w->loop, &old->io);
                wl->fd = old->fd; /* same address: the socket and its backlog stay */
                old->fd = -1;
            }
        }
        if (wl->fd >= 0 && !w->draining) start_listener(w, wl);
    }
    close_listeners(w); /* those not carried over: removed listeners */
    free(w->listeners);
    w->listeners = nl;
    w->nlisteners = n;

    if (sk_plugins_worker_init(nc, w->id, w->loop) < 0)
        sk_error("worker %d: a plugin failed to initialise; its hooks may misbehave", w->id);
    sk_lua_worker_prepare(nc, w->id);
    sk_wgen *old = w->gen;
    sk_pools_retire(old->clusters, old->config->nclusters);
    old->retired_ms = sk_now_ms();
    old->next = w->retired;
    w->retired = old;
    w->gen = g;
    w->config = nc;
    /* Idle keep-alive connections move now; busy ones after their request.
     * HTTP/2 connections get a graceful GOAWAY: their open streams finish
     * on this generation, and the clients reconnect to the new one (as
     * nginx and HAProxy reloads do). */
    sk_link *l = w->conns.next;
    while (l != &w->conns) {
        sk_conn *c = SK_CONTAINER(l, sk_conn, link);
        l = l->next;
        if (sk_conn_is_h2(c)) {
            sk_conn_drain(c);
        } else if (!c->req) {
            adopt_generation(c);
        } else {
            /* busy: moves after its request, or ends then if its listener is gone */
            if (!listener_like(nc, c->listener)) c->req->close_after = true;
        }
    }
    ev_timer_again(w->loop, &w->retire_timer);
    on_retire_check(w->loop, &w->retire_timer, 0);
done:
    __atomic_sub_fetch(&switches_pending, 1, __ATOMIC_RELEASE);
    if (__atomic_sub_fetch(&m->remaining, 1, __ATOMIC_ACQ_REL) == 0) free_reload_msg(m, nworkers);
}

bool sk_workers_wait_switched(uint64_t timeout_ms)
{
    uint64_t deadline = sk_now_ms() + timeout_ms;
    while (__atomic_load_n(&switches_pending, __ATOMIC_ACQUIRE) > 0) {
        if (sk_now_ms() >= deadline) return false;
        struct timespec ts = {0, 200000}; /* 0.2 ms */
        nanosleep(&ts, NULL);
    }
    return true;
}

int sk_workers_reload(sk_config *cur, sk_config *next, char **err)
{
    size_t n = next->nlisteners;
    reload_msg *m = calloc(1, sizeof(*m));
    int *fds = calloc((size_t)nworkers * (n ? n : 1), sizeof(int));
    if (!m || !fds) {
        free(m);
        free(fds);
        *err = strdup("out of memory");
        return -1;
    }
    for (size_t i = 0; i < (size_t)nworkers * n; i++) fds[i] = -1;
    m->fds = fds;
    m->config = next;
    m->remaining = nworkers;
    sk_config_ref(next);
    for (size_t i = 0; i < n; i++) {
        bool kept = listener_like(cur, next->listeners[i]) != NULL;
        for (int k = 0; !kept && k < nworkers; k++) {
            if ((fds[(size_t)k * n + i] = bind_listener(next->listeners[i], err)) < 0) {
                free_reload_msg(m, nworkers);
                return -1;
            }
        }
    }
    __atomic_add_fetch(&switches_pending, nworkers, __ATOMIC_RELEASE);
    if (sk_workers_post(apply_reload, m) < 0) {
        __atomic_sub_fetch(&switches_pending, nworkers, __ATOMIC_RELEASE);
        free_reload_msg(m, nworkers);
        *err = strdup("out of memory");
        return -1;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    sk_worker *w = arg;
    this_worker = w;
    if (sk_plugins_worker_init(w->config, w->id, w->loop) < 0)
        sk_error("worker %d: a plugin failed to initialise; its hooks may misbehave", w->id);
    sk_lua_worker_prepare(w->config, w->id);
    ev_run(w->loop, 0);
    /* Drained: release what is left. */
    reap(w->loop, &w->reap, 0);
    sk_worker_close_idle_upstreams(w);
    while (w->retired) {
        sk_wgen *g = w->retired;
        w->retired = g->next;
        wgen_free(w, g);
    }
    /* The generation is released by the last holder: main, once every
     * worker is done (plugin destroy() then runs on the main thread). */
    wgen_free(w, w->gen);
    w->gen = NULL;
    w->config = NULL;
    sk_wctx_free(&w->ctx); /* the recycled read buffers and the deferred-free list */
    sk_tls_thread_exit();
    __atomic_sub_fetch(&running, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Sets up a worker on the calling thread, without listeners (see worker.h). */
int sk_worker_init_local(sk_worker *w, int id, sk_config *cfg, sk_metrics *m, int logfd, char **err)
{
    w->id = id;
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOSIGMASK);
    if (!w->loop) {
        *err = strdup("cannot create an event loop");
        return -1;
    }
    w->cluster_state = cluster_state;
    sk_filters_register(&sk_ext_filter_ops); /* the request layer calls plugins and Lua through it */
    w->gen = sk_wgen_new(w, cfg);
    w->config = cfg;
    w->metrics = m;
    w->accesslog_fd = logfd;
    sk_list_init(&w->conns);
    sk_list_init(&w->tcp_conns);
    sk_list_init(&w->free_reqs);
    if (getrandom(&w->rng, sizeof(w->rng), 0) != sizeof(w->rng) || w->rng == 0)
        w->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)id << 32) ^ sk_now_ns();
    ev_prepare_init(&w->reap, reap);
    w->reap.data = w;
    ev_prepare_start(w->loop, &w->reap);
    if (!w->gen) {
        *err = strdup("out of memory");
        return -1;
    }
    return 0;
}

static int worker_init(sk_worker *w, int id, sk_config *cfg, sk_metrics *m, int logfd, char **err)
{
    if (sk_worker_init_local(w, id, cfg, m, logfd, err) < 0) return -1;
    w->listeners = calloc(cfg->nlisteners ? cfg->nlisteners : 1, sizeof(*w->listeners));
    if (!w->listeners) {
        *err = strdup("out of memory");
        return -1;
    }
    w->nlisteners = cfg->nlisteners;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        sk_wlistener *wl = &w->listeners[i];
        wl->worker = w;
        wl->listener = cfg->listeners[i];
        wl->fd = bind_listener(cfg->listeners[i], err);
        if (wl->fd < 0) return -1;
        start_listener(w, wl);
    }
    ev_timer_init(&w->retire_timer, on_retire_check, 0., 0.1);
    w->retire_timer.data = w;
    ev_async_init(&w->wake, on_wake);
    w->wake.data = w;
    ev_async_start(w->loop, &w->wake);
    ev_async_init(&w->post, on_post);
    w->post.data = w;
    ev_async_start(w->loop, &w->post);
    return 0;
}

/* Creates n workers, binds their sockets, then starts their threads. */
int sk_workers_start(sk_config *cfg, sk_metrics **metrics, int n, int accesslog_fd, char **err)
{
    workers = calloc((size_t)n, sizeof(*workers));
    if (!workers) {
        *err = strdup("out of memory");
        return -1;
    }
    nworkers = n;
    for (int i = 0; i < n; i++)
        if (worker_init(&workers[i], i, cfg, metrics[i], accesslog_fd, err) < 0) return -1;
    running = n;
    for (int i = 0; i < n; i++) {
        int e = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
        if (e != 0) {
            char buf[128];
            snprintf(buf, sizeof(buf), "cannot start worker thread: %s", strerror(e));
            *err = strdup(buf);
            return -1;
        }
        char name[16];
        snprintf(name, sizeof(name), "sk-worker-%u", (unsigned)i % 1000u);
        pthread_setname_np(workers[i].thread, name);
    }
    return 0;
}

/* Work posted to the workers (host->post_to_workers): a list per worker. */
typedef struct post_item {
    struct post_item *next;
    void (*cb)(void *);
    void *arg;
} post_item;

static pthread_mutex_t post_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_post(struct ev_loop *loop, ev_async *a, int revents)
{
    sk_worker *w = a->data;
    pthread_mutex_lock(&post_lock);
    post_item *list = w->posted;
    w->posted = NULL;
    pthread_mutex_unlock(&post_lock);
    /* the list is newest first: run in posting order */
    post_item *rev = NULL;
    while (list) {
        post_item *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    while (rev) {
        post_item *next = rev->next;
        rev->cb(rev->arg);
        free(rev);
        rev = next;
    }
}

/* Queues cb(arg) on every worker and wakes them. Thread-safe. Returns the
 * number of workers it was queued for, or -1. */
int sk_workers_post(void (*cb)(void *), void *arg)
{
    if (nworkers == 0) return -1;
    post_item *items[256];
    int n = nworkers > 256 ? 256 : nworkers;
    for (int i = 0; i < n; i++) {
        items[i] = malloc(sizeof(post_item));
        if (!items[i]) {
            while (i-- > 0) free(items[i]);
            return -1;
        }
        items[i]->cb = cb;
        items[i]->arg = arg;
    }
    pthread_mutex_lock(&post_lock);
    for (int i = 0; i < n; i++) {
        items[i]->next = workers[i].posted;
        workers[i].posted = items[i];
    }
    pthread_mutex_unlock(&post_lock);
    for (int i = 0; i < n; i++) ev_async_send(workers[i].loop, &workers[i].post);
    return n;
}

/* Sets the drain flag and wakes every worker. Thread-safe. */
void sk_workers_drain(void)
{
    __atomic_store_n(&drain_requested, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < nworkers; i++) ev_async_send(workers[i].loop, &workers[i].wake);
}

/* Workers whose loop has not returned yet. */
int sk_workers_running(void)
{
    return __atomic_load_n(&running, __ATOMIC_ACQUIRE);
}
