/*
 * request.h — the request: one exchange from its first byte to its log
 * line, independent of the codec it came from. Its first part is the
 * protocol-neutral sk_msg (http/message.h) the codecs fill; the rest is the
 * proxy's: route, cluster, endpoint, attempts, the upstream connection, the
 * filter chain, the Lua coroutine. request.c creates, finishes (metrics,
 * on_log hooks, access log) and recycles requests; proxy.c moves them
 * through the chain and upstream.
 */
#ifndef SK_REQUEST_H
#define SK_REQUEST_H

#include <ev.h>

#include "codec.h"
#include "config.h"
#include "list.h"
#include "wctx.h"

typedef struct sk_request sk_request;
struct sk_pool;
struct sk_endpoint;
struct sk_instance;

#define SK_TRIED_MAX 12 /* endpoints a request remembers having tried: retries (at most 10) + 2 */

/* One metadata entry of a request (arena). */
typedef struct sk_meta {
    struct sk_meta *next;
    const char *key, *value;
} sk_meta;

struct sk_request {
    union {
        sk_msg msg; /* the exchange as the codecs see it */
        struct {
            SK_MSG_FIELDS
        };
    };
    sk_wctx *worker;               /* the thread it lives on */
    sk_config *config;             /* generation it started on (reference) */
    const sk_listener *listener;   /* the listener it came in on (of config) */
    const char *client_ip;         /* peer address text (the connection's) */
    const char *client_addr;       /* peer "ip:port" (client_addr_buf) */
    char client_addr_buf[64];      /* its storage: the codec's text lives only while a request begins */
    const char *identity;          /* verified peer identity, or NULL */
    bool secure;                   /* it came in over TLS */
    const sk_server_ops *down_ops; /* the downstream codec */
    void *down;                    /* its stream */
    sk_link link;                  /* free-list link */
    uint64_t upstream_start_ns;    /* last attempt sent upstream */
    uint64_t upstream_end_ns;      /* response complete */
    uint64_t upstream_connect_ns;  /* upstream connection ready (connected or pooled), last attempt */
    uint64_t end_ns;               /* on_log started (the request is over) */
    char request_id[128];          /* x-request-id sent upstream (the client's if it fits) */

    const sk_route *route;                   /* matched route, or NULL */
    sk_cluster *cluster;                     /* chosen cluster, or NULL */
    struct sk_pool *pool;                    /* current endpoint's pool, or NULL */
    char endpoint[64];                       /* last endpoint tried ("ip:port"), for the access log */
    unsigned attempts;                       /* upstream attempts made */
    struct sk_endpoint *tried[SK_TRIED_MAX]; /* endpoints tried, a retry avoids them (ring by ntried;
                                              * only compared, never dereferenced) */
    unsigned ntried;             /* endpoints tried so far (tried[] holds the last SK_TRIED_MAX) */
    bool up_reused;              /* the current upstream connection came from the pool */
    bool stale_retried;          /* the one free retry after a stale pooled connection is used */
    bool attempt_open;           /* the attempt in flight is not reported to its cluster yet (proxy.c
                                  * report_attempt: ewma, outlier detection) */
    void *up;                    /* the upstream connection in use (sk_upconn), or NULL */
    const sk_client_ops *up_ops; /* its codec */
    sk_header *up_hdrs;          /* header fields sent upstream (grown, reused; kept for retries) */
    size_t up_nhdrs;             /* their number */
    size_t up_nhdrs_cap;         /* capacity of up_hdrs */
    sk_header *down_hdrs;        /* response header fields forwarded to the client (grown, reused) */
    size_t down_hdrs_cap;        /* capacity of down_hdrs */
    sk_buf xff;                  /* the x-forwarded-for value sent upstream (reused) */
    bool counted_request;        /* holds a cluster active_requests slot */
    bool counted_pending;        /* holds a cluster active_pending slot */
    bool up_body_done;           /* request body fully queued upstream */
    bool finished;               /* finished (and recycled): nothing may touch it but a new begin */
    bool in_codec;               /* inside the codec's head callback: it flushes upstream after the read */
    ev_timer timeout;            /* route timeout (or a paused filter's limit, or a fault delay) */

    /* Retries, faults and mirroring (proxy.c, retry.c, mirror.c; docs/traffic.md). */
    ev_timer try_timer;    /* per_try_timeout of the running attempt, or the backoff before the next */
    bool backing_off;      /* try_timer is a backoff: the next attempt starts when it fires */
    bool counted_retry;    /* holds a cluster active_retries slot (max_retries) */
    int retry_reason;      /* enum sk_retry_cond of the last retry, SK_RETRY_NONE = none */
    int retry_fail_status; /* what a retry waiting in backoff answers if it cannot start after all */
    const char *retry_fail_reason; /* (its body outgrew the replay bound meanwhile) */
    uint64_t body_seen;            /* request body bytes the codec handed over (down_body): what
                                    * went upstream; body_received may also count bytes a codec holds */
    sk_buf replay;                 /* the request body so far, kept for a retry or the mirror (reused) */
    bool replay_keep;              /* the body goes into replay (the route retries or mirrors; the body
                                    * fits SK_REPLAY_MAX so far) */
    bool mirror_pending;           /* a copy goes to the route's mirror once the body is complete */
    bool fault_decided;            /* the route's fault delay was drawn */
    bool fault_wait;               /* a fault delay runs (on `timeout`); the codec holds the body */
    unsigned faults;               /* faults injected: 1 = delay, 2 = abort */

    /* The filter chain (plugin_host.c, proxy.c). */
    unsigned chain_pos;            /* filters entered so far: listener plugins, then the route's */
    bool routed;                   /* route matching has run */
    bool filter_paused;            /* a plugin returned SK_PAUSE and has not resumed yet */
    bool in_hook;                  /* a plugin hook of this request is running */
    bool in_response_hooks;        /* on_response hooks are running (response edits allowed) */
    int early_resume;              /* resume() called inside the hook: status + 1, or 0 */
    struct sk_instance *paused_by; /* the plugin that paused */
    sk_cluster *cluster_override;  /* set by a plugin with set_cluster() */
    sk_meta *meta;                 /* metadata, newest first (arena) */
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

/* The callbacks every server codec is given (proxy.c). */
extern const sk_server_cbs sk_proxy_server_cbs;

/* --- request.c --- */
/* Allocates a request (recycled when possible) for a stream of a connection
 * described by ci; takes a reference to ci->config. NULL on OOM. */
sk_request *sk_request_new(const sk_conn_info *ci, const sk_server_ops *ops, void *stream);
/* The exchange is over: counts it, runs the on_log hooks, writes the access
 * log line, and recycles the request. */
void sk_request_finish(sk_request *r);
/* The on_log hooks and the access log line of r (a cut request is logged
 * without being counted). */
void sk_request_log(sk_request *r);
/* Recycles r (its buffers keep their capacity); drops its generation. */
void sk_request_free(sk_request *r);
/* Gives back the cluster's max_pending slot a request holds while its
 * upstream connection is being established. */
static inline void sk_request_pending_done(sk_request *r)
{
    if (r->counted_pending) {
        __atomic_sub_fetch(&r->cluster->active_pending, 1, __ATOMIC_RELAXED);
        r->counted_pending = false;
    }
}

/* --- mirror.c --- */
/* Ends every mirrored copy still in flight on the calling worker (its exit). */
void sk_mirror_abort_all(void);

/* --- proxy.c --- */
/* host->resume(): continues the chain of a paused request. */
void sk_proxy_resume(sk_request *r, int st);
/* on_log of the plugins the request went through, last first. */
void sk_proxy_log(sk_request *r);

#endif
