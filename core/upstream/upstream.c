/*
 * upstream.c — connections to cluster endpoints: non-blocking connect with
 * connect_timeout, the per-worker keep-alive pool of each (cluster,
 * endpoint), writing the request, parsing the response with llhttp and
 * handing it to proxy.c. A connection goes back to the pool only when its
 * response was framed cleanly (length or chunked, keep-alive, nothing extra).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http1.h"
#include "worker.h"

#define SK_UP_MAX_HEADERS    200
#define SK_UP_MAX_HEAD_BYTES (64 * 1024)

static int on_status(llhttp_t *p, const char *at, size_t n);
static int on_header_field(llhttp_t *p, const char *at, size_t n);
static int on_header_value(llhttp_t *p, const char *at, size_t n);
static int on_headers_complete(llhttp_t *p);
static int on_body(llhttp_t *p, const char *at, size_t n);
static int on_message_complete(llhttp_t *p);

static const llhttp_settings_t resp_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void on_read(struct ev_loop *loop, ev_io *io, int revents);
static void on_write(struct ev_loop *loop, ev_io *io, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *t, int revents);

static void pool_free(sk_pool *p)
{
    free(p);
}

static void up_close(sk_upconn *u)
{
    sk_worker *w = u->worker;
    ev_io_stop(w->loop, &u->rio);
    ev_io_stop(w->loop, &u->wio);
    ev_timer_stop(w->loop, &u->timer);
    if (!sk_list_empty(&u->link)) {
        sk_list_remove(&u->link);
        u->pool->nidle--;
    }
    u->tr.ops->close(&u->tr);
    __atomic_sub_fetch((unsigned *)&u->pool->cluster->active_connections, 1, __ATOMIC_RELAXED);
    SK_DEC(w->metrics->upstream_active);
    sk_worker_buf_put(w, u->rbuf);
    sk_out_free(&u->out);
    sk_pool *p = u->pool;
    free(u);
    if (--p->conns == 0 && p->orphan && p->active == 0) pool_free(p);
}

/* Makes the worker's pools match the cluster's endpoint set when discovery
 * changed it: pools of endpoints that stay are kept (with their idle
 * connections), new endpoints get a pool, pools of endpoints that left are
 * orphaned: their idle connections close and they are freed with their
 * last connection. Returns 0, or -1 on OOM (the old set stays). */
static int adopt_endpoints(sk_cluster *cl, sk_wcluster *wc, sk_worker *w)
{
    pthread_mutex_lock(&cl->eps_lock);
    uint64_t version = __atomic_load_n(&cl->eps_version, __ATOMIC_ACQUIRE);
    size_t n = cl->neps;
    sk_pool **pools = calloc(n ? n : 1, sizeof(*pools));
    bool ok = pools != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        const sk_addr *a = &cl->eps[i];
        for (size_t j = 0; j < wc->npools && !pools[i]; j++) {
            if (wc->pools[j] && strcmp(wc->pools[j]->endpoint.address.text, a->text) == 0) {
                pools[i] = wc->pools[j];
                wc->pools[j] = NULL;
            }
        }
        if (!pools[i]) {
            if (!(pools[i] = calloc(1, sizeof(sk_pool)))) {
                ok = false;
                break;
            }
            sk_list_init(&pools[i]->idle);
            pools[i]->cluster = cl;
            pools[i]->endpoint.address = *a;
        }
    }
    pthread_mutex_unlock(&cl->eps_lock);
    if (!ok) {
        /* put the pools taken from the old set back; free the new ones */
        for (size_t i = 0; pools && i < n; i++) {
            if (!pools[i]) continue;
            bool back = false;
            for (size_t j = 0; j < wc->npools && !back; j++)
                if (!wc->pools[j] && pools[i]->endpoint.index == (int)j) wc->pools[j] = pools[i], back = true;
            if (!back && pools[i]->conns == 0 && pools[i]->active == 0) free(pools[i]);
        }
        free(pools);
        return -1;
    }
    for (size_t j = 0; j < wc->npools; j++) {
        sk_pool *p = wc->pools[j];
        if (!p) continue;
        p->orphan = true;
        if (p->conns == 0 && p->active == 0) {
            pool_free(p);
            continue;
        }
        /* closing the last idle connection of an unused pool frees it */
        while (!sk_list_empty(&p->idle)) {
            bool last = p->conns == 1 && p->active == 0;
            up_close(SK_CONTAINER(p->idle.next, sk_upconn, link));
            if (last) break;
        }
    }
    for (size_t i = 0; i < n; i++) pools[i]->endpoint.index = (int)i;
    free(wc->pools);
    wc->pools = pools;
    wc->npools = n;
    wc->version = version;
    sk_debug("worker %d: cluster %s now has %zu endpoint(s)", w->id, cl->name, n);
    return 0;
}

