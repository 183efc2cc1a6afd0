/*
 * admin.c — the admin HTTP endpoint (`[sidekick] admin`): health, readiness,
 * metrics, stats, the running config, clusters, drain.
 *
 * A small HTTP/1.1 server on the main thread's libev loop. Requests are
 * parsed with llhttp; each connection has an input and an output sk_buf, a
 * read/write ev_io and one timer. Nothing blocks: writes are non-blocking
 * and the rest of a response waits for EV_WRITE.
 *
 * Bounds: a request head of at most ADMIN_MAX_HEAD bytes (→ 431), a request
 * body of at most ADMIN_MAX_BODY bytes (read and discarded; → 413), at most
 * ADMIN_MAX_CONNS open connections (the listener stops accepting while the
 * limit is reached), and ADMIN_TIMEOUT seconds for the next request to
 * arrive completely, or for a write to make progress. Pipelined requests are
 * answered in order, one at a time: the parser pauses after each message,
 * and parsing stops while more than ADMIN_OUT_HIGH bytes wait to be sent.
 *
 * A connection is never freed inside its own callback: conn_close() stops
 * its watchers, closes the socket and queues it; reap() frees the queue at
 * the end of the outermost admin callback, when no frame uses it any more.
 * The admin endpoint keeps serving while the process drains (/ready turns
 * 503), until main() calls sk_admin_stop() on its way out.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4; the build also defines it */
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>
#include <llhttp.h>

#include "certs.h"
#include "cluster.h"
#include "config.h"
#include "generation.h"
#include "lua_filter.h"
#include "metrics.h"
#include "plugin_host.h"
#include "server.h"
#include "sk.h"

#define ADMIN_MAX_HEAD     (8 * 1024)   /* request line + headers */
#define ADMIN_MAX_BODY     (64 * 1024)  /* request body, discarded */
#define ADMIN_MAX_CONNS    64           /* open admin connections */
#define ADMIN_TIMEOUT      10.0         /* seconds, see above */
#define ADMIN_IN_MAX       (16 * 1024)  /* unparsed input kept before reading stops */
#define ADMIN_OUT_HIGH     (256 * 1024) /* pending output above which parsing pauses */
#define ADMIN_ACCEPT_BURST 16           /* accepts per listener callback */

typedef struct conn conn;
struct conn {
    int fd;
    ev_io io;       /* EV_READ and/or EV_WRITE, see conn_update() */
    int io_events;  /* events io is currently started with (0 = stopped) */
    ev_timer timer; /* request / write-progress timeout */
    llhttp_t parser;
    sk_buf in;              /* received, not yet parsed */
    sk_buf out;             /* response bytes not yet written */
    sk_buf url;             /* request target of the message being parsed */
    size_t head_bytes;      /* size of the current request head so far (approximate) */
    size_t body_bytes;      /* size of the current request body so far */
    int error_status;       /* status to answer when a callback rejected the request */
    bool message_done;      /* on_message_complete ran for the current message */
    bool keepalive;         /* the current request allows keep-alive */
    bool http10;            /* the current request is HTTP/1.0 */
    uint8_t method;         /* llhttp_method_t of the current request */
    bool peer_eof;          /* the client closed its side */
    bool close_after_write; /* no more requests: close once out is flushed */
    bool drain_after;       /* POST /drain answered: start the drain once it is sent */
    bool closing;           /* closed, waiting in the free queue */
    conn *next;             /* in admin.conns or admin.dead */
    conn *prev;             /* in admin.conns */
};

static struct {
    bool running;
    struct ev_loop *loop;
    int fd;
    ev_io accept_io;
    bool accepting; /* accept_io is started */
    conn *conns;    /* open connections */
    size_t nconns;
    conn *dead; /* closed, to be freed by reap() */
    int depth;  /* nesting of admin callbacks on the stack */
    llhttp_settings_t settings;
    sk_buf body; /* scratch buffer for a response body */
} admin = {.fd = -1};

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* ---- connection lifecycle ---------------------------------------------- */

static void listener_update(void)
{
    if (!admin.running) return;
    bool want = admin.nconns < ADMIN_MAX_CONNS;
    if (want && !admin.accepting) ev_io_start(admin.loop, &admin.accept_io);
    if (!want && admin.accepting) ev_io_stop(admin.loop, &admin.accept_io);
    admin.accepting = want;
}

static void conn_close(conn *c)
{
    if (c->closing) return;
    c->closing = true;
    ev_io_stop(admin.loop, &c->io);
    ev_timer_stop(admin.loop, &c->timer);
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        admin.conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = admin.dead;
    c->prev = NULL;
    admin.dead = c;
    admin.nconns--;
    listener_update();
}

/* Frees closed connections once no admin callback is running. */
static void reap(void)
{
    if (admin.depth > 0) return;
    while (admin.dead) {
        conn *c = admin.dead;
        admin.dead = c->next;
        sk_buf_free(&c->in);
        sk_buf_free(&c->out);
        sk_buf_free(&c->url);
        free(c);
    }
    if (!admin.running) sk_buf_free(&admin.body); /* stopped from inside a request */
}

/* Starts io with the events the connection's state calls for. */
static void conn_update(conn *c)
{
    int ev = 0;
    if (!c->close_after_write && !c->peer_eof && sk_buf_pending(&c->in) < ADMIN_IN_MAX &&
        sk_buf_pending(&c->out) < ADMIN_OUT_HIGH)
        ev |= EV_READ;
    /* unparsed input left (parsing only stops early for output back-pressure
     * or the round limit): EV_WRITE brings the callback back to continue */
    bool more = sk_buf_pending(&c->in) > 0 && !c->close_after_write;
    if (sk_buf_pending(&c->out) > 0 || more) ev |= EV_WRITE;
    if (ev == c->io_events) return;
    ev_io_stop(admin.loop, &c->io);
    if (ev) {
        ev_io_set(&c->io, c->fd, ev);
        ev_io_start(admin.loop, &c->io);
    }
    c->io_events = ev;
}

