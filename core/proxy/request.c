/*
 * request.c — a request's life: created when a codec starts one (recycled
 * from the thread's free list, so a warmed-up worker does not malloc per
 * request), finished once — metrics, the on_log hooks, the access log line
 * — and recycled. The codecs end requests only through here (sk_server_cbs
 * finish), so an HTTP/2 codec reuses all of it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "accesslog.h"
#include "filter.h"
#include "metrics.h"
#include "request.h"

/* The filter hosts (registered by the runtime before any worker runs). */
const sk_filter_ops *sk_filters;

/* Registers the filter hosts (see filter.h). */
void sk_filters_register(const sk_filter_ops *ops)
{
    sk_filters = ops;
}

/* Allocates a request for a stream (see request.h). */
sk_request *sk_request_new(const sk_conn_info *ci, const sk_server_ops *ops, void *stream)
{
    sk_wctx *w = ci->wctx;
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
    sk_arena arena = r->arena;
    sk_header *up_hdrs = r->up_hdrs, *down_hdrs = r->down_hdrs;
    size_t up_cap = r->up_nhdrs_cap, down_cap = r->down_hdrs_cap;
    sk_buf xff = r->xff;
    memset(r, 0, sizeof(*r));
    sk_list_init(&r->link);
    r->head = head;
    r->rhead = rhead;
    r->arena = arena;
    r->up_hdrs = up_hdrs;
    r->up_nhdrs_cap = up_cap;
    r->down_hdrs = down_hdrs;
    r->down_hdrs_cap = down_cap;
    r->xff = xff;
    sk_head_reset(&r->head);
    sk_head_reset(&r->rhead);
    sk_buf_reset(&r->xff);
    r->worker = w;
    r->config = ci->config;
    sk_config_ref(r->config);
    r->listener = ci->listener;
    r->client_ip = ci->client_ip;
    snprintf(r->client_addr_buf, sizeof(r->client_addr_buf), "%s",
             ci->client_addr ? ci->client_addr : "unknown");
    r->client_addr = r->client_addr_buf;
    r->identity = ci->peer_identity;
    r->secure = ci->secure;
    r->down_ops = ops;
    r->down = stream;
    return r;
}

/* on_log hooks, then the access log line. */
void sk_request_log(sk_request *r)
{
    sk_proxy_log(r);
    sk_accesslog_write(r);
}

/* Returns a request to the free list; oversized buffers are released. */
void sk_request_free(sk_request *r)
{
    sk_wctx *w = r->worker;
    if (ev_is_active(&r->timeout)) ev_timer_stop(w->loop, &r->timeout);
    if (r->lua_co) sk_filters->lua_done(r);
    sk_config_unref(r->config);
    r->config = NULL;
    if (r->head.raw.cap > 65536 || r->head.cap > 256) sk_head_free(&r->head);
    if (r->rhead.raw.cap > 65536 || r->rhead.cap > 256) sk_head_free(&r->rhead);
    if (r->up_nhdrs_cap > 256) {
        free(r->up_hdrs);
        r->up_hdrs = NULL;
        r->up_nhdrs_cap = 0;
    }
    if (r->down_hdrs_cap > 256) {
        free(r->down_hdrs);
        r->down_hdrs = NULL;
        r->down_hdrs_cap = 0;
    }
    if (r->xff.cap > 65536) sk_buf_free(&r->xff);
    sk_arena_reset(&r->arena);
    r->finished = true;
    sk_list_insert(&w->free_reqs, &r->link);
}

/* Counts, logs and recycles a completed request. */
void sk_request_finish(sk_request *r)
{
    uint64_t dur_us = (sk_now_ns() - r->start_ns) / 1000;
    if (r->status >= 100 && r->status <= 599)
        sk_metrics_request(r->worker->metrics, r->route ? r->route->metrics_row : r->listener->metrics_row,
                           r->status, dur_us);
    sk_request_log(r);
    sk_request_free(r);
}