/* Picks the pool of an endpoint of cl by the cluster's lb policy, adopting
 * a changed endpoint set first. NULL when the cluster has no endpoint. */
sk_pool *sk_cluster_pick(sk_worker *w, sk_cluster *cl, const sk_pool *avoid)
{
    sk_wcluster *wc = sk_worker_wcluster(w, cl);
    if (!wc) return NULL;
    if (__atomic_load_n(&cl->eps_version, __ATOMIC_ACQUIRE) != wc->version) adopt_endpoints(cl, wc, w);
    size_t n = wc->npools;
    if (n == 0) return NULL;
    if (n == 1) return wc->pools[0];
    switch (cl->lb) {
    case SK_LB_RANDOM: return wc->pools[sk_worker_rand(w) % n];
    case SK_LB_LEAST_REQUEST: {
        /* power of two choices over this worker's in-flight counts */
        size_t a = sk_worker_rand(w) % n, b = sk_worker_rand(w) % n;
        if (a == b) b = (a + 1) % n;
        if (avoid && wc->pools[a] == avoid) a = b;
        return wc->pools[wc->pools[a]->active <= wc->pools[b]->active ? a : b];
    }
    default: return wc->pools[wc->rr++ % n];
    }
}

/* Frees a generation's pools (retired generation no request of this worker
 * uses any more, or exit): idle connections close; a pool still counting a
 * connection is orphaned and freed with it. */
void sk_pools_free(sk_worker *w, sk_wgen *g)
{
    for (size_t i = 0; i < g->config->nclusters; i++) {
        sk_wcluster *wc = &g->clusters[i];
        for (size_t j = 0; j < wc->npools; j++) {
            sk_pool *p = wc->pools[j];
            bool freed = false;
            p->orphan = true;
            while (!sk_list_empty(&p->idle) && !freed) {
                freed = p->conns == 1 && p->active == 0; /* closing the last one frees the pool */
                up_close(SK_CONTAINER(p->idle.next, sk_upconn, link));
            }
            if (!freed && p->conns == 0 && p->active == 0) pool_free(p);
        }
        free(wc->pools);
        wc->pools = NULL;
        wc->npools = 0;
    }
}

/* Closes the idle connections of a generation's pools (which stay). */
static void close_idle_of(sk_wgen *g)
{
    for (size_t i = 0; i < g->config->nclusters; i++) {
        sk_wcluster *wc = &g->clusters[i];
        for (size_t j = 0; j < wc->npools; j++) {
            sk_pool *p = wc->pools[j];
            while (!sk_list_empty(&p->idle)) up_close(SK_CONTAINER(p->idle.next, sk_upconn, link));
        }
    }
}

/* A generation stops being current: its pools keep serving the requests
 * already on them, but connections close instead of going back idle. */
void sk_pools_retire(sk_worker *w, sk_wgen *g)
{
    for (size_t i = 0; i < g->config->nclusters; i++)
        for (size_t j = 0; j < g->clusters[i].npools; j++) g->clusters[i].pools[j]->retired = true;
    close_idle_of(g);
}

static void start_read(sk_upconn *u)
{
    if (!u->reading) {
        ev_io_start(u->worker->loop, &u->rio);
        u->reading = true;
    }
}

/* Fails the request using u (if any) and closes u. */
static void up_fail(sk_upconn *u, int status, const char *reason, bool retryable)
{
    sk_request *r = u->req;
    if (!r) {
        up_close(u);
        return;
    }
    sk_conn *c = r->conn;
    /* proxy.c releases (and so closes) u through r->up. */
    sk_proxy_upstream_error(r, status, reason, retryable);
    sk_conn_flush(c);
}