/* ---- responses --------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/*
 * Queues one response. `allow` adds an Allow header (405). A response to a
 * request that does not keep the connection alive, or any 4xx/5xx that ends
 * parsing (`close` true), carries "connection: close" and ends the
 * connection once written. HEAD gets the headers only.
 */
static void respond(conn *c, int status, const char *ctype, const char *body, size_t len, const char *allow,
                    bool close_conn)
{
    if (!c->keepalive) close_conn = true;
    const char *conn_hdr = close_conn  ? "connection: close\r\n"
                           : c->http10 ? "connection: keep-alive\r\n"
                                       : "";
    int rc = sk_buf_printf(&c->out,
                           "HTTP/1.1 %d %s\r\n"
                           "content-type: %s\r\n"
                           "content-length: %zu\r\n"
                           "cache-control: no-store\r\n"
                           "%s%s%s%s"
                           "\r\n",
                           status, reason(status), ctype, len, allow ? "allow: " : "", allow ? allow : "",
                           allow ? "\r\n" : "", conn_hdr);
    if (rc == 0 && c->method != HTTP_HEAD) rc = sk_buf_append(&c->out, body, len);
    if (rc < 0) {
        /* out of memory: drop what we cannot answer, end the connection */
        sk_buf_reset(&c->out);
        close_conn = true;
    }
    if (close_conn) c->close_after_write = true;
}

static void respond_text(conn *c, int status, const char *text)
{
    respond(c, status, "text/plain; charset=utf-8", text, strlen(text), NULL, false);
}

/* Answers with admin.body, or 500 when rendering it failed (rc < 0). */
static void respond_body(conn *c, int rc, const char *ctype)
{
    if (rc < 0) {
        respond_text(c, 500, "out of memory\n");
        return;
    }
    respond(c, 200, ctype, admin.body.data ? admin.body.data + admin.body.off : "",
            sk_buf_pending(&admin.body), NULL, false);
}

/* ---- JSON of the config and clusters ------------------------------------ */

static void jset(json_t *obj, const char *key, json_t *v, bool *ok)
{
    if (!v || json_object_set_new(obj, key, v) < 0) *ok = false;
}

static void jpush(json_t *arr, json_t *v, bool *ok)
{
    if (!v || json_array_append_new(arr, v) < 0) *ok = false;
}

/* Sets key to a string, or leaves it out when s is NULL. */
static void jset_str(json_t *obj, const char *key, const char *s, bool *ok)
{
    if (s) jset(obj, key, json_string(s), ok);
}

static json_t *jint(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static const char *lb_name(int lb)
{
    switch (lb) {
    case SK_LB_ROUND_ROBIN: return "round_robin";
    case SK_LB_LEAST_REQUEST: return "least_request";
    case SK_LB_RANDOM: return "random";
    case SK_LB_RING_HASH: return "ring_hash";
    case SK_LB_EWMA: return "ewma";
    default: return "unknown";
    }
}

/* Names of a chain's plugin instances. */
static json_t *plugin_names_json(sk_instance *const *p, size_t n, bool *ok)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) jpush(a, json_string(p[i]->name), ok);
    if (!a) *ok = false;
    return a;
}

/* One [plugin NAME] instance: its .so, the plugin's own name, its keys. */
static json_t *plugin_json(const sk_instance *pi, bool *ok)
{
    json_t *o = json_object(), *keys = json_object();
    if (!o || !keys) {
        json_decref(o);
        json_decref(keys);
        *ok = false;
        return NULL;
    }
    jset_str(o, "name", pi->name, ok);
    jset_str(o, "path", pi->path, ok);
    if (pi->def) jset_str(o, "plugin", pi->def->name, ok);
    for (size_t i = 0; i < pi->nkeys; i++) jset(keys, pi->keys[i].key, json_string(pi->keys[i].value), ok);
    jset(o, "keys", keys, ok);
    return o;
}

/* A share in parts per million as the percentage text it was written as. */
static json_t *ppm_json(uint32_t ppm)
{
    char t[24];
    snprintf(t, sizeof(t), "%u.%04u%%", ppm / 10000, ppm % 10000);
    char *p = strchr(t, '.'), *e = t + strlen(t) - 1; /* "20.0000%" -> "20%" */
    while (e > p && e[-1] == '0') e--;
    if (e - 1 == p) e = p;
    memmove(e, "%", 2);
    return json_string(t);
}

/* The traffic management keys of a route (docs/traffic.md). */
static void route_traffic_json(json_t *o, const sk_route *r, bool *ok)
{
    json_t *on = json_array();
    for (int c = SK_RETRY_NONE + 1; on && c < SK_RETRY_PER_TRY_TIMEOUT; c++)
        if (r->retry_on & SK_RETRY_BIT(c))
            jpush(on, json_string(c == SK_RETRY_409 ? "retriable-4xx" : sk_retry_cond_name(c)), ok);
    jset(o, "retry_on", on, ok);
    jset(o, "per_try_timeout_ms", r->per_try_timeout_ms ? jint(r->per_try_timeout_ms) : json_null(), ok);
    jset(o, "retry_backoff_ms", jint(r->retry_backoff_ms), ok);
    json_t *m = json_null();
    if (r->mirror && (m = json_object())) {
        jset_str(m, "cluster", r->mirror->name, ok);
        jset(m, "share", ppm_json(r->mirror_ppm), ok);
    }
    jset(o, "mirror", m, ok);
    json_t *d = json_null(), *a = json_null();
    if (r->fault_delay_ms && (d = json_object())) {
        jset(d, "delay_ms", jint(r->fault_delay_ms), ok);
        jset(d, "share", ppm_json(r->fault_delay_ppm), ok);
    }
    if (r->fault_abort_status && (a = json_object())) {
        jset(a, "status", json_integer(r->fault_abort_status), ok);
        jset(a, "share", ppm_json(r->fault_abort_ppm), ok);
    }
    jset(o, "fault_delay", d, ok);
    jset(o, "fault_abort", a, ok);
    jset(o, "fault_headers", json_boolean(r->fault_headers), ok);
}

