/*
 * tcp.c — `protocol = tcp` listeners: each accepted connection is relayed
 * byte for byte to an endpoint of the listener's cluster (round robin over
 * the worker's cursor), with one bounded buffer per direction, back-pressure,
 * half-close propagation, connect_timeout and the listener's idle_timeout.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "accesslog.h"
#include "tls.h"
#include "metrics.h"
#include "pool.h"
#include "tcp.h"

typedef struct side {
    sk_transport tr; /* the socket and its watchers */
    char *buf;       /* bytes read from this side, waiting for the other */
    size_t off, len;
    bool eof;  /* this side sent FIN */
    bool shut; /* we sent FIN to this side */
    struct sk_tcp *t;
} side;

typedef struct sk_tcp {
    sk_wctx *worker;
    const sk_tcp_owner *owner; /* the runtime's hooks */
    void *owner_data;
    const sk_listener *listener;
    sk_config *config;
    sk_link link;  /* in the owner's list */
    side down, up; /* client side, upstream side */
    bool connected;
    bool up_counted;  /* holds an upstream connection slot of the cluster */
    ev_timer timer;   /* idle timeout */
    sk_addr endpoint; /* where the bytes go */
    bool has_endpoint;
    sk_endpoint *ep; /* its object (a reference) until the connect's outcome is reported */
    uint64_t start_ns;
    uint64_t bytes_in, bytes_out;
    char client_addr[64];
    const char *reason;
} sk_tcp;

static void tcp_close(sk_tcp *t)
{
    sk_wctx *w = t->worker;
    side *s[2] = {&t->down, &t->up};
    char identity[2049]; /* the verified client's, kept for the log line: the close frees the transport's */
    snprintf(identity, sizeof(identity), "%s", t->down.tr.peer_identity ? t->down.tr.peer_identity : "");
    for (int i = 0; i < 2; i++) {
        sk_transport_close(&s[i]->tr);
        sk_wctx_buf_put(w, s[i]->buf);
    }
    ev_timer_stop(w->loop, &t->timer);
    sk_endpoint_unref(t->ep);
    if (t->up_counted) {
        __atomic_sub_fetch(&t->listener->cluster->active_connections, 1, __ATOMIC_RELAXED);
        sk_metrics_gauge(w->metrics, t->listener->cluster->metrics_row, SK_MG_CX_ACTIVE, -1);
    }
    sk_tcp_log e = {
        .generation = t->config->generation,
        .listener = t->listener->name,
        .cluster = t->listener->cluster->name,
        .endpoint = t->has_endpoint ? t->endpoint.text : NULL,
        .client = t->client_addr,
        .identity = identity[0] ? identity : NULL,
        .bytes_in = t->bytes_in,
        .bytes_out = t->bytes_out,
        .duration_ms = (double)(sk_now_ns() - t->start_ns) / 1e6,
        .reason = t->reason,
    };
    sk_accesslog_write_tcp(w, &e);
    SK_DEC(w->metrics->downstream_active);
    t->owner->closed(t->owner_data, &t->link, t->listener);
    sk_config_unref(t->config);
    free(t);
}

static side *other(side *s)
{
    return s == &s->t->down ? &s->t->up : &s->t->down;
}

static void touch(sk_tcp *t)
{
    if (!t->connected) return;
    t->timer.repeat = (double)t->listener->idle_timeout_ms / 1000.0;
    ev_timer_again(t->worker->loop, &t->timer);
}

/* Writes s's pending bytes to the other side. Returns -1 when the
 * connection was closed. */