/* Attaches a pooled or new connection to r->endpoint. Returns 0, -1 on an
 * immediate connect failure, -2 when the cluster's max_connections is hit. */
int sk_upstream_attach(sk_request *r)
{
    sk_worker *w = r->worker;
    sk_cluster *cl = r->cluster;
    sk_pool *pool = r->pool;
    sk_upconn *u = NULL;
    if (!sk_list_empty(&pool->idle)) {
        sk_link *l = pool->idle.next;
        sk_list_remove(l);
        pool->nidle--;
        u = SK_CONTAINER(l, sk_upconn, link);
        ev_timer_stop(w->loop, &u->timer);
        SK_INC(w->metrics->upstream_reused);
        r->up_reused = true;
        r->upstream_connect_ns = sk_now_ns();
    } else {
        if (__atomic_add_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED) > cl->max_connections) {
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            return -2;
        }
        /* max_pending: requests waiting for a new connection to come up. */
        if (__atomic_add_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED) > cl->max_pending) {
            __atomic_sub_fetch(&cl->active_pending, 1, __ATOMIC_RELAXED);
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            return -2;
        }
        r->counted_pending = true;
        const sk_addr *a = &pool->endpoint.address;
        int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        u = fd >= 0 ? calloc(1, sizeof(*u)) : NULL;
        if (!u) {
            if (fd >= 0) close(fd);
            __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
            sk_request_pending_done(r);
            return -1;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        r->up_reused = false;
        u->worker = w;
        u->pool = pool;
        pool->conns++;
        sk_list_init(&u->link);
        sk_transport_plain(&u->tr, fd);
        ev_io_init(&u->rio, on_read, fd, EV_READ);
        ev_io_init(&u->wio, on_write, fd, EV_WRITE);
        u->rio.data = u->wio.data = u;
        ev_init(&u->timer, on_timer);
        u->timer.data = u;
        SK_INC(w->metrics->upstream_active);
        SK_INC(w->metrics->upstream_opened);
        int rc = connect(fd, (const struct sockaddr *)&a->ss, a->len);
        if (rc < 0 && errno != EINPROGRESS) {
            sk_debug("connect to %s: %s", a->text, strerror(errno));
            up_close(u);
            return -1;
        }
        if (rc == 0) {
            u->connected = true;
            r->upstream_connect_ns = sk_now_ns();
            sk_request_pending_done(r);
            start_read(u);
        } else {
            ev_io_start(w->loop, &u->wio);
            u->timer.repeat = (double)cl->connect_timeout_ms / 1000.0;
            ev_timer_again(w->loop, &u->timer);
        }
    }
    pool->active++;
    llhttp_init(&u->parser, HTTP_RESPONSE, &resp_settings);
    u->parser.data = u;
    u->req = r;
    u->got_response_bytes = false;
    u->response_done = false;
    u->reusable = false;
    u->retry_response = false;
    u->filter_reply = false;
    u->requests++;
    r->up = u;
    if (sk_out_ref(&u->out, r->uphead.data, r->uphead.len) < 0) return -1;
    /* Written by the caller's flush (after the body pieces it may add). */
    return 0;
}

/* Writes queued request bytes; arms EV_WRITE for the rest and applies
 * back-pressure to the client. Returns -1 when u failed (and is gone). */
int sk_upstream_flush(sk_upconn *u)
{
    if (sk_out_flush(&u->out, u->connected ? &u->tr : NULL) < 0) {
        up_fail(u, 502, "upstream_reset", !u->got_response_bytes);
        return -1;
    }
    if (!u->connected) {
        if (u->req && sk_out_pending(&u->out) > SK_HIGH_WATER) sk_conn_pause_read(u->req->conn);
        return 0;
    }
    if (sk_out_pending(&u->out) > 0) {
        if (!ev_is_active(&u->wio)) ev_io_start(u->worker->loop, &u->wio);
        if (u->req && sk_out_pending(&u->out) > SK_HIGH_WATER) sk_conn_pause_read(u->req->conn);
    } else if (ev_is_active(&u->wio)) {
        ev_io_stop(u->worker->loop, &u->wio);
    }
    return 0;
}