static json_t *listener_json(const sk_listener *l, bool *ok)
{
    json_t *o = json_object();
    json_t *routes = json_array();
    if (!o || !routes) {
        json_decref(o);
        json_decref(routes);
        *ok = false;
        return NULL;
    }
    jset_str(o, "name", l->name, ok);
    jset(o, "address", json_string(l->address.text), ok);
    jset(o, "protocol", json_string(l->protocol == SK_PROTO_TCP ? "tcp" : "http"), ok);
    if (l->cluster) jset(o, "cluster", json_string(l->cluster->name), ok);
    jset(o, "tls", l->tls ? json_string(l->tls->name) : json_null(), ok);
    jset(o, "max_connections", jint(l->max_connections), ok);
    jset(o, "header_timeout_ms", jint(l->header_timeout_ms), ok);
    jset(o, "idle_timeout_ms", jint(l->idle_timeout_ms), ok);
    jset(o, "max_header_bytes", jint(l->max_header_bytes), ok);
    jset(o, "max_headers", jint(l->max_headers), ok);
    jset(o, "max_body_bytes", jint(l->max_body_bytes), ok);
    static const char *const slashes[] = {"reject", "keep", "decode"};
    jset(o, "merge_slashes", json_boolean(l->merge_slashes), ok);
    jset(o, "escaped_slashes", json_string(slashes[l->escaped_slashes]), ok);
    for (size_t i = 0; i < l->nroutes; i++) jpush(routes, json_string(l->routes[i]->name), ok);
    jset(o, "routes", routes, ok);
    jset(o, "plugins", plugin_names_json(l->plugins, l->nplugins, ok), ok);
    return o;
}

static json_t *route_json(const sk_route *r, bool *ok)
{
    json_t *o = json_object();
    if (!o) {
        *ok = false;
        return NULL;
    }
    jset_str(o, "name", r->name, ok);
    if (r->listener) jset(o, "listener", json_string(r->listener->name), ok);
    jset_str(o, "host", r->host, ok);
    jset_str(o, "prefix", r->prefix, ok);
    jset_str(o, "path", r->path, ok);
    if (r->methods) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < r->nmethods; i++) jpush(a, json_string(r->methods[i]), ok);
        jset(o, "methods", a, ok);
    }
    if (r->nheaders) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < r->nheaders; i++) {
            json_t *h = json_object();
            if (h) {
                jset_str(h, "name", r->headers[i].name, ok);
                jset_str(h, "value", r->headers[i].value, ok);
            }
            jpush(a, h, ok);
        }
        jset(o, "headers", a, ok);
    }
    if (r->clusters) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < r->nclusters; i++) {
            json_t *wc = json_object();
            if (wc) {
                jset(wc, "name", json_string(r->clusters[i].cluster->name), ok);
                jset(wc, "weight", jint(r->clusters[i].weight), ok);
            }
            jpush(a, wc, ok);
        }
        jset(o, "clusters", a, ok);
    }
    jset_str(o, "rewrite_prefix", r->rewrite_prefix, ok);
    jset(o, "timeout_ms", jint(r->timeout_ms), ok);
    jset(o, "retries", jint(r->retries), ok);
    route_traffic_json(o, r, ok);
    if (r->respond_status) {
        json_t *resp = json_object();
        if (resp) {
            jset(resp, "status", json_integer(r->respond_status), ok);
            jset_str(resp, "body", r->respond_body, ok);
        }
        jset(o, "respond", resp, ok);
    }
    jset(o, "plugins", plugin_names_json(r->plugins, r->nplugins, ok), ok);
    if (r->lua) {
        /* lua.* keys are the user's settings for the script, shown as configured */
        json_t *lua = json_object(), *keys = json_object();
        if (lua && keys) {
            for (size_t i = 0; i < r->nlua_keys; i++)
                jset(keys, r->lua_keys[i].key, json_string(r->lua_keys[i].value), ok);
            jset(lua, "file", json_string(r->lua), ok);
            jset(lua, "budget_ms", jint(r->lua_budget_ms), ok);
            jset(lua, "keys", keys, ok);
        } else {
            json_decref(keys);
        }
        jset(o, "lua", lua, ok);
    }
    return o;
}

/* What traffic management says of set->eps[i] (docs/operations.md):
 * health, checks in a row, ejection, slow-start weight, ewma score. */
static void endpoint_traffic_json(json_t *e, const sk_cluster *c, const sk_endpoint_set *set, size_t i,
                                  bool *ok)
{
    sk_endpoint_status st;
    uint64_t now = sk_now_ms();
    sk_endpoint_status_of(c, set, i, now, &st);
    jset(e, "healthy", json_boolean(st.usable), ok);
    jset(e, "health", json_string(st.health), ok);
    jset(e, "health_check_failures", jint(st.hc_failures), ok);
    jset(e, "health_check_successes", jint(st.hc_passes), ok);
    jset(e, "ejected", json_boolean(st.ejected), ok);
    if (st.ejected) {
        /* the end on the wall clock, and what is left of it */
        uint64_t left = st.ejected_until_ms - now;
        jset(e, "ejected_until", json_real((double)time(NULL) + (double)left / 1e3), ok);
        jset(e, "ejected_for_ms", jint(left), ok);
    } else {
        jset(e, "ejected_until", json_null(), ok);
        jset(e, "ejected_for_ms", jint(0), ok);
    }
    jset(e, "ejection_ms", jint(st.ejection_ms), ok);
    jset(e, "ejections", jint(st.ejections), ok);
    jset(e, "consecutive_failures", jint(st.failures), ok);
    jset(e, "effective_weight", json_real(st.effective_weight), ok);
    if (c->lb == SK_LB_EWMA) {
        jset(e, "ewma_ms", st.ewma_ms < 0 ? json_null() : json_real(st.ewma_ms), ok);
        jset(e, "ewma_score", json_real(st.ewma_score), ok);
    }
}

