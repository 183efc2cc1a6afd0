/*
 * worker.c — worker threads: one libev loop each, their own SO_REUSEPORT
 * listening sockets, accept, free lists, the dead-connection reaper and the
 * drain sequence.
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
#include <unistd.h>

#include "plugin_host.h"
#include "lua_filter.h"
#include "worker.h"

static sk_worker *workers;
static int nworkers;
static int running;         /* atomic: workers whose loop still runs */
static int drain_requested; /* atomic */
/* open connections per listener across workers (atomic), by listener index */
static unsigned *listener_conns;

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
        unsigned *cnt = &listener_conns[l->index];
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
            sk_tcp_accept(w, l, fd, addr);
            continue;
        }
        sk_conn_accept(w, l, fd, (struct sockaddr *)&ss);
    }
}

/* Called by http1.c when a connection of listener l closes. */
void sk__listener_conn_closed(const sk_listener *l);
void sk__listener_conn_closed(const sk_listener *l)
{
    if (!listener_conns) return; /* connections made without sk_workers_start (fuzzers) */
    __atomic_sub_fetch(&listener_conns[l->index], 1, __ATOMIC_RELAXED);
}

static void close_listeners(sk_worker *w)
{
    for (size_t i = 0; i < w->config->nlisteners; i++) {
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
    sk_upstream_close_idle(w);
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

/* Frees connections closed during this loop iteration, before blocking. */
static void reap(struct ev_loop *loop, ev_prepare *p, int revents)
{
    sk_worker *w = p->data;
    for (size_t i = 0; i < w->ndead; i++) sk_conn_free(w->dead[i]);
    w->ndead = 0;
}

/* Queues a closed connection for freeing at the next safe point. */
void sk__worker_defer_free(sk_worker *w, sk_conn *c);
void sk__worker_defer_free(sk_worker *w, sk_conn *c)
{
    if (w->ndead == w->dead_cap) {
        size_t cap = w->dead_cap ? w->dead_cap * 2 : 64;
        sk_conn **d = realloc(w->dead, cap * sizeof(*d));
        if (!d) {
            /* Cannot defer: the connection is already fully closed and no
             * callback of it is on the stack of a reaper-less caller, so leak
             * it rather than risk a use-after-free. */
            sk_error("out of memory deferring a connection free");
            return;
        }
        w->dead = d;
        w->dead_cap = cap;
    }
    w->dead[w->ndead++] = c;
}

static void *worker_main(void *arg)
{
    sk_worker *w = arg;
    if (sk_plugins_worker_init(w->config, w->id, w->loop) < 0)
        sk_error("worker %d: a plugin failed to initialise; its hooks may misbehave", w->id);
    ev_run(w->loop, 0);
    sk_plugins_worker_fini(w->config, w->id);
    /* Drained: release what is left. */
    reap(w->loop, &w->reap, 0);
    sk_upstream_close_idle(w);
    sk_pools_free(w);
    /* The generation is released by the last holder: main, once every
     * worker is done (plugin destroy() then runs on the main thread). */
    sk_config_unref(w->config);
    w->config = NULL;
    __atomic_sub_fetch(&running, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Returns the next xorshift64* value of the worker. */
uint32_t sk_worker_rand(sk_worker *w)
{
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

/* Takes a read buffer from the worker's free list, or allocates one. */
char *sk_worker_buf_get(sk_worker *w)
{
    if (w->nfree_bufs > 0) return w->free_bufs[--w->nfree_bufs];
    return malloc(SK_READ_BUF);
}

/* Returns a read buffer to the free list (bounded), or frees it. */
void sk_worker_buf_put(sk_worker *w, char *buf)
{
    if (!buf) return;
    if (w->nfree_bufs < 64) {
        if (w->nfree_bufs == w->free_bufs_cap) {
            size_t cap = w->free_bufs_cap ? w->free_bufs_cap * 2 : 16;
            char **p = realloc(w->free_bufs, cap * sizeof(*p));
            if (!p) {
                free(buf);
                return;
            }
            w->free_bufs = p;
            w->free_bufs_cap = cap;
        }
        w->free_bufs[w->nfree_bufs++] = buf;
        return;
    }
    free(buf);
}

/* Allocates a request (recycled when possible) bound to connection c. */
sk_request *sk_request_new(sk_worker *w, sk_conn *c)
{
    sk_request *r;
    if (!sk_list_empty(&w->free_reqs)) {
        sk_link *l = w->free_reqs.next;
        sk_list_remove(l);
        r = SK_CONTAINER(l, sk_request, link);
    } else {
        r = calloc(1, sizeof(*r));
        if (!r) return NULL;
        sk_list_init(&r->link);
    }
    /* Reset everything but the reusable buffers. */
    sk_head head = r->head, rhead = r->rhead;
    sk_buf uphead = r->uphead;
    sk_arena arena = r->arena;
    memset(r, 0, sizeof(*r));
    sk_list_init(&r->link);
    r->head = head;
    r->rhead = rhead;
    r->uphead = uphead;
    r->arena = arena;
    sk_buf_reset(&r->head.raw);
    r->head.nhdrs = 0;
    r->head.in_value = false;
    r->head.done = false;
    r->head.trailer_bytes = 0;
    r->head.url = r->head.url_len = 0;
    sk_buf_reset(&r->rhead.raw);
    r->rhead.nhdrs = 0;
    r->rhead.in_value = false;
    r->rhead.done = false;
    r->rhead.trailer_bytes = 0;
    r->rhead.url = r->rhead.url_len = 0;
    sk_buf_reset(&r->uphead);
    r->worker = w;
    r->conn = c;
    r->config = c->config;
    sk_config_ref(r->config);
    return r;
}

static void head_free(sk_head *h)
{
    sk_buf_free(&h->raw);
    free(h->offs);
    free(h->views);
    memset(h, 0, sizeof(*h));
}

/* Returns a request to the free list; oversized buffers are released. */
void sk_request_free(sk_request *r)
{
    sk_worker *w = r->worker;
    if (ev_is_active(&r->timeout)) ev_timer_stop(w->loop, &r->timeout);
    if (r->lua_ref) sk_lua_request_done(r);
    sk_config_unref(r->config);
    r->config = NULL;
    if (r->head.raw.cap > 65536 || r->head.cap > 256) head_free(&r->head);
    if (r->rhead.raw.cap > 65536 || r->rhead.cap > 256) head_free(&r->rhead);
    if (r->uphead.cap > 65536) sk_buf_free(&r->uphead);
    sk_arena_reset(&r->arena);
    sk_list_insert(&w->free_reqs, &r->link);
}

static int worker_init(sk_worker *w, int id, sk_config *cfg, sk_metrics *m, int logfd, char **err)
{
    w->id = id;
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOSIGMASK);
    if (!w->loop) {
        *err = strdup("cannot create an event loop");
        return -1;
    }
    sk_config_ref(cfg);
    w->config = cfg;
    w->metrics = m;
    w->accesslog_fd = logfd;
    sk_list_init(&w->conns);
    sk_list_init(&w->tcp_conns);
    sk_list_init(&w->free_reqs);
    if (getrandom(&w->rng, sizeof(w->rng), 0) != sizeof(w->rng) || w->rng == 0)
        w->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)id << 32) ^ sk_now_ns();
    w->listeners = calloc(cfg->nlisteners, sizeof(*w->listeners));
    w->clusters = calloc(cfg->nclusters, sizeof(*w->clusters));
    if ((!w->listeners && cfg->nlisteners) || (!w->clusters && cfg->nclusters)) {
        *err = strdup("out of memory");
        return -1;
    }
    for (size_t i = 0; i < cfg->nclusters; i++) {
        sk_cluster *cl = cfg->clusters[i];
        sk_wcluster *wc = &w->clusters[i];
        SK_UNUSED(cl);
        wc->version = UINT64_MAX; /* pools are made from the endpoint set at first use */
        wc->rr = (uint32_t)id;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        sk_wlistener *wl = &w->listeners[i];
        wl->worker = w;
        wl->listener = cfg->listeners[i];
        wl->fd = bind_listener(cfg->listeners[i], err);
        if (wl->fd < 0) return -1;
        ev_io_init(&wl->io, on_accept, wl->fd, EV_READ);
        wl->io.data = wl;
        ev_io_start(w->loop, &wl->io);
    }
    ev_async_init(&w->wake, on_wake);
    w->wake.data = w;
    ev_async_start(w->loop, &w->wake);
    ev_async_init(&w->post, on_post);
    w->post.data = w;
    ev_async_start(w->loop, &w->post);
    ev_prepare_init(&w->reap, reap);
    w->reap.data = w;
    ev_prepare_start(w->loop, &w->reap);
    return 0;
}

/* Creates n workers, binds their sockets, then starts their threads. */
int sk_workers_start(sk_config *cfg, sk_metrics **metrics, int n, int accesslog_fd, char **err)
{
    workers = calloc((size_t)n, sizeof(*workers));
    listener_conns = calloc(cfg->nlisteners ? cfg->nlisteners : 1, sizeof(*listener_conns));
    if (!workers || !listener_conns) {
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

/* Queues cb(arg) on every worker and wakes them. Thread-safe. */
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
    return 0;
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
