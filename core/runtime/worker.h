/*
 * worker.h — the types of the data path: workers, downstream connections,
 * requests, upstream connections and pools. Functions of each live in the
 * file of the same name: worker.c, http1.c (downstream codec), proxy.c (the
 * request's way from route to upstream and back), upstream.c (upstream
 * connections and pools).
 */
#ifndef SK_WORKER_H
#define SK_WORKER_H

#include <ev.h>
#include <llhttp.h>
#include <pthread.h>

#include "config.h"
#include "metrics.h"
#include "transport.h"

typedef struct sk_worker sk_worker;
typedef struct sk_conn sk_conn;
typedef struct sk_request sk_request;
typedef struct sk_upconn sk_upconn;
typedef struct sk_pool sk_pool;

/* Intrusive doubly linked list. */
typedef struct sk_link {
    struct sk_link *prev, *next;
} sk_link;

static inline void sk_list_init(sk_link *l)
{
    l->prev = l->next = l;
}
static inline bool sk_list_empty(const sk_link *l)
{
    return l->next == l;
}
static inline void sk_list_insert(sk_link *head, sk_link *n)
{
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}
static inline void sk_list_remove(sk_link *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
#define SK_CONTAINER(p, type, field) ((type *)((char *)(p)-offsetof(type, field)))

#define SK_READ_BUF         32768        /* bytes read per read(2) */
#define SK_HIGH_WATER       (256 * 1024) /* stop reading the source above this */
#define SK_LOW_WATER        (64 * 1024)  /* resume below this */
#define SK_UPSTREAM_IDLE_MS 60000        /* idle pooled upstream connections close after */

/* A parsed header: offsets into sk_request.head (stable across reallocs). */
typedef struct sk_hdr_off {
    uint32_t name, name_len, value, value_len;
} sk_hdr_off;

/* The parsed head of a message plus its storage. Reused across requests. */
typedef struct sk_head {
    sk_buf raw;            /* url/status text and header bytes, back to back */
    sk_hdr_off *offs;      /* header offsets into raw */
    size_t nhdrs;          /* headers parsed */
    size_t cap;            /* capacity of offs */
    uint32_t url, url_len; /* request target (request) or reason text (response) */
    sk_header *views;      /* header views, valid once the head is complete */
    size_t views_cap;      /* capacity of views */
    bool in_value;         /* last callback was a value piece */
    bool done;             /* head complete: later fields are trailers (dropped, but counted) */
    size_t trailer_bytes;  /* bytes of trailer fields seen */
} sk_head;

/* Where a request is in its life. */
enum sk_req_state {
    SK_REQ_HEAD = 0,   /* reading the request head */
    SK_REQ_UPSTREAM,   /* waiting for / talking to an upstream */
    SK_REQ_RESPONDING, /* response head sent, body streaming */
    SK_REQ_DONE,       /* response complete */
};

/* How a body is framed on the wire. */
enum sk_framing { SK_BODY_NONE = 0, SK_BODY_LENGTH, SK_BODY_CHUNKED, SK_BODY_EOF };

/*
 * One request/response exchange. Independent of the downstream codec so
 * that an HTTP/2 stream can drive the same proxy logic later. Recycled
 * through the worker's free list: its buffers keep their capacity, so a
 * warmed-up worker does not malloc per request.
 */
struct sk_request {
    sk_conn *conn;              /* the downstream connection (owner) */
    sk_worker *worker;          /* the worker it lives on */
    sk_config *config;          /* generation it started on (reference) */
    sk_link link;               /* free-list link */
    int state;                  /* enum sk_req_state */
    uint64_t start_ns;          /* first byte of the head */
    uint64_t upstream_start_ns; /* request sent upstream */
    uint64_t upstream_end_ns;   /* response complete */
    uint64_t upstream_connect_ns;    /* upstream connection ready (connected or pooled), last attempt */
    uint64_t upstream_first_byte_ns; /* first upstream response byte, last attempt */
    uint64_t end_ns;                 /* on_log started (the request is over) */

    sk_head head;       /* request head */
    const char *method; /* method name (static string) */
    int method_id;      /* llhttp method */
    const char *path;   /* into head.raw: path part of the target */
    size_t path_len;
    const char *query; /* after '?', or NULL */
    size_t query_len;
    const char *host; /* authority without port, or "" */
    size_t host_len;
    const char *authority; /* Host header as sent */
    size_t authority_len;
    char request_id[128];        /* x-request-id sent upstream (the client's if it fits) */
    int req_framing;             /* enum sk_framing of the request body */
    uint64_t req_content_length; /* when SK_BODY_LENGTH */
    uint64_t body_received;      /* request body bytes received (decoded) */
    uint64_t bytes_received;     /* request bytes on the wire, head included */
    bool body_done;              /* request body fully received */
    bool expect_continue;        /* client sent Expect: 100-continue */
    bool keep_alive;             /* client wants keep-alive */
    int http_minor;              /* client's HTTP/1.x minor version */

    const sk_route *route; /* matched route, or NULL */
    sk_cluster *cluster;   /* chosen cluster, or NULL */
    sk_pool *pool;         /* current endpoint's pool, or NULL */
    char endpoint[64];     /* last endpoint tried ("ip:port"), for the access log */
    unsigned attempts;     /* upstream attempts made */
    bool up_reused;        /* the current upstream connection came from the pool */
    bool stale_retried;    /* the one free retry after a stale pooled connection is used */
    sk_upconn *up;         /* the upstream connection in use */
    sk_buf uphead;         /* request head as sent upstream (kept for retries) */
    bool counted_request;  /* holds a cluster active_requests slot */
    bool counted_pending;  /* holds a cluster active_pending slot */
    ev_timer timeout;      /* route timeout */

    sk_head rhead;         /* response head from upstream */
    int status;            /* response status sent to the client */
    const char *reason;    /* x-sidekick-reason of a local reply, or NULL */
    int resp_framing;      /* enum sk_framing towards the client */
    uint64_t bytes_sent;   /* bytes written towards the client */
    bool response_started; /* response head queued to the client */
    bool close_after;      /* close the client connection after this response */
    bool discard_body;     /* drop remaining request body (local reply sent) */
    bool up_body_done;     /* request body fully queued upstream */
    /* The filter chain (plugin_host.c, proxy.c). */
    sk_arena arena;                /* per-request memory: plugin copies, metadata, replies */
    unsigned chain_pos;            /* filters entered so far: listener plugins, then the route's */
    bool routed;                   /* route matching has run */
    bool filter_paused;            /* a plugin returned SK_PAUSE and has not resumed yet */
    bool in_hook;                  /* a plugin hook of this request is running */
    bool in_response_hooks;        /* on_response hooks are running (response edits allowed) */
    int early_resume;              /* resume() called inside the hook: status + 1, or 0 */
    struct sk_instance *paused_by; /* the plugin that paused */
    sk_cluster *cluster_override;  /* set by a plugin with set_cluster() */
    struct sk_meta *meta;          /* metadata, newest first (arena) */
    int lr_status;                 /* local reply prepared by a plugin's respond(), or 0 */
    const char *lr_reason;         /* its x-sidekick-reason, or NULL */
    const char *lr_body;           /* its body (arena) */
    size_t lr_body_len;            /* its length */
    const char **lr_headers;       /* its extra headers: name, value, ..., NULL (arena) */
    /* The route's Lua filter (lua_filter.c). */
    bool lua_ran;        /* on_request ran: on_response runs too */
    void *lua_co;        /* its coroutine (lua_State *) for both hooks, or NULL */
    void *lua_q;         /* the Lua request object (userdata in the coroutine's slot 1) */
    uint64_t lua_ns;     /* Lua time used so far, against lua_budget */
    const char *up_path; /* path sent upstream, set by r:set_path() (arena), or NULL */
    size_t up_path_len;
};

/* One metadata entry of a request (arena). */
typedef struct sk_meta {
    struct sk_meta *next;
    const char *key, *value;
} sk_meta;

/* A downstream (client) connection. */
struct sk_conn {
    sk_worker *worker;           /* owner */
    const sk_listener *listener; /* the listener it was accepted on (of conn->config) */
    sk_config *config;           /* generation at accept (reference) */
    sk_link link;                /* in worker->conns */
    sk_transport tr;             /* the socket */
    ev_io rio, wio;              /* read / write readiness */
    ev_timer timer;              /* header or idle timeout */
    llhttp_t parser;             /* HTTP/1 request parser */
    char *rbuf;                  /* read buffer (SK_READ_BUF, from the worker's pool) or NULL */
    size_t rpos, rlen;           /* unparsed bytes are rbuf[rpos..rlen) */
    sk_out out;                  /* towards the client */
    sk_request *req;             /* current request, or NULL between requests */
    char client_ip[46];          /* peer address text */
    char client_addr[64];        /* peer "ip:port" */
    bool reading;                /* rio started */
    bool closing;                /* close once out is flushed */
    bool dead;                   /* closed; free at the next safe point */
    bool paused;                 /* parser paused at a message end */
    bool read_eof;               /* client half-closed */
    bool in_parser;              /* inside llhttp_execute */
    bool filter_wait;            /* parser paused after a head while a plugin works */
    bool linger;                 /* unread input may follow: close with a lingering close */
    bool lingering;              /* half-closed, draining input before the close */
    char last_byte;              /* last byte handed to the parser (obs-fold check) */
};

/* A pooled upstream connection. */
struct sk_upconn {
    sk_worker *worker;       /* owner */
    sk_pool *pool;           /* the (cluster, endpoint) pool it belongs to */
    sk_link link;            /* in pool->idle while idle */
    sk_transport tr;         /* the socket */
    ev_io rio, wio;          /* readiness */
    ev_timer timer;          /* connect timeout, then idle timeout */
    llhttp_t parser;         /* HTTP/1 response parser */
    char *rbuf;              /* read buffer, SK_READ_BUF */
    size_t rpos, rlen;       /* unparsed bytes */
    sk_out out;              /* towards the upstream */
    sk_request *req;         /* the request using it, or NULL when idle */
    bool connected;          /* connect completed */
    bool reading;            /* rio started */
    bool got_response_bytes; /* any byte of the response arrived */
    bool response_done;      /* on_message_complete seen */
    bool reusable;           /* may go back to the pool */
    bool retry_response;     /* a 502/503/504 that will be retried: not forwarded */
    bool filter_reply;       /* a plugin's on_response replaced the response */
    unsigned requests;       /* requests served on it */
};

/* Idle upstream connections of one (cluster, endpoint) on one worker. */
struct sk_pool {
    sk_link idle;         /* sk_upconn.link, most recently used first */
    size_t nidle;         /* number of idle connections */
    sk_cluster *cluster;  /* the cluster */
    sk_endpoint endpoint; /* the endpoint (a copy: endpoint sets change) */
    unsigned active;      /* requests in flight to this endpoint on this worker */
    unsigned conns;       /* open connections (idle + in use) */
    bool orphan;          /* the endpoint left the cluster: freed when conns = 0 */
    bool retired;         /* its generation is no longer current: no idle connections */
};

/* Per-worker runtime state of a cluster. */
typedef struct sk_wcluster {
    sk_pool **pools;  /* one per endpoint of the adopted endpoint set */
    size_t npools;    /* number of pools */
    uint64_t version; /* sk_cluster.eps_version adopted, UINT64_MAX = none yet */
    uint32_t rr;      /* round-robin cursor */
} sk_wcluster;

/* A generation as one worker holds it: a reference and the pools of its
 * clusters. The current one, and retired ones that connections or requests
 * of this worker still use. */
typedef struct sk_wgen {
    struct sk_wgen *next;  /* next retired generation */
    sk_config *config;     /* reference */
    sk_wcluster *clusters; /* config->nclusters entries */
    uint64_t retired_ms;   /* when it stopped being current (sk_now_ms), 0 = current */
} sk_wgen;

/* Iterates a worker's generations, current first: for (g = w->gen; g; g = sk_wgen_next(w, g)). */
#define sk_wgen_next(w, g) ((g) == (w)->gen ? (w)->retired : (g)->next)

/* One listening socket of a worker. */
typedef struct sk_wlistener {
    sk_worker *worker;
    const sk_listener *listener;
    int fd; /* SO_REUSEPORT socket, -1 when closed */
    ev_io io;
} sk_wlistener;

/* A worker thread: one libev loop, its listeners, connections and pools. */
struct sk_worker {
    int id; /* 0..n-1 */
    pthread_t thread;
    struct ev_loop *loop;
    sk_config *config;       /* current generation (= gen->config) */
    sk_wgen *gen;            /* current generation: reference and pools */
    sk_wgen *retired;        /* older generations still in use here */
    ev_timer retire_timer;   /* frees retired generations once unused */
    sk_metrics *metrics;     /* written only by this worker */
    sk_wlistener *listeners; /* nlisteners entries, for config->listeners */
    size_t nlisteners;
    sk_link conns;     /* open downstream HTTP connections */
    sk_link tcp_conns; /* open downstream connections of tcp listeners */
    size_t nconns;     /* both kinds */
    sk_link free_reqs; /* recycled sk_request */
    char **free_bufs;  /* recycled read buffers */
    size_t nfree_bufs, free_bufs_cap;
    ev_async wake;            /* main → worker: drain */
    ev_async post;            /* main → worker: posted work (sk_workers_post) */
    struct post_item *posted; /* posted work, newest first (under a lock) */
    ev_timer drain_timer;     /* periodic drain check */
    ev_prepare reap;          /* frees dead connections at a safe point */
    sk_conn **dead;           /* connections to free */
    size_t ndead, dead_cap;
    bool draining;
    uint64_t rng;     /* xorshift state */
    int accesslog_fd; /* -1 when off */
    sk_buf logline;   /* access log line being built */
};

/* Gives back the cluster's max_pending slot a request holds while its
 * upstream connection is being established. */
static inline void sk_request_pending_done(sk_request *r)
{
    if (r->counted_pending) {
        __atomic_sub_fetch(&r->cluster->active_pending, 1, __ATOMIC_RELAXED);
        r->counted_pending = false;
    }
}

/* --- worker.c --- */
/* Starts n workers on cfg; binds every listener in each (SO_REUSEPORT).
 * Returns 0 or -1 with *err (malloc'd). */
int sk_workers_start(sk_config *cfg, sk_metrics **metrics, int n, int accesslog_fd, char **err);
/* Runs cb(arg) on every worker's loop soon (thread-safe). Returns the number
 * of workers that will run it (> 0), or -1. */
int sk_workers_post(void (*cb)(void *), void *arg);
/* Asks every worker to drain (thread-safe). */
void sk_workers_drain(void);
/*
 * Publishes generation `next` (main thread): binds the listeners that `cur`
 * does not have (one socket per worker), then each worker switches at its
 * next loop iteration: listeners with an unchanged address keep their
 * sockets, removed ones close, idle keep-alive connections move over, and
 * in-flight work finishes on `cur`. `rows` is the metrics rows needed.
 * Returns 0, or -1 with *err (malloc'd) and nothing changed.
 */
int sk_workers_reload(sk_config *cur, sk_config *next, size_t rows, char **err);
/* A worker's hold on generation cfg (a reference, empty pools); NULL on OOM. */
sk_wgen *sk_wgen_new(sk_worker *w, sk_config *cfg);
/* Waits (main thread, bounded) until every worker applied the reloads
 * posted so far. false when timeout_ms passed first. */
bool sk_workers_wait_switched(uint64_t timeout_ms);
/* The worker pools of cluster cl's generation on worker w, or NULL. */
sk_wcluster *sk_worker_wcluster(sk_worker *w, const sk_cluster *cl);
/* Moves an idle connection to the worker's current generation (or drains
 * it when its listener is gone). */
void sk_conn_adopt_generation(sk_conn *c);
/* Number of workers still running (thread-safe). */
int sk_workers_running(void);
/* Next pseudo-random number of the worker. */
uint32_t sk_worker_rand(sk_worker *w);
/* A read buffer from the worker's pool / back to it. */
char *sk_worker_buf_get(sk_worker *w);
void sk_worker_buf_put(sk_worker *w, char *buf);
/* Allocates / recycles a request. */
sk_request *sk_request_new(sk_worker *w, sk_conn *c);
void sk_request_free(sk_request *r);

/* --- http1.c (downstream) --- */
/* Takes over an accepted socket. */
void sk_conn_accept(sk_worker *w, const sk_listener *l, int fd, const struct sockaddr *sa);
/* Closes a connection now (freed at the next safe point). */
void sk_conn_close(sk_conn *c);
/* Frees a dead connection (worker's reaper). */
void sk_conn_free(sk_conn *c);
/* Called when draining: close idle connections, mark the rest. */
void sk_conn_drain(sk_conn *c);
/* Sends a local reply for the current request with x-sidekick-reason. */
void sk_conn_local_reply(sk_conn *c, int status, const char *reason, const char *body, bool close);
/* Same, with a body of body_len bytes and extra headers (name, value, ..., NULL). */
void sk_conn_local_reply_ex(sk_conn *c, int status, const char *reason, const char *body, size_t body_len,
                            const char *const *headers, bool close);
/* A paused filter chain went on: let the parser continue with the body. */
void sk_conn_filter_resumed(sk_conn *c);
/* Queues response bytes towards the client / flushes them. */
int sk_conn_send_ref(sk_conn *c, const void *p, size_t n);
int sk_conn_send_copy(sk_conn *c, const void *p, size_t n);
void sk_conn_flush(sk_conn *c);
/* The current response completed: log, recycle, continue with pipelined input. */
void sk_conn_response_done(sk_conn *c);
/* Backpressure from the upstream side: stop/resume reading the client. */
void sk_conn_pause_read(sk_conn *c);
void sk_conn_resume_read(sk_conn *c);

/* --- proxy.c --- */
/* The request head is complete: route it. Returns 0 to go on, -1 if the
 * connection must close (a reply was queued). */
int sk_proxy_head(sk_request *r);
/* A piece of request body (already decoded). */
int sk_proxy_body(sk_request *r, const char *p, size_t n);
/* The request body is complete. */
int sk_proxy_body_end(sk_request *r);
/* host->resume(): continues the chain of a paused request. */
void sk_proxy_resume(sk_request *r, int st);
/* on_log of the plugins the request went through. */
void sk_proxy_log(sk_request *r);
/* A plugin replaced the upstream response (sk_proxy_response_head returned 1). */
void sk_proxy_filter_reply(sk_request *r);
/* The client went away: abort upstream work. */
void sk_proxy_abort(sk_request *r);
/* The client's output drained below the low-water mark. */
void sk_proxy_client_drained(sk_request *r);
/* Builds the response head towards the client from rhead, after the
 * plugins' on_response. 0, -1 on error, 1 when a plugin replaced it. */
int sk_proxy_response_head(sk_request *r, int status, bool no_body, bool up_chunked, bool up_length,
                           uint64_t length);
/* Response body bytes / end from the upstream. */
int sk_proxy_response_body(sk_request *r, const char *p, size_t n);
void sk_proxy_response_end(sk_request *r);
/* Should a response with this status be retried instead of forwarded? */
bool sk_proxy_retry_status(sk_request *r, int status);
/* Starts the next attempt after a retried response (u released by caller). */
void sk_proxy_retry(sk_request *r);
/* Upstream failure before/after response start. reason as in DESIGN.md. */
void sk_proxy_upstream_error(sk_request *r, int status, const char *reason, bool retryable);

/* --- upstream.c --- */
/* Picks an endpoint (its pool) of cluster cl by its lb policy, adopting a
 * new endpoint set first if discovery changed it; avoids `avoid` when it
 * can. NULL when the cluster has no endpoint. */
sk_pool *sk_cluster_pick(sk_worker *w, sk_cluster *cl, const sk_pool *avoid);
/* Frees a worker's pools of every cluster (worker exit). */
void sk_pools_free(sk_worker *w, sk_wgen *g);
/* Orphans a retired generation's pools (idle connections close). */
void sk_pools_retire(sk_worker *w, sk_wgen *g);
/* Gets a pooled or new connection to r->pool and attaches it to r.
 * Returns 0, or -1 (connect failed at once: caller handles). */
int sk_upstream_attach(sk_request *r);
/* Flushes queued request bytes to the upstream. -1 when u failed and is gone. */
int sk_upstream_flush(sk_upconn *u);
/* The request is done with the connection: pool it or close it. */
void sk_upstream_release(sk_upconn *u, bool reuse);
/* Backpressure from the client side. */
void sk_upstream_pause_read(sk_upconn *u);
void sk_upstream_resume_read(sk_upconn *u);
/* Closes all idle pooled connections of a worker. */
void sk_upstream_close_idle(sk_worker *w);

/* --- tcp.c --- */
/* Takes over an accepted socket of a `protocol = tcp` listener. */
void sk_tcp_accept(sk_worker *w, const sk_listener *l, int fd, const char *client_addr);
/* Does a relay of w still run on generation cfg? `cut` closes those. */
bool sk_tcp_uses_generation(sk_worker *w, const sk_config *cfg, bool cut);

/* --- accesslog.c --- */
/* Writes the access log line of a finished request (if enabled). */
void sk_accesslog_write(sk_request *r);

#endif