/* `endpoints` as configured (/config), or the set in force with each
 * endpoint object's weight, health, requests in flight and source
 * (/clusters): discovery may have replaced it. */
static json_t *endpoints_json(const sk_cluster *c, bool with_health, bool *ok)
{
    json_t *a = json_array();
    if (!with_health) {
        for (size_t i = 0; a && i < c->nendpoints; i++)
            jpush(a, json_string(c->endpoints[i].address.text), ok);
        if (!a) *ok = false;
        return a;
    }
    sk_endpoint_set *set = sk_cluster_endpoints(c);
    for (size_t i = 0; a && set && i < set->n; i++) {
        const sk_endpoint *ep = set->eps[i];
        json_t *e = json_object();
        if (e) {
            jset(e, "address", json_string(ep->address.text), ok);
            jset(e, "weight", jint(set->weights[i]), ok);
            jset(e, "active_requests", jint(SK_LOAD(ep->active)), ok);
            jset(e, "source", json_string(set->source), ok);
            endpoint_traffic_json(e, c, set, i, ok);
        }
        jpush(a, e, ok);
    }
    sk_endpoint_set_unref(set);
    if (!a) *ok = false;
    return a;
}

/* A cluster's traffic keys in /config (docs/traffic.md). */
static void config_traffic_json(json_t *o, const sk_cluster *c, bool *ok)
{
    static const char *const keys[] = {"none", "header", "cookie", "client_ip"};
    if (c->lb == SK_LB_RING_HASH) {
        char k[300];
        snprintf(k, sizeof(k), "%s%s%s", keys[c->hash_key], c->hash_key_name ? ":" : "",
                 c->hash_key_name ? c->hash_key_name : "");
        jset(o, "hash_key", c->hash_key ? json_string(k) : json_null(), ok);
    }
    if (c->lb == SK_LB_EWMA) jset(o, "ewma_decay_ms", jint(c->ewma_decay_ms), ok);
    jset(o, "slow_start_ms", jint(c->slow_start_ms), ok);
    json_t *h = json_null();
    if (c->health_check && (h = json_object()) != NULL) {
        jset_str(h, "path", c->health_check, ok);
        jset(h, "interval_ms", jint(c->health_interval_ms), ok);
        jset(h, "timeout_ms", jint(c->health_timeout_ms), ok);
        jset(h, "healthy_threshold", jint(c->healthy_threshold), ok);
        jset(h, "unhealthy_threshold", jint(c->unhealthy_threshold), ok);
        jset(h, "initial", json_string(c->health_initial_unhealthy ? "unhealthy" : "healthy"), ok);
    }
    jset(o, "health_check", h, ok);
    json_t *od = json_object();
    if (od) {
        jset(od, "failures", jint(c->outlier_failures), ok);
        jset(od, "ejection_ms", jint(c->outlier_ejection_ms), ok);
        jset(od, "max_ejection_percent", jint(c->max_ejection_percent), ok);
    }
    jset(o, "outlier_detection", od, ok);
    jset(o, "panic_threshold", jint(c->panic_threshold), ok);
}

static json_t *cluster_json(const sk_cluster *c, bool *ok)
{
    json_t *o = json_object();
    if (!o) {
        *ok = false;
        return NULL;
    }
    jset_str(o, "name", c->name, ok);
    jset(o, "endpoints", endpoints_json(c, false, ok), ok);
    if (c->discovery) {
        json_t *d = json_object();
        if (d) {
            jset_str(d, "instance", c->discovery, ok);
            jset(d, "arg", c->discovery_arg ? json_string(c->discovery_arg) : json_null(), ok);
        }
        jset(o, "discovery", d, ok);
        jset(o, "wait_for_endpoints_ms", jint(c->wait_for_endpoints_ms), ok);
    }
    jset(o, "lb", json_string(lb_name(c->lb)), ok);
    jset(o, "tls", c->tls ? json_string(c->tls->name) : json_null(), ok);
    jset(o, "connect_timeout_ms", jint(c->connect_timeout_ms), ok);
    jset(o, "max_connections", jint(c->max_connections), ok);
    jset(o, "max_pending", jint(c->max_pending), ok);
    jset(o, "max_requests", jint(c->max_requests), ok);
    config_traffic_json(o, c, ok);
    jset(o, "max_retries", jint(c->max_retries), ok);
    jset(o, "retry_budget",
         c->retry_budget_ppm == SK_RETRY_BUDGET_OFF ? json_string("off") : ppm_json(c->retry_budget_ppm), ok);
    jset(o, "retry_budget_min", jint(c->retry_budget_min), ok);
    return o;
}

static json_t *config_json(const sk_config *cfg, bool *ok)
{
    json_t *o = json_object();
    json_t *ls = json_array(), *rs = json_array(), *cs = json_array();
    if (!o || !ls || !rs || !cs) {
        json_decref(o);
        json_decref(ls);
        json_decref(rs);
        json_decref(cs);
        *ok = false;
        return NULL;
    }
    char when[32] = "";
    struct tm tm;
    if (gmtime_r(&cfg->loaded_at, &tm)) strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);

    jset(o, "generation", jint(cfg->generation), ok);
    jset_str(o, "file", cfg->file, ok);
    jset(o, "loaded_at", json_string(when), ok);
    jset(o, "workers", json_integer(cfg->workers), ok);
    jset(o, "admin", json_string(cfg->admin_enabled ? cfg->admin.text : "off"), ok);
    jset_str(o, "access_log", cfg->access_log, ok);
    jset(o, "drain_timeout_ms", jint(cfg->drain_timeout_ms), ok);
    for (size_t i = 0; i < cfg->nlisteners; i++) jpush(ls, listener_json(cfg->listeners[i], ok), ok);
    for (size_t i = 0; i < cfg->nroutes; i++) jpush(rs, route_json(cfg->routes[i], ok), ok);
    for (size_t i = 0; i < cfg->nclusters; i++) jpush(cs, cluster_json(cfg->clusters[i], ok), ok);
    jset(o, "listeners", ls, ok);
    jset(o, "routes", rs, ok);
    jset(o, "clusters", cs, ok);
    json_t *ps = json_array();
    for (size_t i = 0; ps && i < cfg->nplugins; i++) jpush(ps, plugin_json(cfg->plugins[i], ok), ok);
    if (!ps) *ok = false;
    jset(o, "plugins", ps, ok);
    jset(o, "tls", sk_certs_json(cfg, ok), ok);
    return o;
}