/* The request is done with u: back to the pool (reuse) or closed. */
void sk_upstream_release(sk_upconn *u, bool reuse)
{
    sk_worker *w = u->worker;
    if (u->req) {
        u->pool->active--;
        u->req = NULL;
    }
    if (!reuse || u->pool->orphan || u->pool->retired || w->draining || !u->connected ||
        sk_out_pending(&u->out) > 0 || u->rpos != u->rlen) {
        up_close(u);
        return;
    }
    sk_worker_buf_put(w, u->rbuf);
    u->rbuf = NULL;
    u->rpos = u->rlen = 0;
    start_read(u); /* notice a close by the upstream while idle */
    u->timer.repeat = SK_UPSTREAM_IDLE_MS / 1000.0;
    ev_timer_again(w->loop, &u->timer);
    sk_list_insert(&u->pool->idle, &u->link);
    u->pool->nidle++;
}

/* Stops reading the upstream until the client catches up. */
void sk_upstream_pause_read(sk_upconn *u)
{
    if (u->reading) {
        ev_io_stop(u->worker->loop, &u->rio);
        u->reading = false;
    }
}

/* Resumes reading the upstream. */
void sk_upstream_resume_read(sk_upconn *u)
{
    if (u->connected) start_read(u);
}

/* Closes every idle pooled connection of the worker (drain, shutdown). */
void sk_upstream_close_idle(sk_worker *w)
{
    for (sk_wgen *g = w->gen; g; g = sk_wgen_next(w, g)) close_idle_of(g);
}

/* ---- response parser callbacks ---- */

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    sk_upconn *u = p->data;
    sk_head *h = &u->req->rhead;
    if (h->raw.len + n > SK_UP_MAX_HEAD_BYTES || sk_buf_append(&h->raw, at, n) < 0) return -1;
    h->url_len += (uint32_t)n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    sk_upconn *u = p->data;
    return sk_head_field(&u->req->rhead, at, n, SK_UP_MAX_HEADERS, SK_UP_MAX_HEAD_BYTES) ? -1 : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    sk_upconn *u = p->data;
    return sk_head_value(&u->req->rhead, at, n, SK_UP_MAX_HEAD_BYTES) ? -1 : 0;
}

static int on_headers_complete(llhttp_t *p)
{
    sk_upconn *u = p->data;
    sk_request *r = u->req;
    int status = p->status_code;
    if (status >= 100 && status < 200) {
        if (status == 101) return -1; /* never asked for an upgrade */
        /* Informational: dropped; the final response follows. */
        sk_buf_reset(&r->rhead.raw);
        r->rhead.nhdrs = 0;
        r->rhead.url_len = 0;
        r->rhead.in_value = false;
        return 0;
    }
    bool head = r->method_id == HTTP_HEAD;
    if (sk_proxy_retry_status(r, status)) {
        u->retry_response = true; /* read it whole, drop it, try again */
        return head ? 1 : 0;
    }
    bool no_body = head || status == 204 || status == 304;
    bool length = (p->flags & F_CONTENT_LENGTH) != 0;
    bool chunked = (p->flags & F_CHUNKED) != 0;
    int rc = sk_proxy_response_head(r, status, no_body, chunked, length, p->content_length);
    if (rc < 0) return -1;
    if (rc == 1) {
        u->filter_reply = true; /* a plugin answers instead: stop here, see on_read */
        return HPE_PAUSED;
    }
    return no_body ? 1 : 0; /* 1: tells llhttp there is no body, whatever the headers say */
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    sk_upconn *u = p->data;
    if (u->retry_response) return 0;
    return sk_proxy_response_body(u->req, at, n) < 0 ? -1 : 0;
}

static int on_message_complete(llhttp_t *p)
{
    sk_upconn *u = p->data;
    int status = p->status_code;
    if (status >= 100 && status < 200) return 0;
    u->response_done = true;
    return HPE_PAUSED;
}