static int pump(side *s)
{
    sk_tcp *t = s->t;
    side *o = other(s);
    sk_wctx *w = t->worker;
    while (s->off < s->len) {
        struct iovec iov = {s->buf + s->off, s->len - s->off};
        ssize_t n = sk_transport_writev(&o->tr, &iov, 1);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                sk_transport_want_write(&o->tr, true);
                sk_transport_want_read(&s->tr, false);
                return 0;
            }
            t->reason = s == &t->down ? "upstream_reset" : "client_abort";
            tcp_close(t);
            return -1;
        }
        s->off += (size_t)n;
        if (s == &t->down) {
            t->bytes_in += (uint64_t)n;
        } else {
            t->bytes_out += (uint64_t)n;
            SK_ADD(w->metrics->bytes_sent, (uint64_t)n);
        }
    }
    s->off = s->len = 0;
    sk_transport_want_write(&o->tr, false);
    if (s->eof) {
        if (!o->shut) {
            sk_transport_shutdown(&o->tr);
            o->shut = true;
        }
        if (o->eof && o->off == o->len) {
            tcp_close(t);
            return -1;
        }
    } else {
        sk_transport_want_read(&s->tr, true);
    }
    return 0;
}

static void on_side_readable(sk_transport *tr)
{
    side *s = tr->data;
    sk_tcp *t = s->t;
    if (!s->buf && !(s->buf = sk_wctx_buf_get(t->worker))) {
        tcp_close(t);
        return;
    }
    ssize_t n = sk_transport_read(&s->tr, s->buf, SK_READ_BUF);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        t->reason = s == &t->up ? "upstream_reset" : "client_abort";
        tcp_close(t);
        return;
    }
    touch(t);
    if (n == 0) {
        s->eof = true;
        sk_transport_want_read(&s->tr, false);
    } else {
        s->off = 0;
        s->len = (size_t)n;
        if (s == &t->down) SK_ADD(t->worker->metrics->bytes_received, (uint64_t)n);
    }
    pump(s);
}

static void on_side_writable(sk_transport *tr)
{
    side *o = tr->data;
    /* The other side's buffer is what waits for this side to be writable. */
    pump(other(o));
}

/* Both sides may talk now. */
static void start_relay(sk_tcp *t)
{
    t->connected = true;
    sk_transport_want_read(&t->down.tr, true);
    sk_transport_want_read(&t->up.tr, true);
    touch(t);
}

/* The connect's outcome counts for the endpoint (outlier detection, ewma). */
static void report_connect(sk_tcp *t, bool failed)
{
    if (!t->ep) return;
    if (sk_cluster_report(t->listener->cluster, t->ep, failed, sk_now_ns() - t->start_ns))
        sk_metrics_count(t->worker->metrics, t->listener->cluster->metrics_row, SK_MC_EJECTIONS);
    sk_endpoint_unref(t->ep);
    t->ep = NULL;
}

static void on_up_connected(sk_transport *tr, int err)
{
    side *o = tr->data;
    sk_tcp *t = o->t;
    report_connect(t, err != 0);
    if (err) {
        sk_debug("tcp listener %s: connect to %s: %s", t->listener->name, t->endpoint.text,
                 err == ETIMEDOUT ? "timed out" : strerror(err));
        sk_metrics_count(t->worker->metrics, t->listener->cluster->metrics_row, SK_MC_CONNECT_FAILURES);
        t->reason = err == EACCES ? "upstream_identity_mismatch" : "upstream_connect_failure";
        tcp_close(t);
        return;
    }
    start_relay(t);
}

static void on_tcp_timer(struct ev_loop *loop, ev_timer *tm, int revents)
{
    sk_tcp *t = tm->data;
    t->reason = "idle_timeout";
    tcp_close(t);
}

static const sk_transport_cbs side_cbs = {
    .on_readable = on_side_readable,
    .on_writable = on_side_writable,
    .on_connected = on_up_connected,
};

/* Does a relay of this worker still run on generation cfg? With `cut`,
 * closes those that do (drain_timeout after a reload). */
bool sk_tcp_uses_generation(sk_link *relays, const sk_config *cfg, bool cut)
{
    bool used = false;
    sk_link *l = relays->next;
    while (l != relays) {
        sk_tcp *t = SK_CONTAINER(l, sk_tcp, link);
        l = l->next;
        if (t->config != cfg) continue;
        used = true;
        if (cut) {
            t->reason = "drain_timeout";
            tcp_close(t);
        }
    }
    return used;
}