/* What /clusters shows of a discovery cluster: its instance and ARG, the
 * state of its answers, and its wait (see docs/operations.md). */
static json_t *discovery_json(const sk_config *cfg, const sk_cluster *c, bool *ok)
{
    json_t *d = json_object();
    if (!d) {
        *ok = false;
        return NULL;
    }
    const sk_discovery_state *st = sk_cluster_discovery(c);
    bool answered = st && st->answered;
    const char *state = !answered ? "waiting" : st->stale ? "stale" : "ok";
    jset_str(d, "instance", c->discovery, ok);
    jset(d, "arg", c->discovery_arg ? json_string(c->discovery_arg) : json_null(), ok);
    jset(d, "state", json_string(state), ok);
    jset(d, "message", st && st->message[0] ? json_string(st->message) : json_null(), ok);
    jset(d, "last_update", answered ? json_integer((json_int_t)st->last_update) : json_null(), ok);
    if (answered) {
        uint64_t now = sk_now_ms(), age = now > st->last_update_ms ? now - st->last_update_ms : 0;
        jset(d, "age_seconds", json_real((double)age / 1e3), ok);
    } else {
        jset(d, "age_seconds", json_null(), ok);
    }
    jset(d, "carried_over", json_boolean(answered && st->carried), ok);
    jset(d, "wait_for_endpoints_ms", jint(c->wait_for_endpoints_ms), ok);
    jset(d, "holds_ready", json_boolean(sk_generation_cluster_waits(cfg, c, NULL)), ok);
    return d;
}

/* A cluster's balancing and panic state in /clusters. */
static void cluster_traffic_json(json_t *o, sk_cluster *c, bool *ok)
{
    sk_endpoint_set *set = sk_cluster_endpoints(c);
    size_t usable = 0;
    bool panic = set && sk_cluster_check_panic(c, set, sk_now_ms(), &usable);
    sk_endpoint_set_unref(set);
    jset(o, "lb", json_string(lb_name(c->lb)), ok);
    jset(o, "healthy_endpoints", jint(usable), ok);
    jset(o, "panic", json_boolean(panic), ok);
    jset(o, "panic_threshold", jint(c->panic_threshold), ok);
}

static json_t *clusters_json(const sk_config *cfg, bool *ok)
{
    json_t *o = json_object();
    json_t *cs = json_array();
    if (!o || !cs) {
        json_decref(o);
        json_decref(cs);
        *ok = false;
        return NULL;
    }
    for (size_t i = 0; i < cfg->nclusters; i++) {
        sk_cluster *c = cfg->clusters[i];
        json_t *e = json_object();
        if (e) {
            jset_str(e, "name", c->name, ok);
            jset(e, "endpoints", endpoints_json(c, true, ok), ok);
            jset(e, "active_requests", jint(SK_LOAD(c->active_requests)), ok);
            jset(e, "active_connections", jint(SK_LOAD(c->active_connections)), ok);
            jset(e, "active_pending", jint(SK_LOAD(c->active_pending)), ok);
            if (c->discovery) jset(e, "discovery", discovery_json(cfg, c, ok), ok);
            cluster_traffic_json(e, c, ok);
        }
        jpush(cs, e, ok);
    }
    jset(o, "clusters", cs, ok);
    return o;
}

static int dump_cb(const char *buffer, size_t size, void *data)
{
    return sk_buf_append(data, buffer, size);
}

/* Renders `j` (consumed) into admin.body; returns 0 or -1. */
static int render_json(json_t *j, bool ok)
{
    int rc = -1;
    if (j && ok &&
        json_dump_callback(j, dump_cb, &admin.body, JSON_INDENT(2) | JSON_REAL_PRECISION(15)) == 0 &&
        sk_buf_append(&admin.body, "\n", 1) == 0)
        rc = 0;
    json_decref(j);
    return rc;
}

/* ---- /metrics and /stats ------------------------------------------------ */

/* The endpoints of the running config's sets in force, as the metrics
 * renderers show them; the sets are held until endpoints_release(). */
typedef struct endpoint_list {
    sk_metrics_endpoint *v;
    size_t n;
    sk_endpoint_set **sets; /* one per cluster (NULL entries allowed) */
    size_t nsets;
} endpoint_list;