/* ---- I/O ---- */

static void finish_response(sk_upconn *u, bool eof)
{
    sk_request *r = u->req;
    u->reusable = !eof && llhttp_should_keep_alive(&u->parser) && u->rpos == u->rlen;
    if (u->retry_response) {
        sk_conn *c = r->conn;
        r->up = NULL;
        sk_upstream_release(u, u->reusable && r->up_body_done);
        sk_proxy_retry(r);
        sk_conn_flush(c);
        return;
    }
    sk_proxy_response_end(r); /* may release and free u */
}

static void on_read(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_upconn *u = io->data;
    sk_worker *w = u->worker;
    if (!u->req) {
        /* Idle in the pool: the upstream closed it, or sent something it
         * should not have. Either way it is not reusable. */
        char b[1];
        ssize_t n = u->tr.ops->read(&u->tr, b, sizeof(b));
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        up_close(u);
        return;
    }
    if (!u->rbuf) {
        u->rbuf = sk_worker_buf_get(w);
        if (!u->rbuf) {
            up_fail(u, 502, "upstream_reset", false);
            return;
        }
        u->rpos = u->rlen = 0;
    }
    ssize_t n = u->tr.ops->read(&u->tr, u->rbuf, SK_READ_BUF);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    sk_request *r = u->req;
    sk_conn *c = r->conn;
    if (n <= 0) {
        if (n == 0 && (r->response_started || u->retry_response) && llhttp_message_needs_eof(&u->parser)) {
            /* Body delimited by the connection close. */
            llhttp_finish(&u->parser);
            u->rpos = u->rlen = 0;
            finish_response(u, true);
            return;
        }
        bool retry = !u->got_response_bytes && !r->response_started;
        sk_debug("upstream %s closed the connection%s", u->pool->endpoint.address.text,
                 u->got_response_bytes ? " mid-response" : " before responding");
        up_fail(u, 502, "upstream_reset", retry);
        return;
    }
    if (!u->got_response_bytes) r->upstream_first_byte_ns = sk_now_ns();
    u->got_response_bytes = true;
    u->rpos = 0;
    u->rlen = (size_t)n;
    llhttp_errno_t err = llhttp_execute(&u->parser, u->rbuf, (size_t)n);
    if (err == HPE_PAUSED && u->filter_reply) {
        sk_proxy_filter_reply(r); /* releases (closes) u */
        return;
    }
    if (err == HPE_PAUSED) {
        u->rpos = (size_t)(llhttp_get_error_pos(&u->parser) - u->rbuf);
        finish_response(u, false);
        return;
    }
    if (err != HPE_OK) {
        sk_debug("bad response from %s: %s (%s)", u->pool->endpoint.address.text, llhttp_errno_name(err),
                 llhttp_get_error_reason(&u->parser));
        up_fail(u, 502, "upstream_protocol_error", false);
        return;
    }
    u->rpos = u->rlen = 0;
    /* Body pieces reference rbuf: flush (or copy) them before the next read. */
    sk_conn_flush(c);
    if (c->dead) return; /* closing released u */
    if (sk_out_pending(&c->out) > SK_HIGH_WATER) sk_upstream_pause_read(u);
}

static void on_write(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_upconn *u = io->data;
    if (!u->connected) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(u->tr.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        ev_timer_stop(loop, &u->timer);
        if (err) {
            sk_debug("connect to %s: %s", u->pool->endpoint.address.text, strerror(err));
            up_fail(u, 502, "upstream_connect_failure", true);
            return;
        }
        u->connected = true;
        if (u->req) sk_request_pending_done(u->req);
        if (u->req) u->req->upstream_connect_ns = sk_now_ns();
        start_read(u);
    }
    if (sk_upstream_flush(u) < 0) return;
    if (u->req && sk_out_pending(&u->out) < SK_LOW_WATER) sk_conn_resume_read(u->req->conn);
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_upconn *u = t->data;
    if (!u->connected && u->req) {
        sk_debug("connect to %s timed out", u->pool->endpoint.address.text);
        up_fail(u, 502, "upstream_connect_failure", true);
        return;
    }
    up_close(u); /* idle too long in the pool */
}