/* Takes over an accepted socket of a tcp listener and connects upstream. */
void sk_tcp_accept(sk_wctx *w, const sk_tcp_owner *o, void *owner, sk_config *cfg, const sk_listener *l,
                   int fd, const char *client_addr)
{
    sk_tcp *t = calloc(1, sizeof(*t));
    if (!t) {
        close(fd);
        o->closed(owner, NULL, l);
        return;
    }
    t->worker = w;
    t->owner = o;
    t->owner_data = owner;
    t->listener = l;
    t->config = cfg;
    sk_config_ref(t->config);
    t->start_ns = sk_now_ns();
    snprintf(t->client_addr, sizeof(t->client_addr), "%s", client_addr);
    o->opened(owner, &t->link);
    SK_INC(w->metrics->downstream_active);
    SK_INC(w->metrics->downstream_total);
    t->down.t = t->up.t = t;
    void *tls = l->tls ? sk_tls_slot_conn(l->tls->state, true, fd, w->metrics) : NULL;
    if (l->tls && !tls) {
        sk_error("out of memory accepting a TLS connection");
        close(fd);
        fd = -1;
    }
    sk_transport_accept(&t->down.tr, w->loop, fd, tls ? &sk_tls_ops : NULL, tls, &side_cbs, &t->down);
    if (fd < 0) {
        t->reason = "overloaded";
        tcp_close(t);
        return;
    }
    ev_init(&t->timer, on_tcp_timer);
    t->timer.data = t;

    sk_cluster *cl = l->cluster;
    sk_balance_ctx bctx = {0};
    if (cl->lb == SK_LB_RING_HASH && cl->hash_key == SK_HASH_CLIENT_IP) { /* the address without its port */
        const char *colon = strrchr(t->client_addr, ':');
        bctx.hash_key = t->client_addr;
        bctx.hash_key_len = colon ? (size_t)(colon - t->client_addr) : strlen(t->client_addr);
    }
    sk_pool *pool = sk_cluster_pick(w, cl, &bctx);
    if (!pool) {
        t->reason = "no_healthy_upstream";
        tcp_close(t);
        return;
    }
    t->endpoint = pool->endpoint->address;
    t->has_endpoint = true;
    t->ep = pool->endpoint;
    sk_endpoint_ref(t->ep);
    if (__atomic_add_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED) > cl->max_connections) {
        __atomic_sub_fetch(&cl->active_connections, 1, __ATOMIC_RELAXED);
        sk_metrics_count(w->metrics, cl->metrics_row, SK_MC_OVERFLOW_CONNECTIONS);
        t->reason = "overloaded";
        tcp_close(t);
        return;
    }
    t->up_counted = true;
    sk_metrics_gauge(w->metrics, cl->metrics_row, SK_MG_CX_ACTIVE, 1);
    sk_metrics_count(w->metrics, cl->metrics_row, SK_MC_CX_CREATED);
    const sk_addr *a = &t->endpoint;
    void *up_tls = cl->tls ? sk_tls_slot_conn(cl->tls->state, false, -1, w->metrics) : NULL;
    int rc = cl->tls && !up_tls ? (errno = ENOMEM, -1)
                                : sk_transport_connect(&t->up.tr, w->loop, (const struct sockaddr *)&a->ss, a->len,
                                                       cl->connect_timeout_ms, &t->timer, up_tls ? &sk_tls_ops : NULL,
                                                       up_tls, &side_cbs, &t->up);
    if (rc < 0 && up_tls && !t->up.tr.ops) sk_tls_conn_free(up_tls);
    if (rc < 0) {
        sk_metrics_count(w->metrics, cl->metrics_row, SK_MC_CONNECT_FAILURES);
        report_connect(t, true);
        t->reason = "upstream_connect_failure";
        tcp_close(t);
        return;
    }
    if (rc == 1) {
        report_connect(t, false);
        start_relay(t);
    }
}