static void endpoints_release(endpoint_list *l)
{
    for (size_t i = 0; i < l->nsets; i++) sk_endpoint_set_unref(l->sets[i]);
    free(l->sets);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

/* Gathers the endpoints of cfg's clusters (none without cfg). 0 or -1 (OOM). */
static int endpoints_gather(endpoint_list *l, const sk_config *cfg)
{
    memset(l, 0, sizeof(*l));
    if (!cfg || cfg->nclusters == 0) return 0;
    l->sets = calloc(cfg->nclusters, sizeof(*l->sets));
    if (!l->sets) return -1;
    size_t total = 0;
    for (size_t i = 0; i < cfg->nclusters; i++) {
        l->sets[i] = sk_cluster_endpoints(cfg->clusters[i]);
        l->nsets++;
        if (l->sets[i]) total += l->sets[i]->n;
    }
    if (total && !(l->v = calloc(total, sizeof(*l->v)))) {
        endpoints_release(l);
        return -1;
    }
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const sk_endpoint_set *s = l->sets[i];
        for (size_t k = 0; s && k < s->n; k++) {
            const sk_endpoint *ep = s->eps[k];
            l->v[l->n++] = (sk_metrics_endpoint){
                .cluster = cfg->clusters[i]->name,
                .address = ep->address.text,
                .row = ep->metrics_row,
                .healthy = sk_endpoint_healthy(ep),
                .ejected = sk_endpoint_ejected(ep, sk_now_ms()),
                .active = __atomic_load_n(&ep->active, __ATOMIC_RELAXED),
            };
        }
    }
    return 0;
}

/* GET /stats: the core figures (obs/metrics.c), and the failures of the
 * plugin instances, which the extension layer counts. */
static json_t *stats_json(const sk_config *cfg, bool *ok)
{
    endpoint_list eps;
    if (endpoints_gather(&eps, cfg) < 0) {
        *ok = false;
        return NULL;
    }
    json_t *j = sk_metrics_json(cfg, eps.v, eps.n, sk_srv.metrics, sk_srv.nworkers);
    endpoints_release(&eps);
    json_t *pe = json_array();
    for (size_t i = 0; pe && cfg && i < cfg->nplugins; i++) {
        json_t *o = json_object();
        if (o) {
            jset(o, "instance", json_string(cfg->plugins[i]->name), ok);
            jset(o, "count", jint(__atomic_load_n(&cfg->plugins[i]->errors, __ATOMIC_RELAXED)), ok);
        }
        jpush(pe, o, ok);
    }
    if (!j || !pe) {
        json_decref(j);
        json_decref(pe);
        *ok = false;
        return NULL;
    }
    jset(j, "plugin_errors", pe, ok);
    return j;
}

/* ---- request dispatch --------------------------------------------------- */

enum { M_GET = 1, M_POST = 2 };

static const struct endpoint {
    const char *path;
    int methods;
    const char *what; /* for the index at GET / */
} endpoints[] = {
    {"/", M_GET, "this list"},
    {"/healthz", M_GET, "200 while the process runs"},
    {"/ready", M_GET, "200 once listeners are up, 503 while draining"},
    {"/metrics", M_GET, "Prometheus text format"},
    {"/stats", M_GET, "the same figures as JSON"},
    {"/config", M_GET, "the running generation as JSON"},
    {"/clusters", M_GET, "endpoints of every cluster with health"},
    {"/reload", M_POST, "reload the configuration (as SIGHUP)"},
    {"/drain", M_POST, "stop accepting, finish in-flight requests, exit"},
};

/* GET /: the endpoints above as JSON, and where the docs are. */
static json_t *index_json(bool *ok)
{
    json_t *o = json_object(), *a = json_array();
    if (!o || !a) {
        json_decref(o);
        json_decref(a);
        *ok = false;
        return NULL;
    }
    for (size_t i = 0; i < SK_ARRAY_LEN(endpoints); i++) {
        json_t *e = json_object();
        if (e) {
            jset(e, "method", json_string(endpoints[i].methods == M_GET ? "GET" : "POST"), ok);
            jset(e, "path", json_string(endpoints[i].path), ok);
            jset(e, "what", json_string(endpoints[i].what), ok);
        }
        jpush(a, e, ok);
    }
    jset(o, "endpoints", a, ok);
    jset(o, "docs", json_string("docs/configuration.md#admin-endpoint, docs/operations.md"), ok);
    return o;
}

#define JSON_TYPE "application/json"

/* Answers the request whose head and body were just parsed. */
static void handle_request(conn *c)
{
    const char *url = c->url.data ? c->url.data + c->url.off : "";
    size_t len = sk_buf_pending(&c->url);
    const char *q = memchr(url, '?', len);
    if (q) len = (size_t)(q - url);

    const struct endpoint *ep = NULL;
    for (size_t i = 0; i < SK_ARRAY_LEN(endpoints); i++)
        if (strlen(endpoints[i].path) == len && memcmp(endpoints[i].path, url, len) == 0) ep = &endpoints[i];
    if (!ep) {
        respond_text(c, 404, "not found\n");
        return;
    }
    int m = c->method == HTTP_GET || c->method == HTTP_HEAD ? M_GET : c->method == HTTP_POST ? M_POST : 0;
    if (!(m & ep->methods)) {
        const char *allow = ep->methods == M_GET ? "GET, HEAD" : "POST";
        const char *t = "method not allowed\n";
        respond(c, 405, "text/plain; charset=utf-8", t, strlen(t), allow, false);
        return;
    }

    sk_buf_reset(&admin.body);
    const sk_config *cfg = sk_srv.config;
    const sk_cluster *waiting;
    uint64_t left_ms = 0;
    const char *p = ep->path;
    if (strcmp(p, "/") == 0) {
        bool ok = true;
        respond_body(c, render_json(index_json(&ok), ok), JSON_TYPE);
    } else if (strcmp(p, "/healthz") == 0) {
        respond_text(c, 200, "ok\n");
    } else if (strcmp(p, "/ready") == 0) {
        if (SK_LOAD(sk_srv.draining))
            respond_text(c, 503, "draining\n");
        else if (!SK_LOAD(sk_srv.ready))
            respond_text(c, 503, "not ready\n");
        else if ((waiting = sk_generation_waiting(cfg, &left_ms)) != NULL) {
            char t[512];
            snprintf(t, sizeof(t), "waiting for endpoints: cluster %s ([plugin %s]), at most %llums more\n",
                     waiting->name, waiting->discovery, (unsigned long long)left_ms);
            respond_text(c, 503, t);
        } else
            respond_text(c, 200, "ready\n");
    } else if (strcmp(p, "/metrics") == 0) {
        endpoint_list eps;
        int rc = endpoints_gather(&eps, cfg);
        if (rc == 0)
            rc =
                sk_metrics_render_prometheus(&admin.body, cfg, eps.v, eps.n, sk_srv.metrics, sk_srv.nworkers);
        endpoints_release(&eps);
        /* then what the other layers keep: endpoint sets, plugin metrics, certificates */
        if (rc == 0 && cfg)
            rc = sk_clusters_render_prometheus(&admin.body, cfg) |
                 sk_plugins_render_prometheus(&admin.body, cfg) |
                 sk_certs_render_prometheus(&admin.body, cfg);
        respond_body(c, rc, "text/plain; version=0.0.4; charset=utf-8");
    } else if (strcmp(p, "/stats") == 0) {
        bool ok = true;
        respond_body(c, render_json(stats_json(cfg, &ok), ok), JSON_TYPE);
    } else if (strcmp(p, "/config") == 0 || strcmp(p, "/clusters") == 0) {
        if (!cfg) {
            respond_text(c, 503, "no configuration loaded\n");
            return;
        }
        bool ok = true;
        json_t *j = strcmp(p, "/config") == 0 ? config_json(cfg, &ok) : clusters_json(cfg, &ok);
        respond_body(c, render_json(j, ok), JSON_TYPE);
    } else if (strcmp(p, "/reload") == 0) {
        char *err = NULL;
        bool ok = true;
        json_t *j = json_object();
        if (sk_server_reload(&err) < 0) {
            jset(j, "ok", json_false(), &ok);
            jset_str(j, "error", err ? err : "reload failed", &ok);
        } else {
            jset(j, "ok", json_true(), &ok);
            jset(j, "generation", jint(sk_srv.config->generation), &ok);
        }
        int rc = render_json(j, ok);
        if (rc == 0 && err) {
            respond(c, 400, JSON_TYPE, admin.body.data + admin.body.off, sk_buf_pending(&admin.body), NULL,
                    false);
        } else {
            respond_body(c, rc, JSON_TYPE);
        }
        free(err);
    } else if (strcmp(p, "/drain") == 0) {
        const char *t = "{\"ok\":true}\n";
        respond(c, 202, JSON_TYPE, t, strlen(t), NULL, true);
        c->drain_after = true; /* conn_parse() sends the 202, then drains */
    }
    if (sk_buf_pending(&admin.body) > 64 * 1024) sk_buf_free(&admin.body); /* don't hoard */
}

/* ---- llhttp callbacks --------------------------------------------------- */

static conn *pconn(llhttp_t *p)
{
    return p->data;
}

/* Adds n bytes to the head; fails the request with 431 beyond the cap. */
static int head_add(llhttp_t *p, size_t n)
{
    conn *c = pconn(p);
    c->head_bytes += n;
    if (c->head_bytes > ADMIN_MAX_HEAD) {
        c->error_status = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    conn *c = pconn(p);
    sk_buf_reset(&c->url);
    c->head_bytes = c->body_bytes = 0;
    c->message_done = false;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    if (head_add(p, n) < 0) return -1;
    if (sk_buf_append(&pconn(p)->url, at, n) < 0) {
        pconn(p)->error_status = 500;
        return -1;
    }
    return 0;
}

static int on_head_data(llhttp_t *p, const char *at, size_t n)
{
    return head_add(p, n);
}

/* separators not reported by the data callbacks: ": " and CRLF, spaces */
static int on_line_complete(llhttp_t *p)
{
    return head_add(p, 4);
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    conn *c = pconn(p);
    c->body_bytes += n;
    if (c->body_bytes > ADMIN_MAX_BODY) {
        c->error_status = 413;
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn *c = pconn(p);
    c->message_done = true;
    c->keepalive = llhttp_should_keep_alive(p);
    c->http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
    c->method = llhttp_get_method(p);
    if (llhttp_get_upgrade(p)) c->keepalive = false; /* no upgrades (or CONNECT) here */
    /* one request at a time: the feed loop answers it, then resumes */
    return HPE_PAUSED;
}

/* ---- I/O ---------------------------------------------------------------- */

/* Writes as much of c->out as the socket takes. Returns -1 if c was closed. */
static int conn_flush(conn *c)
{
    bool progress = false;
    while (sk_buf_pending(&c->out) > 0) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, sk_buf_pending(&c->out), MSG_NOSIGNAL);
        if (n > 0) {
            sk_buf_consume(&c->out, (size_t)n);
            progress = true;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        conn_close(c); /* peer went away */
        return -1;
    }
    if (sk_buf_pending(&c->out) == 0 && c->close_after_write) {
        conn_close(c);
        return -1;
    }
    /* progress restarts the clock: a finished response starts the wait for
     * the next request, a partial one the wait for the client to read */
    if (progress) ev_timer_again(admin.loop, &c->timer);
    return 0;
}

/* Parses buffered input and answers complete requests, in order. */
static void conn_parse(conn *c)
{
    while (!c->closing && !c->close_after_write && sk_buf_pending(&c->in) > 0 &&
           sk_buf_pending(&c->out) < ADMIN_OUT_HIGH) {
        const char *data = c->in.data + c->in.off;
        size_t len = sk_buf_pending(&c->in);
        llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
        size_t used = len;
        if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
            if (e == HPE_PAUSED) llhttp_resume(&c->parser);
        }
        sk_buf_consume(&c->in, used);
        if (e == HPE_PAUSED && c->message_done) {
            c->message_done = false;
            handle_request(c);
            if (c->drain_after) {
                /* POST /drain: get the 202 out first, then drain; the drain
                 * may close every admin connection, including this one */
                c->drain_after = false;
                conn_flush(c);
                sk_server_drain();
                return;
            }
            continue;
        }
        if (e == HPE_OK) continue;
        if (e == HPE_PAUSED_UPGRADE) { /* after an upgrade request: answered, stop */
            c->close_after_write = true;
            break;
        }
        /* malformed or over a limit: answer and close */
        int status = c->error_status ? c->error_status : 400;
        c->keepalive = false;
        c->method = 0;
        char text[160];
        if (c->error_status)
            snprintf(text, sizeof(text), "%s\n", reason(status));
        else
            snprintf(text, sizeof(text), "bad request: %s\n", llhttp_get_error_reason(&c->parser));
        respond_text(c, status, text);
        sk_buf_reset(&c->in);
    }
}

static void conn_read(conn *c)
{
    for (int i = 0; i < 4 && sk_buf_pending(&c->in) < ADMIN_IN_MAX; i++) {
        char tmp[8192];
        ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
        if (n > 0) {
            if (sk_buf_append(&c->in, tmp, (size_t)n) < 0) {
                conn_close(c);
                return;
            }
            if ((size_t)n < sizeof(tmp)) break;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n == 0) {
            c->peer_eof = true; /* answer what was received, then close */
            break;
        }
        conn_close(c); /* reset */
        return;
    }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    conn *c = w->data;
    admin.depth++;
    if ((revents & EV_READ) && !c->closing) conn_read(c);
    /* answer, send, and answer more pipelined requests while the socket
     * takes the output; a bounded number of rounds, then conn_update()
     * brings us back through EV_WRITE so other watchers get their turn */
    for (int round = 0; round < 8 && !c->closing; round++) {
        conn_parse(c);
        if (c->closing || conn_flush(c) < 0) break;
        if (sk_buf_pending(&c->in) == 0 || c->close_after_write || sk_buf_pending(&c->out) >= ADMIN_OUT_HIGH)
            break;
    }
    /* client gone and nothing left to answer */
    if (!c->closing && c->peer_eof && sk_buf_pending(&c->out) == 0 &&
        (sk_buf_pending(&c->in) == 0 || c->close_after_write))
        conn_close(c);
    if (!c->closing) conn_update(c);
    admin.depth--;
    reap();
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    conn *c = w->data;
    admin.depth++;
    sk_debug("admin: connection timed out");
    conn_close(c);
    admin.depth--;
    reap();
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    admin.depth++;
    for (int i = 0; i < ADMIN_ACCEPT_BURST && admin.nconns < ADMIN_MAX_CONNS; i++) {
        int fd = accept4(admin.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) sk_warn("admin: accept: %s", strerror(errno));
            break;
        }
        conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->fd = fd;
        llhttp_init(&c->parser, HTTP_REQUEST, &admin.settings);
        c->parser.data = c;
        ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
        c->io_events = EV_READ;
        ev_init(&c->timer, conn_timer_cb);
        c->timer.repeat = ADMIN_TIMEOUT;
        c->timer.data = c;
        ev_timer_again(loop, &c->timer);
        c->next = admin.conns;
        if (admin.conns) admin.conns->prev = c;
        admin.conns = c;
        admin.nconns++;
    }
    listener_update();
    admin.depth--;
    reap();
}

/* ---- start / stop ------------------------------------------------------- */

static char *errf(const char *fmt, const char *a, const char *b)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), fmt, a, b);
    return strdup(tmp);
}

/*
 * sk_admin_start() binds cfg->admin (SO_REUSEADDR, non-blocking) and serves
 * the admin endpoint on `loop`, the main thread's loop, until
 * sk_admin_stop(). Does nothing and returns 0 when the config says
 * `admin = off`. The endpoint reads sk_srv (config, metrics, ready,
 * draining) at request time, so it always shows the running generation;
 * `cfg` is only used for the address. Returns 0, or -1 with *err set to a
 * malloc'd message (owned by the caller) when the socket cannot be set up
 * or the endpoint is already running.
 */
int sk_admin_start(struct ev_loop *loop, const sk_config *cfg, char **err)
{
    if (err) *err = NULL;
    if (!cfg->admin_enabled) return 0;
    if (admin.running) {
        if (err) *err = strdup("admin: endpoint already started");
        return -1;
    }
    const sk_addr *a = &cfg->admin;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (err) *err = errf("admin %s: socket: %s", a->text, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (a->ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
        if (err) *err = errf("admin %s: cannot bind: %s", a->text, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 128) < 0) {
        if (err) *err = errf("admin %s: listen: %s", a->text, strerror(errno));
        close(fd);
        return -1;
    }

    llhttp_settings_init(&admin.settings);
    admin.settings.on_message_begin = on_message_begin;
    admin.settings.on_url = on_url;
    admin.settings.on_method = on_head_data;
    admin.settings.on_version = on_head_data;
    admin.settings.on_header_field = on_head_data;
    admin.settings.on_header_value = on_head_data;
    admin.settings.on_url_complete = on_line_complete;
    admin.settings.on_header_value_complete = on_line_complete;
    admin.settings.on_body = on_body;
    admin.settings.on_message_complete = on_message_complete;

    admin.loop = loop;
    admin.fd = fd;
    admin.running = true;
    admin.accepting = false;
    ev_io_init(&admin.accept_io, accept_cb, fd, EV_READ);
    listener_update();
    sk_info("admin endpoint listening on %s", a->text);
    return 0;
}

/*
 * sk_admin_stop() closes the admin listener and every admin connection
 * (responses not yet written are dropped). Safe to call when the endpoint
 * was never started, more than once, and from inside an admin request
 * (POST /drain → sk_server_drain()): connections are then freed when that
 * request's callback returns. Main thread only.
 */
void sk_admin_stop(void)
{
    if (admin.running) {
        if (admin.accepting) ev_io_stop(admin.loop, &admin.accept_io);
        admin.accepting = false;
        admin.running = false;
        close(admin.fd);
        admin.fd = -1;
    }
    while (admin.conns) conn_close(admin.conns);
    reap(); /* also releases the scratch body; deferred while in a callback */
}
