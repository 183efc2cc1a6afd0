/*
 * h2_server.c — the downstream HTTP/2 codec: one nghttp2 server session per
 * client connection (framing, HPACK, flow control, RFC 9113 message
 * checks), one request per stream through the request layer's
 * sk_server_cbs, exactly as h1_server.c drives them: the request layer
 * cannot tell the codecs apart. What is HTTP/2's own lives here:
 *
 *  - the request head from HEADERS: pseudo-headers to the request model
 *    (:method, :path through the same normalisation as HTTP/1, :authority
 *    as Host with the same validation, winning over a host header), the
 *    header limits of the listener, cookies joined for HTTP/1 upstreams;
 *  - request bodies: DATA to cbs->body, the stream's flow-control window
 *    given back only as the body is handed on (automatic WINDOW_UPDATE is
 *    off), so a slow upstream closes the client's window instead of
 *    filling memory; held per stream while a filter pauses the request;
 *  - responses: HEADERS (and trailers) submitted to nghttp2, body pieces
 *    queued by reference and written without a copy when the window and
 *    the socket allow (NGHTTP2_DATA_FLAG_NO_COPY), copied per stream when
 *    they do not, with back-pressure towards the upstream (pending());
 *  - floods and abuse: rapid reset, PING/SETTINGS/empty DATA floods,
 *    oversized header blocks (CONTINUATION floods), oversized header lists
 *    (HPACK bombs), each bounded, answered with GOAWAY ENHANCE_YOUR_CALM or
 *    on the stream, and counted (sidekick_http2_protocol_errors_total);
 *  - the graceful GOAWAY of a drain or reload, idle and header timeouts.
 *
 * Re-entrancy: nghttp2 must not be driven (session_send) from inside its
 * own callbacks, and the request layer must not see its request finished
 * inside the head callback (as HTTP/1 defers it past llhttp). So a flush
 * asked for inside nghttp2 is remembered (flush_due) and done once the
 * call returns; a request answered inside a receive callback is finished
 * right after nghttp2_session_mem_recv() returns. Stream objects are freed
 * at the loop's safe point (sk_wctx_defer), never inside a callback.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <nghttp2/nghttp2.h>

#include "h2_server.h"
#include "metrics.h"
#include "normalize.h"
#include "tls.h"

/* Flood bounds (token buckets per connection: a burst, then a refill per
 * second). A well-behaved client stays far below them; an attacking one
 * reaches them within a fraction of a second. See docs/operations.md. */
#define PING_BURST     100 /* PING frames */
#define PING_RATE      10
#define SETTINGS_BURST 100 /* SETTINGS frames (not ACKs) */
#define SETTINGS_RATE  10
#define EMPTY_BURST    100 /* DATA frames without payload or END_STREAM */
#define EMPTY_RATE     10
/* Streams reset before their response ended (by the client, or by us for a
 * malformed request): a burst of max(2 x max_concurrent_streams, 200), a
 * refill of max(max_concurrent_streams, 100) per second. */
#define RESET_MIN_BURST 200
#define RESET_MIN_RATE  100

#define DRAIN_PING     "sk-drain" /* opaque data of the PING of a graceful GOAWAY (8 bytes) */
#define DRAIN_PING_MS  1000       /* the final GOAWAY goes out after this even without its answer */
#define FAIL_LINGER_MS 2000       /* a failed connection closes after this even if its GOAWAY waits */
#define REFS           8          /* body pieces a stream queues by reference before copying */
/* A flush of the request layer's that leaves less than this queued waits
 * for the end of the loop iteration, so that the answers of many streams
 * go out in one write. */
#define COALESCE_MAX 16384

/* A token bucket: `level` in thousandths of a token. */
typedef struct bucket {
    uint64_t level;
    uint64_t last_ms;
} bucket;

typedef struct h2_stream h2_stream;

/* What the connection timer (c->timer) waits for. */
enum {
    T_NONE = 0, /* requests wait for their upstreams (their route timeouts run) */
    T_HEADER,   /* a header block that has not ended: header_timeout */
    T_IDLE,     /* no stream: header_timeout before the first request, idle_timeout after */
    T_BODY,     /* a request body arrives: idle_timeout from the last read */
    T_OUT,      /* only answered streams, waiting for the client's window: idle_timeout from the last read */
    T_FAIL,     /* closing after a connection error */
};

struct sk_h2_conn {
    sk_conn *c;            /* the connection (h1_server.h) */
    nghttp2_session *ng;   /* the server session */
    sk_link streams;       /* h2_stream.link: streams with a request or open in nghttp2 */
    size_t nstreams;       /* their number */
    sk_link touched;       /* h2_stream.tlink: got request body in this read (input_done due) */
    sk_link todo;          /* h2_stream.dlink: work due at the next safe point */
    h2_stream **snap;      /* snapshot of the streams, for callbacks that may change the list */
    size_t snap_cap;       /* its capacity */
    ev_timer goaway_timer; /* the final GOAWAY of a drain, if the PING answer does not come */
    ev_prepare prep;       /* a write held for the end of the loop iteration (soft_flush) */
    bucket pings, settings, empty, resets;
    uint64_t reset_burst, reset_rate; /* the reset bucket's bounds (from max_concurrent_streams) */
    int32_t hb_stream;                /* stream of a header block not ended yet (END_HEADERS), 0 = none */
    size_t hb_bytes;                  /* its bytes so far */
    unsigned hb_frames;               /* its frames so far */
    size_t hb_limit;                  /* the bound on a header block's bytes */
    unsigned hb_max_frames;           /* the bound on its frames */
    size_t ncongested;                /* streams told congested, not drained yet */
    int timer_kind;                   /* T_* the timer is armed for */
    bool in_recv;                     /* inside nghttp2_session_mem_recv */
    bool in_send;                     /* inside nghttp2_session_send */
    bool flush_due;                   /* a flush was asked for inside nghttp2 */
    bool blocked;                     /* the last send stopped on a full write queue */
    bool failing;                     /* a connection error: GOAWAY queued, closing */
    bool ng_broken;                   /* nghttp2 returned a fatal error: not driven any more */
    bool notice_sent;                 /* the first GOAWAY of a graceful shutdown is queued */
    bool goaway_sent;                 /* the final GOAWAY is queued */
    bool any_request;                 /* a request stream was opened */
    bool feed_due;                    /* a read event is fed for work due (todo) */
    bool closed;                      /* sk_h2_close ran */
};

struct h2_stream {
    sk_h2_conn *h; /* its connection */
    int32_t id;    /* stream id */
    sk_msg *req;   /* the exchange, NULL once finished */
    void *rq;      /* the request layer's request of req */
    sk_link link;  /* in h->streams */
    sk_link tlink; /* in h->touched */
    sk_link dlink; /* in h->todo */
    /* request side */
    sk_buf in;               /* request body held while a filter works */
    size_t unconsumed;       /* stream window bytes not given back yet (paused, held) */
    uint64_t content_length; /* content-length sent by the client */
    int limit_status;        /* 414 / 431 found while the head arrived, or 0 */
    unsigned ncookies;       /* cookie header fields */
    bool has_cl;             /* a content-length was sent */
    bool authority;          /* :authority given: the first header field is a host made of it */
    bool head_done;          /* the head went to the request layer */
    bool filter_wait;        /* a filter holds the request: the body waits in `in` */
    bool paused;             /* back-pressure: the window is not given back */
    bool discard;            /* the rest of the request body is dropped (answered) */
    bool req_end;            /* END_STREAM received */
    bool end_delivered;      /* body_end went to the request layer */
    /* response side */
    sk_buf out;             /* response body bytes copied (they go before the refs) */
    const char *refp[REFS]; /* body pieces queued by reference, valid until the flush */
    size_t refn[REFS];      /* their lengths */
    int nrefs;              /* their number */
    size_t ref_bytes;       /* their total */
    nghttp2_nv *trailers;   /* trailer fields (one allocation with their bytes), or NULL */
    size_t ntrailers;       /* their number */
    bool submitted;         /* the response HEADERS are submitted */
    bool deferred;          /* the data source waits for body (NGHTTP2_ERR_DEFERRED) */
    bool resp_eof;          /* the whole body is queued (send_end / send_trailers) */
    bool resp_done;         /* the request layer said the response is done */
    bool eos_sent;          /* END_STREAM went out */
    bool congested;         /* told congested (cbs->congested or pending() above the mark) */
    bool closed;            /* nghttp2 closed the stream */
    bool cut;               /* reset or cut: the request layer must stop (gone) */
    bool rst_ours;          /* we reset it on purpose: not a protocol error to count */
    bool finish_due;        /* finish (complete) at the next safe point */
    bool released;          /* unlisted, freed at the loop's safe point */
};

static const sk_transport_cbs h2_transport_cbs;
static void h2_flush(sk_h2_conn *h);
static void after_input(sk_h2_conn *h);
static void h2_fail(sk_h2_conn *h, int reason, uint32_t code);
static void arm_timer(sk_h2_conn *h, bool read);
static void failing_mode(sk_h2_conn *h);
static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents);
static void stream_local_reply(h2_stream *s, int status, const char *reason, const char *body, size_t len,
                               const char *const *headers);

/* ---- small helpers ---- */

static uint64_t now_ms(const sk_h2_conn *h)
{
    return (uint64_t)(ev_now(h->c->worker->loop) * 1000.0);
}

static void bucket_init(bucket *b, uint64_t burst, uint64_t now)
{
    b->level = burst * 1000;
    b->last_ms = now;
}

/* Takes one token; false when the bucket is empty (the bound is passed). */
static bool bucket_take(bucket *b, uint64_t burst, uint64_t rate, uint64_t now)
{
    if (now > b->last_ms) {
        uint64_t add = (now - b->last_ms) * rate; /* thousandths per ms = tokens per s */
        b->level = b->level + add > burst * 1000 ? burst * 1000 : b->level + add;
        b->last_ms = now;
    }
    if (b->level < 1000) return false;
    b->level -= 1000;
    return true;
}

static sk_metrics *metrics(const sk_h2_conn *h)
{
    return h->c->worker->metrics;
}

static void count(sk_h2_conn *h, int reason)
{
    SK_INC(metrics(h)->h2_errors[reason]);
}

/* The client's "ip:port" for log lines (buf of 64 bytes). */
static const char *peer(const sk_h2_conn *h, char *buf)
{
    const sk_conn *c = h->c;
    snprintf(buf, 64, c->client_v6 ? "[%s]:%u" : "%s:%u", c->client_ip, (unsigned)c->client_port);
    return buf;
}

static h2_stream *stream_of(sk_h2_conn *h, int32_t id)
{
    return id > 0 ? nghttp2_session_get_stream_user_data(h->ng, id) : NULL;
}

/* Body bytes of s queued and not yet taken by a DATA frame. */
static size_t out_bytes(const h2_stream *s)
{
    return sk_buf_pending(&s->out) + s->ref_bytes;
}

/* What waits towards the client for s: its own queue and the connection's. */
static size_t stream_pending(const h2_stream *s)
{
    return out_bytes(s) + sk_out_pending(&s->h->c->out);
}

/* Takes a snapshot of the stream list (for loops whose callbacks may
 * unlist streams; the objects stay valid until the loop's safe point).
 * Returns the number of entries, 0 on OOM. */
static size_t snapshot(sk_h2_conn *h)
{
    if (h->nstreams > h->snap_cap) {
        size_t cap = h->nstreams + 16;
        h2_stream **v = realloc(h->snap, cap * sizeof(*v));
        if (!v) return 0;
        h->snap = v;
        h->snap_cap = cap;
    }
    size_t n = 0;
    for (sk_link *l = h->streams.next; l != &h->streams && n < h->snap_cap; l = l->next)
        h->snap[n++] = SK_CONTAINER(l, h2_stream, link);
    return n;
}

/* Copies the pieces s holds by reference into its own queue (before the
 * memory they point to goes: the end of every flush). */
static int detach_refs(h2_stream *s)
{
    int rc = 0;
    for (int i = 0; i < s->nrefs; i++) rc |= sk_buf_append(&s->out, s->refp[i], s->refn[i]);
    s->nrefs = 0;
    s->ref_bytes = 0;
    return rc;
}

static void detach_all(sk_h2_conn *h)
{
    for (sk_link *l = h->streams.next; l != &h->streams; l = l->next) {
        h2_stream *s = SK_CONTAINER(l, h2_stream, link);
        if (s->nrefs && detach_refs(s) < 0) s->cut = true; /* OOM: the stream is lost */
    }
}

/* Queues s for work at the next safe point (an event of our own). */
static void todo(h2_stream *s)
{
    sk_h2_conn *h = s->h;
    if (sk_list_empty(&s->dlink)) sk_list_insert(&h->todo, &s->dlink);
    if (!h->in_recv && !h->feed_due && !h->c->dead) {
        h->feed_due = true;
        sk_transport_feed_read(&h->c->tr);
    }
}

/* ---- streams ---- */

static void stream_free(void *p)
{
    h2_stream *s = p;
    sk_buf_free(&s->in);
    sk_buf_free(&s->out);
    free(s->trailers);
    free(s);
}

/* Unlists s and frees it at the loop's safe point, once it has neither a
 * request nor an nghttp2 stream (or the connection is gone). */
static void maybe_release(h2_stream *s)
{
    sk_h2_conn *h = s->h;
    if (s->released || s->rq || !(s->closed || h->c->dead)) return;
    s->released = true;
    if (s->congested && h->ncongested) h->ncongested--;
    sk_list_remove(&s->link);
    sk_list_remove(&s->tlink);
    sk_list_remove(&s->dlink);
    h->nstreams--;
    if (!s->closed && !h->ng_broken) nghttp2_session_set_stream_user_data(h->ng, s->id, NULL);
    sk_wctx_defer(h->c->worker, stream_free, s);
    if (!h->in_recv) arm_timer(h, false);
}

/* Hands the exchange back to the request layer (count, log, recycle).
 * When nghttp2 has nothing more to do (GOAWAY), the connection may close
 * now: that is checked at the next safe point, never inside the request
 * layer's call. */
static void finish(h2_stream *s, bool complete)
{
    sk_h2_conn *h = s->h;
    void *rq = s->rq;
    if (!rq) return;
    s->rq = NULL;
    s->req = NULL;
    s->finish_due = false;
    if (!complete) s->cut = true;
    h->c->cbs->finish(rq, complete);
    maybe_release(s);
    if (!h->in_recv) arm_timer(h, false); /* what the connection waits for changed */
    if (!h->c->dead && !h->ng_broken && !h->in_recv && !h->feed_due && !nghttp2_session_want_read(h->ng)) {
        h->feed_due = true;
        sk_transport_feed_read(&h->c->tr);
    }
}

/* Resets s (our decision: the request is cut or answered) with `code`. */
static void reset(h2_stream *s, uint32_t code)
{
    sk_h2_conn *h = s->h;
    if (s->closed || h->ng_broken) return;
    s->rst_ours = true;
    nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, s->id, code);
}

/* Gives the stream's window back for n bytes that were handed on. */
static void consume_stream(h2_stream *s, size_t n)
{
    if (n && !s->closed && !s->h->ng_broken) nghttp2_session_consume_stream(s->h->ng, s->id, n);
}

/* ---- the request head ---- */

/* Records a limit the head passed (the reply goes out once it is complete). */
static void head_limit(h2_stream *s, int status)
{
    if (!s->limit_status) s->limit_status = status;
}

/* Appends a header field to the request head within the listener's limits. */
static void add_field(h2_stream *s, const char *name, size_t nl, const char *value, size_t vl)
{
    const sk_listener *l = s->h->c->listener;
    sk_head *hd = &s->req->head;
    int rc = sk_head_field(hd, name, nl, l->max_headers, l->max_header_bytes);
    if (rc == 0) rc = sk_head_value(hd, value, vl, l->max_header_bytes);
    if (rc == -1 && hd->nhdrs < l->max_headers) rc = -3; /* out of memory */
    if (rc) head_limit(s, rc == -3 ? 500 : 431);
}

static int ng_on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nl,
                        const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    sk_h2_conn *h = ud;
    h2_stream *s = stream_of(h, frame->hd.stream_id);
    if (h->failing || !s || !s->rq) return 0;
    sk_msg *r = s->req;
    const sk_listener *l = h->c->listener;
    const char *n = (const char *)name, *v = (const char *)value;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* Trailer fields of the request body: dropped (nothing upstream
         * takes them yet), bounded like the head. */
        r->head.trailer_bytes += nl + vl;
        if (r->head.trailer_bytes > l->max_header_bytes) head_limit(s, 431);
        return 0;
    }
    if (s->limit_status) return 0; /* over a limit already: read on, keep nothing */
    if (nl > 0 && n[0] == ':') {
        /* nghttp2 has checked the pseudo-headers: known names, before the
         * regular fields, no duplicates, :method a token (RFC 9113 8.3). */
        if (nl == 7 && memcmp(n, ":method", 7) == 0) {
            r->method_id = sk_method_id(v, vl);
            r->method = sk_method_name(r->method_id);
            if (!r->method && !(r->method = sk_arena_strndup(&r->arena, v, vl))) head_limit(s, 500);
        } else if (nl == 5 && memcmp(n, ":path", 5) == 0) {
            if (vl > l->max_header_bytes || r->head.raw.len + vl > l->max_header_bytes) {
                head_limit(s, 414);
                return 0;
            }
            r->head.url = (uint32_t)r->head.raw.len;
            r->head.url_len = (uint32_t)vl;
            if (sk_buf_append(&r->head.raw, v, vl) < 0) head_limit(s, 500);
        } else if (nl == 10 && memcmp(n, ":authority", 10) == 0) {
            /* The authority becomes the Host header (the first field, as
             * pseudo-headers come before the others), so that routes,
             * plugins, Lua and an HTTP/1 upstream see one Host. */
            s->authority = true;
            add_field(s, "host", 4, v, vl);
        }
        return 0; /* :scheme: checked by nghttp2, not needed (x-forwarded-proto comes from the transport) */
    }
    switch (nl) {
    case 4:
        if (memcmp(n, "host", 4) == 0 && s->authority) return 0; /* :authority wins (RFC 9113 8.3.1) */
        break;
    case 6:
        if (memcmp(n, "cookie", 6) == 0) s->ncookies++;
        break;
    case 14:
        if (memcmp(n, "content-length", 14) == 0) { /* nghttp2 checked it is a number */
            uint64_t x = 0;
            for (size_t i = 0; i < vl && v[i] >= '0' && v[i] <= '9'; i++) x = x * 10 + (uint64_t)(v[i] - '0');
            s->content_length = x;
            s->has_cl = true;
        }
        break;
    case 23:
        /* Asserted by the proxy alone, from a verified certificate. */
        if (memcmp(n, "x-forwarded-client-cert", 23) == 0) return 0;
        break;
    default: break;
    }
    add_field(s, n, nl, v, vl);
    return 0;
}

/* An invalid regular header field (RFC 9113 8.2.1): the request is
 * malformed, a stream error. Without this callback nghttp2 would drop
 * such a field silently. */
static int ng_on_invalid_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                                size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    sk_h2_conn *h = ud;
    char pb[64];
    sk_debug("client %s: HTTP/2 stream %d: invalid header field '%.*s'", peer(h, pb), frame->hd.stream_id,
             (int)(nl > 64 ? 64 : nl), (const char *)name);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM PROTOCOL_ERROR */
}

/* Joins several cookie fields into one (RFC 9113 8.2.3: an HTTP/1 hop
 * needs a single field, "; "-separated). 0 or -1 (OOM). */
static int join_cookies(sk_msg *r)
{
    sk_head *hd = &r->head;
    size_t len = 0;
    for (size_t i = 0; i < hd->nhdrs; i++)
        if (sk_streq_nocase(hd->views[i].name, hd->views[i].name_len, "cookie"))
            len += hd->views[i].value_len + 2;
    char *v = sk_arena_alloc(&r->arena, len + 1), *p = v;
    if (!v) return -1;
    for (size_t i = 0; i < hd->nhdrs; i++) {
        const sk_header *x = &hd->views[i];
        if (!sk_streq_nocase(x->name, x->name_len, "cookie")) continue;
        if (p > v) p = SK_PUT_LIT(p, "; ");
        p = sk_put(p, x->value, x->value_len);
    }
    *p = 0;
    return sk_head_edit(hd, &r->arena, "cookie", v, true);
}

/* The whole head of a request is in: check it like HTTP/1 does, fill the
 * request model, hand it to the request layer. */
static void head_complete(h2_stream *s)
{
    sk_h2_conn *h = s->h;
    const sk_listener *l = h->c->listener;
    sk_msg *r = s->req;
    if (s->limit_status == 414) {
        stream_local_reply(s, 414, "uri_too_long", NULL, 0, NULL);
        return;
    }
    if (s->limit_status == 431) {
        count(h, SK_H2_HEADERS_TOO_LARGE);
        {
            stream_local_reply(s, 431, "headers_too_large", NULL, 0, NULL);
            return;
        }
    }
    if (s->limit_status || sk_head_finish(&r->head) < 0) {
        stream_local_reply(s, 500, "internal_error", NULL, 0, NULL);
        return;
    }
    r->version = 20;
    r->keep_alive = true;
    if (!r->method) {
        stream_local_reply(s, 400, "bad_request", NULL, 0, NULL);
        return;
    }
    if (r->method_id == SK_METHOD_CONNECT) {
        stream_local_reply(s, 501, "bad_request", "CONNECT is not supported\n", 25, NULL);
        return;
    }
    int rc =
        sk_msg_origin_target(r, r->head.raw.data + r->head.url, r->head.url_len, sk_listener_path_flags(l));
    if (rc == -2) {
        stream_local_reply(s, 500, "internal_error", NULL, 0, NULL);
        return;
    }
    if (rc < 0) {
        char pb[64];
        sk_debug("bad request from %s: %s", peer(h, pb), rc == -1 ? "malformed :path" : sk_path_strerror(rc));
        {
            stream_local_reply(s, 400, "bad_request", NULL, 0, NULL);
            return;
        }
    }
    /* Authority: :authority (now the first field, "host"), else exactly
     * one host header, else none (allowed in HTTP/2: the proxy names the
     * cluster upstream). Validated as HTTP/1's Host. */
    const sk_header *host = NULL;
    size_t nhost = 0;
    const sk_header *expect = NULL;
    for (size_t i = 0; i < r->head.nhdrs; i++) {
        const sk_header *x = &r->head.views[i];
        if (x->name_len == 4 && memcmp(x->name, "host", 4) == 0 && nhost++ == 0) host = x;
        if (x->name_len == 6 && memcmp(x->name, "expect", 6) == 0 && !expect) expect = x;
    }
    if (nhost > 1 || (host && sk_authority_parse(host->value, host->value_len, &r->host, &r->host_len) < 0)) {
        char pb[64];
        sk_debug("bad request from %s: invalid :authority or host", peer(h, pb));
        {
            stream_local_reply(s, 400, "bad_request", NULL, 0, NULL);
            return;
        }
    }
    if (host) {
        r->authority = host->value;
        r->authority_len = host->value_len;
    } else {
        r->host = r->authority = "";
    }
    if (s->ncookies > 1 && join_cookies(r) < 0) {
        stream_local_reply(s, 500, "internal_error", NULL, 0, NULL);
        return;
    }
    /* Framing: END_STREAM on HEADERS means no body; else content-length,
     * or a body of unknown length (chunked towards an HTTP/1 upstream). */
    if (s->req_end) {
        r->req_framing = SK_BODY_NONE;
        r->body_done = true;
    } else if (s->has_cl) {
        r->req_framing = SK_BODY_LENGTH;
        r->req_content_length = s->content_length;
    } else {
        r->req_framing = SK_BODY_CHUNKED;
    }
    if (l->max_body_bytes && s->has_cl && s->content_length > l->max_body_bytes) {
        stream_local_reply(s, 413, "body_too_large", NULL, 0, NULL);
        return;
    }
    if (expect) {
        if (!sk_streq_nocase(expect->value, expect->value_len, "100-continue")) {
            stream_local_reply(s, 417, "bad_request", "unsupported expectation\n", 24, NULL);
            return;
        }
        r->expect_continue = !s->req_end;
    }
    s->head_done = true;
    r->state = SK_REQ_UPSTREAM;
    int hr = h->c->cbs->head(s->rq);
    if (!s->rq) return;
    if (hr == 1) s->filter_wait = true; /* body waits in s->in until chain_resumed */
    /* A request without a body ends with its head; the request layer hears
     * of the end as for any body (HTTP/1's on_message_complete), or the
     * upstream connection would not be reused. */
    if (s->req_end && hr == 0 && !s->discard && !s->end_delivered) {
        s->end_delivered = true;
        h->c->cbs->body_end(s->rq);
        if (!s->rq) return;
    }
    /* The upstream request goes out after this read (with the body pieces
     * of the same read), as HTTP/1 flushes after each parse. */
    if (sk_list_empty(&s->tlink)) sk_list_insert(&h->touched, &s->tlink);
}

/* END_STREAM from the client. */
static void request_end(h2_stream *s)
{
    s->req_end = true;
    if (!s->rq) return;
    s->req->body_done = true;
    if (!s->head_done || s->filter_wait || s->discard || s->end_delivered) return;
    s->end_delivered = true;
    s->h->c->cbs->body_end(s->rq);
    /* the end goes upstream after this read, with what came before it */
    if (s->rq && sk_list_empty(&s->tlink)) sk_list_insert(&s->h->touched, &s->tlink);
}

/* ---- nghttp2 receive callbacks ---- */

static int ng_on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud)
{
    sk_h2_conn *h = ud;
    if (h->failing) return 0;
    if (hd->type == NGHTTP2_HEADERS || hd->type == NGHTTP2_CONTINUATION) {
        /* A header block is bounded by its size and its number of frames,
         * whatever HPACK makes of it: a CONTINUATION flood ends here. */
        if (hd->type == NGHTTP2_HEADERS) {
            h->hb_stream = hd->stream_id;
            h->hb_bytes = 0;
            h->hb_frames = 0;
        }
        h->hb_bytes += hd->length;
        h->hb_frames++;
        if (h->hb_bytes > h->hb_limit || h->hb_frames > h->hb_max_frames) {
            h2_fail(h, SK_H2_CONTINUATION_FLOOD, NGHTTP2_ENHANCE_YOUR_CALM);
            return 0;
        }
        if (hd->flags & NGHTTP2_FLAG_END_HEADERS) h->hb_stream = 0;
    }
    h2_stream *s = stream_of(h, hd->stream_id);
    if (s && s->rq) s->req->bytes_received += hd->length + 9;
    return 0;
}

static int ng_on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    sk_h2_conn *h = ud;
    sk_conn *c = h->c;
    if (h->failing || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_stream *s = calloc(1, sizeof(*s));
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM: the client may retry */
    s->h = h;
    s->id = frame->hd.stream_id;
    sk_list_init(&s->tlink);
    sk_list_init(&s->dlink);
    char addr[64];
    const sk_conn_info ci = {
        .wctx = c->worker,
        .config = c->config,
        .listener = c->listener,
        .client_ip = c->client_ip,
        .client_addr = peer(h, addr),
        .peer_identity = c->tr.peer_identity,
        .secure = c->tr.ops == &sk_tls_ops,
    };
    s->rq = c->cbs->begin(s, &sk_h2_server_ops, &ci, &s->req);
    if (!s->rq) {
        free(s);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    s->req->start_ns = sk_now_ns();
    s->req->bytes_received = frame->hd.length + 9;
    sk_list_insert(&h->streams, &s->link);
    h->nstreams++;
    h->any_request = true;
    SK_INC(metrics(h)->h2_streams);
    nghttp2_session_set_stream_user_data(ng, s->id, s);
    return 0;
}

static int ng_on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                            void *ud)
{
    sk_h2_conn *h = ud;
    h2_stream *s = stream_of(h, id);
    /* The connection window follows reading: streams' windows bound what
     * a connection can hold. */
    nghttp2_session_consume_connection(ng, len);
    if (h->failing || !s || !s->rq || s->discard || !s->head_done) {
        if (s && !s->closed) nghttp2_session_consume_stream(ng, id, len);
        return 0;
    }
    sk_msg *r = s->req;
    const sk_listener *l = h->c->listener;
    r->body_received += len;
    if (l->max_body_bytes && r->body_received > l->max_body_bytes) {
        consume_stream(s, len);
        stream_local_reply(s, 413, "body_too_large", NULL, 0, NULL);
        return 0;
    }
    if (s->filter_wait) { /* held, and the window with it, until the filter lets go */
        if (sk_buf_append(&s->in, data, len) < 0) {
            consume_stream(s, len);
            stream_local_reply(s, 500, "internal_error", NULL, 0, NULL);
            return 0;
        }
        s->unconsumed += len;
        return 0;
    }
    if (h->c->cbs->body(s->rq, (const char *)data, len) < 0 || !s->rq) {
        consume_stream(s, len);
        return 0;
    }
    if (s->paused)
        s->unconsumed += len;
    else
        consume_stream(s, len);
    if (sk_list_empty(&s->tlink)) sk_list_insert(&h->touched, &s->tlink);
    return 0;
}

/* The answer to our graceful GOAWAY's PING came: the last stream id the
 * client can have sent before it saw the first GOAWAY is known. */
static void final_goaway(sk_h2_conn *h)
{
    if (h->goaway_sent || h->ng_broken) return;
    h->goaway_sent = true;
    ev_timer_stop(h->c->worker->loop, &h->goaway_timer);
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
}

static int ng_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    sk_h2_conn *h = ud;
    if (h->failing) return 0;
    uint64_t now = now_ms(h);
    h2_stream *s = stream_of(h, frame->hd.stream_id);
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (!s) break;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            s->req_end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
            if (s->rq) head_complete(s);
            if (s->req_end && s->rq) s->req->body_done = true;
        } else if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) { /* request trailers */
            if (s->limit_status == 431 && s->rq && !s->req->response_started) {
                count(h, SK_H2_HEADERS_TOO_LARGE);
                stream_local_reply(s, 431, "headers_too_large", NULL, 0, NULL);
            }
            request_end(s);
        }
        break;
    case NGHTTP2_DATA:
        if (frame->hd.length == frame->data.padlen && !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
            !bucket_take(&h->empty, EMPTY_BURST, EMPTY_RATE, now)) {
            h2_fail(h, SK_H2_EMPTY_FRAMES, NGHTTP2_ENHANCE_YOUR_CALM);
            break;
        }
        if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) request_end(s);
        break;
    case NGHTTP2_RST_STREAM:
        /* Reset by the client before its response ended: the work the
         * request started is lost. Many of them fast is the rapid reset
         * attack (CVE-2023-44487). */
        if (s && !s->eos_sent && !bucket_take(&h->resets, h->reset_burst, h->reset_rate, now))
            h2_fail(h, SK_H2_RAPID_RESET, NGHTTP2_ENHANCE_YOUR_CALM);
        break;
    case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
            if (memcmp(frame->ping.opaque_data, DRAIN_PING, 8) == 0) final_goaway(h);
        } else if (!bucket_take(&h->pings, PING_BURST, PING_RATE, now)) {
            h2_fail(h, SK_H2_PING_FLOOD, NGHTTP2_ENHANCE_YOUR_CALM);
        }
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) &&
            !bucket_take(&h->settings, SETTINGS_BURST, SETTINGS_RATE, now))
            h2_fail(h, SK_H2_SETTINGS_FLOOD, NGHTTP2_ENHANCE_YOUR_CALM);
        break;
    default: break;
    }
    return 0;
}

static int ng_on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error, void *ud)
{
    sk_h2_conn *h = ud;
    h2_stream *s = stream_of(h, frame->hd.stream_id);
    char pb[64];
    sk_debug("client %s: HTTP/2 invalid frame (type %u, stream %d): %s", peer(h, pb),
             (unsigned)frame->hd.type, frame->hd.stream_id, nghttp2_strerror(lib_error));
    if (s && s->rq && !s->req->reason) s->req->reason = "bad_request";
    return 0;
}

static int ng_on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    sk_h2_conn *h = ud;
    h2_stream *s = stream_of(h, id);
    if (!s) return 0;
    s->closed = true;
    if (s->rq) {
        if (s->finish_due || (s->resp_done && s->eos_sent)) {
            finish(s, true);
        } else if (!(s->resp_eof && s->eos_sent)) {
            /* Reset (by the client, or by nghttp2 for a protocol error)
             * before the response ended. A client that goes before its
             * response started is 499 client_closed, as on HTTP/1. */
            sk_msg *r = s->req;
            if (!s->rst_ours && !r->response_started && !r->reason) r->client_closed = true;
            finish(s, false);
        }
        /* else: the whole response went out; response_done finishes it */
    }
    maybe_release(s);
    return 0;
}

static int ng_on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    sk_h2_conn *h = ud;
    h2_stream *s = stream_of(h, frame->hd.stream_id);
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (s && s->rq) s->req->bytes_sent += frame->hd.length + 9;
        break;
    case NGHTTP2_DATA:
        if (s && s->rq) s->req->bytes_sent += 9;
        break;
    case NGHTTP2_RST_STREAM:
        if (s && s->rst_ours) break;
        if (frame->rst_stream.error_code == NGHTTP2_REFUSED_STREAM) {
            count(h, SK_H2_REFUSED_STREAM);
        } else if (frame->rst_stream.error_code != NGHTTP2_NO_ERROR &&
                   frame->rst_stream.error_code != NGHTTP2_CANCEL) {
            /* nghttp2 found the request malformed (RFC 9113 8.1.1). A
             * client making us reset streams fast is a rapid reset too. */
            count(h, SK_H2_STREAM_ERROR);
            if (s && s->rq && !s->req->reason) s->req->reason = "bad_request";
            if (!h->failing && !bucket_take(&h->resets, h->reset_burst, h->reset_rate, now_ms(h)))
                h2_fail(h, SK_H2_RAPID_RESET, NGHTTP2_ENHANCE_YOUR_CALM);
        }
        break;
    case NGHTTP2_GOAWAY:
        if (h->failing || frame->goaway.error_code == NGHTTP2_NO_ERROR) break;
        /* A connection error nghttp2 found: bad frames, flow control,
         * HPACK. The connection ends once it is written. */
        count(h, frame->goaway.error_code == NGHTTP2_COMPRESSION_ERROR ? SK_H2_COMPRESSION_ERROR
                                                                       : SK_H2_PROTOCOL_ERROR);
        failing_mode(h);
        break;
    default: break;
    }
    if (s && (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        s->eos_sent = true;
        /* Answered before the request body ended: the client may stop
         * sending it (RFC 9113 8.1). */
        if (!s->req_end) reset(s, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int ng_on_error(nghttp2_session *ng, int lib_error, const char *msg, size_t len, void *ud)
{
    sk_h2_conn *h = ud;
    char pb[64];
    sk_debug("client %s: HTTP/2: %.*s", peer(h, pb), (int)len, msg);
    return 0;
}

/* ---- nghttp2 send callbacks ---- */

/* Frames are copied into the connection's write queue whole (or refused
 * whole while it is full), so the queue always ends on a frame boundary. */
static ssize_t ng_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *ud)
{
    sk_h2_conn *h = ud;
    sk_out *o = &h->c->out;
    if (sk_out_pending(o) >= SK_HIGH_WATER) {
        h->blocked = true;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (sk_out_copy(o, data, len) < 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

/* A DATA frame: its 9-byte header copied, its payload queued by reference
 * (from the stream's own queue, or from the request layer's memory, which
 * stays valid until this flush ends). */
static int ng_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src, void *ud)
{
    sk_h2_conn *h = ud;
    h2_stream *s = src->ptr;
    sk_out *o = &h->c->out;
    if (sk_out_pending(o) >= SK_HIGH_WATER) {
        h->blocked = true;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (sk_out_copy(o, framehd, 9) < 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    size_t left = length;
    size_t own = sk_buf_pending(&s->out);
    if (own) {
        size_t k = own < left ? own : left;
        if (sk_out_ref(o, s->out.data + s->out.off, k) < 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
        sk_buf_consume(&s->out, k); /* the memory stays: nothing appends to s->out before the flush ends */
        left -= k;
    }
    int i = 0;
    while (left && i < s->nrefs) {
        size_t k = s->refn[i] < left ? s->refn[i] : left;
        if (sk_out_ref(o, s->refp[i], k) < 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
        left -= k;
        s->ref_bytes -= k;
        s->refp[i] += k;
        s->refn[i] -= k;
        if (s->refn[i] == 0) i++;
    }
    if (i) {
        memmove(s->refp, s->refp + i, sizeof(s->refp[0]) * (size_t)(s->nrefs - i));
        memmove(s->refn, s->refn + i, sizeof(s->refn[0]) * (size_t)(s->nrefs - i));
        s->nrefs -= i;
    }
    return left ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* The response body of a stream, as nghttp2 asks for it. */
static ssize_t data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    h2_stream *s = src->ptr;
    size_t avail = out_bytes(s);
    if (avail == 0 && !s->resp_eof) {
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < len ? avail : len;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == avail && s->resp_eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->trailers) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(ng, id, s->trailers, s->ntrailers) != 0)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)n;
}

/* DATA frames as large as the peer allows (nghttp2 would stop at 16 KiB). */
static ssize_t ng_read_length(nghttp2_session *ng, uint8_t type, int32_t id, int32_t conn_window,
                              int32_t stream_window, uint32_t max_frame, void *ud)
{
    int32_t n = conn_window < stream_window ? conn_window : stream_window;
    if ((uint32_t)n > max_frame) n = (int32_t)max_frame;
    return n > 0 ? n : 1;
}

/* ---- the connection ---- */

/* Arms the connection timer for what the connection waits for now: a
 * header block (header_timeout, from its first frame), no stream at all
 * (header_timeout before the first request, idle_timeout after), or a
 * request body (idle_timeout, from the last read). */
static void arm_timer(sk_h2_conn *h, bool read)
{
    sk_conn *c = h->c;
    const sk_listener *l = c->listener;
    if (c->dead || h->timer_kind == T_FAIL) return;
    int kind = T_NONE;
    uint64_t ms = 0;
    if (h->hb_stream) {
        kind = T_HEADER;
        ms = l->header_timeout_ms;
    } else if (h->nstreams == 0) {
        kind = T_IDLE;
        ms = h->any_request ? l->idle_timeout_ms : l->header_timeout_ms;
    } else {
        bool requests = false;
        for (sk_link *p = h->streams.next; p != &h->streams; p = p->next) {
            h2_stream *s = SK_CONTAINER(p, h2_stream, link);
            if (s->rq) requests = true;
            if (s->rq && s->head_done && !s->req_end && !s->paused && !s->filter_wait && !s->discard) {
                kind = T_BODY;
                ms = l->idle_timeout_ms;
                break;
            }
        }
        if (!requests) { /* what is left are answers the client does not take */
            kind = T_OUT;
            ms = l->idle_timeout_ms;
        }
    }
    if (kind == h->timer_kind && !((kind == T_BODY || kind == T_OUT) && read)) return;
    h->timer_kind = kind;
    if (kind == T_NONE) {
        ev_timer_stop(c->worker->loop, &c->timer);
        return;
    }
    c->timer.repeat = (double)ms / 1000.0;
    ev_timer_again(c->worker->loop, &c->timer);
}

/* Writes raw GOAWAY bytes when nghttp2 can no longer be driven. The write
 * queue ends on a frame boundary (ng_send), so they are a frame of their own. */
static void raw_goaway(sk_h2_conn *h, uint32_t code)
{
    uint32_t last = (uint32_t)nghttp2_session_get_last_proc_stream_id(h->ng);
    unsigned char f[17] = {0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0};
    f[9] = (unsigned char)(last >> 24 & 0x7f);
    f[10] = (unsigned char)(last >> 16);
    f[11] = (unsigned char)(last >> 8);
    f[12] = (unsigned char)last;
    f[13] = (unsigned char)(code >> 24);
    f[14] = (unsigned char)(code >> 16);
    f[15] = (unsigned char)(code >> 8);
    f[16] = (unsigned char)code;
    sk_out_copy(&h->c->out, f, sizeof(f));
}

/* The connection ends: nothing more is read, and it closes once what is
 * queued (a GOAWAY) is written, or after FAIL_LINGER_MS. */
static void failing_mode(sk_h2_conn *h)
{
    sk_conn *c = h->c;
    h->failing = true;
    sk_transport_want_read(&c->tr, false);
    h->timer_kind = T_FAIL;
    c->timer.repeat = FAIL_LINGER_MS / 1000.0;
    ev_timer_again(c->worker->loop, &c->timer);
    h->flush_due = true;
}

/* A connection error: counted (reason, or -1 when counted elsewhere),
 * GOAWAY with `code`, nothing more read; the connection closes once the
 * GOAWAY is written, or after FAIL_LINGER_MS. */
static void h2_fail(sk_h2_conn *h, int reason, uint32_t code)
{
    sk_conn *c = h->c;
    if (h->failing || c->dead) return;
    h->failing = true;
    if (reason >= 0) {
        count(h, reason);
        char pb[64];
        sk_info("client %s: HTTP/2 %s: GOAWAY %s, closing", peer(h, pb), sk_h2_error_names[reason],
                nghttp2_http2_strerror(code));
    }
    if (h->ng_broken)
        raw_goaway(h, code);
    else
        nghttp2_session_terminate_session(h->ng, code);
    failing_mode(h);
}

/* Streams told congested get drained once their queue is low; all of them
 * are congested while the connection's write queue is high. */
static void congestion(sk_h2_conn *h)
{
    sk_conn *c = h->c;
    bool high = sk_out_pending(&c->out) > SK_HIGH_WATER;
    if (!high && h->ncongested == 0) return;
    size_t n = snapshot(h);
    for (size_t i = 0; i < n && !c->dead; i++) {
        h2_stream *s = h->snap[i];
        if (s->released || !s->rq) continue;
        if (high && !s->congested) {
            s->congested = true;
            h->ncongested++;
            c->cbs->congested(s->rq);
        } else if (!high && s->congested && stream_pending(s) < SK_LOW_WATER) {
            s->congested = false;
            h->ncongested--;
            c->cbs->drained(s->rq);
        }
    }
}

/* Work due at a safe point: requests finished inside a receive callback,
 * bodies held for a filter that let go. */
static void run_todo(sk_h2_conn *h)
{
    sk_conn *c = h->c;
    while (!sk_list_empty(&h->todo) && !c->dead) {
        h2_stream *s = SK_CONTAINER(h->todo.next, h2_stream, dlink);
        sk_list_remove(&s->dlink);
        if (s->finish_due) {
            finish(s, true);
            continue;
        }
        if (!s->rq || s->filter_wait) continue;
        /* The filter let go: the body that arrived meanwhile goes on. */
        size_t n = sk_buf_pending(&s->in);
        if (n && !s->discard) {
            if (c->cbs->body(s->rq, s->in.data + s->in.off, n) < 0 || !s->rq) {
                sk_buf_reset(&s->in);
                continue;
            }
        }
        if (s->unconsumed && !s->paused) {
            consume_stream(s, s->unconsumed);
            s->unconsumed = 0;
        }
        if (s->req_end && !s->discard && !s->end_delivered && s->rq) {
            s->end_delivered = true;
            c->cbs->body_end(s->rq);
        }
        if (s->rq) c->cbs->input_done(s->rq);
        sk_buf_reset(&s->in);
    }
}

/* Closes the connection once nghttp2 has nothing more to say or hear and
 * everything is written (a GOAWAY exchanged, or a connection error). */
static void maybe_close(sk_h2_conn *h)
{
    sk_conn *c = h->c;
    if (c->dead || sk_out_pending(&c->out) > 0) return;
    if (h->ng_broken) {
        sk_conn_close(c);
        return;
    }
    /* nghttp2 stops wanting to read after any GOAWAY once no stream is
     * open; between the two GOAWAYs of a graceful shutdown the client may
     * still open streams: wait for the second. */
    if (h->notice_sent && !h->goaway_sent && !h->failing) return;
    if (nghttp2_session_want_read(h->ng) || nghttp2_session_want_write(h->ng)) return;
    /* A response written whole waits for the request layer's
     * response_done (its upstream connection goes back to the pool then). */
    for (sk_link *l = h->streams.next; l != &h->streams; l = l->next)
        if (SK_CONTAINER(l, h2_stream, link)->rq && !h->failing) return;
    sk_conn_close(c);
}

/* Has nghttp2 write what it has (the write queue permitting), writes the
 * queue, copies what is still referenced, tells the request layer about
 * congestion. Inside nghttp2 it only remembers to do so. */
static void h2_flush(sk_h2_conn *h)
{
    sk_conn *c = h->c;
    if (c->dead) return;
    if (h->in_recv || h->in_send) {
        /* After this returns, the request layer's memory may go: what
         * references it is copied now (the write queue first, as it may
         * reference the streams' own queues). */
        if (h->in_send) sk_out_detach(&c->out);
        detach_all(h);
        h->flush_due = true;
        return;
    }
    for (int round = 0; round < 16; round++) {
        h->flush_due = false;
        h->blocked = false;
        if (!h->ng_broken) {
            h->in_send = true;
            int rv = nghttp2_session_send(h->ng);
            h->in_send = false;
            if (rv < 0) {
                char pb[64];
                sk_debug("client %s: HTTP/2 send: %s", peer(h, pb), nghttp2_strerror(rv));
                h->ng_broken = true;
                sk_out_detach(&c->out);
                detach_all(h);
                sk_conn_close(c);
                return;
            }
        }
        size_t before = sk_out_pending(&c->out);
        if (sk_out_flush(&c->out, &c->tr) < 0) {
            char pb[64];
            sk_debug("write to client %s: %s", peer(h, pb), strerror(errno));
            detach_all(h);
            sk_conn_close(c);
            return;
        }
        size_t pending = sk_out_pending(&c->out);
        if (before > pending) SK_ADD(metrics(h)->bytes_sent, before - pending);
        detach_all(h);
        if (c->dead) return;
        if (!h->flush_due && !(h->blocked && pending == 0)) break;
    }
    sk_transport_want_write(&c->tr, sk_out_pending(&c->out) > 0 || h->blocked || h->flush_due);
    congestion(h);
    if (c->dead) return;
    maybe_close(h);
}

/* After input was handed to nghttp2 (and outside of it): work due, the
 * input_done of the streams that got body, the writes, the timer. */
static void after_input(sk_h2_conn *h)
{
    sk_conn *c = h->c;
    run_todo(h);
    while (!sk_list_empty(&h->touched) && !c->dead) {
        h2_stream *s = SK_CONTAINER(h->touched.next, h2_stream, tlink);
        sk_list_remove(&s->tlink);
        if (s->rq) c->cbs->input_done(s->rq);
    }
    if (c->dead) return;
    h2_flush(h);
    if (c->dead) return;
    run_todo(h); /* requests finished while writing */
    if (!c->dead) arm_timer(h, true);
}

/* Feeds n bytes of input to nghttp2. */
static void h2_recv(sk_h2_conn *h, const char *p, size_t n)
{
    if (h->failing || h->ng_broken || n == 0) return;
    h->in_recv = true;
    ssize_t rv = nghttp2_session_mem_recv(h->ng, (const uint8_t *)p, n);
    h->in_recv = false;
    if (rv >= 0) return;
    /* A fatal error: nghttp2 is not driven any more. */
    char pb[64];
    sk_debug("client %s: HTTP/2: %s", peer(h, pb), nghttp2_strerror((int)rv));
    h->ng_broken = true;
    int reason = rv == NGHTTP2_ERR_FLOODED                  ? SK_H2_OUTBOUND_FLOOD
                 : rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ? SK_H2_CONTINUATION_FLOOD
                                                            : SK_H2_PROTOCOL_ERROR;
    uint32_t code = reason == SK_H2_PROTOCOL_ERROR ? NGHTTP2_PROTOCOL_ERROR : NGHTTP2_ENHANCE_YOUR_CALM;
    if (rv == NGHTTP2_ERR_NOMEM || rv == NGHTTP2_ERR_CALLBACK_FAILURE) {
        reason = -1;
        code = NGHTTP2_INTERNAL_ERROR;
    }
    bool was_failing = h->failing;
    h2_fail(h, was_failing ? -1 : reason, code);
}

static void h2_on_readable(sk_transport *t)
{
    sk_conn *c = t->data;
    sk_h2_conn *h = c->h2;
    if (c->dead) return;
    h->feed_due = false;
    run_todo(h);
    if (c->dead) return;
    if (!h->failing && t->want_read) {
        if (!c->rbuf && !(c->rbuf = sk_wctx_buf_get(c->worker))) {
            sk_conn_close(c);
            return;
        }
        ssize_t n = sk_transport_read(&c->tr, c->rbuf, SK_READ_BUF);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            /* The client went (a half-close too: it cannot send WINDOW_UPDATE
             * or acknowledge anything any more). Requests whose response has
             * not started are 499 client_closed, as on HTTP/1. */
            for (sk_link *l = h->streams.next; l != &h->streams; l = l->next) {
                h2_stream *s = SK_CONTAINER(l, h2_stream, link);
                if (s->rq && !s->req->response_started) s->req->client_closed = true;
            }
            sk_conn_close(c);
            return;
        }
        if (n > 0) {
            SK_ADD(metrics(h)->bytes_received, (uint64_t)n);
            h2_recv(h, c->rbuf, (size_t)n);
        }
        /* nghttp2 has taken every byte (what it needs of a partial frame
         * it keeps): the buffer goes back to the worker's pool. */
        sk_wctx_buf_put(c->worker, c->rbuf);
        c->rbuf = NULL;
        if (c->dead) return;
    }
    after_input(h);
}

static void h2_on_writable(sk_transport *t)
{
    sk_conn *c = t->data;
    sk_h2_conn *h = c->h2;
    if (c->dead) return;
    h2_flush(h);
    if (c->dead) return;
    run_todo(h);
}

static const sk_transport_cbs h2_transport_cbs = {.on_readable = h2_on_readable,
                                                  .on_writable = h2_on_writable};

/* The connection timer (c->timer, taken over from HTTP/1). */
static void h2_on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_conn *c = t->data;
    sk_h2_conn *h = c->h2;
    if (c->dead) return;
    int kind = h->timer_kind;
    h->timer_kind = T_NONE;
    ev_timer_stop(loop, t);
    if (kind == T_FAIL) {
        sk_conn_close(c);
        return;
    }
    if (kind == T_HEADER || kind == T_IDLE || kind == T_OUT) {
        /* A header block that does not end, no request for too long, or
         * answers the client does not read: a GOAWAY and the close. */
        char pb[64];
        sk_debug("client %s: HTTP/2 %s, closing", peer(h, pb),
                 kind == T_HEADER ? "header timeout"
                 : kind == T_IDLE ? "idle"
                                  : "client not reading");
        h2_stream *s = kind == T_HEADER ? stream_of(h, h->hb_stream) : NULL;
        if (s && s->rq && !s->req->reason) s->req->reason = "header_timeout";
        h->failing = true;
        if (!h->ng_broken) nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR);
        h->timer_kind = T_FAIL;
        t->repeat = FAIL_LINGER_MS / 1000.0;
        ev_timer_again(loop, t);
        sk_transport_want_read(&c->tr, false);
        h2_flush(h);
        return;
    }
    if (kind == T_BODY) {
        /* Request bodies stalled longer than idle_timeout. */
        size_t n = snapshot(h);
        for (size_t i = 0; i < n && !c->dead; i++) {
            h2_stream *s = h->snap[i];
            if (s->released || !s->rq || !s->head_done || s->req_end || s->paused || s->filter_wait ||
                s->discard)
                continue;
            stream_local_reply(s, 408, "idle_timeout", "request body timeout\n", 21, NULL);
        }
        if (c->dead) return;
        h2_flush(h);
        if (!c->dead) arm_timer(h, false);
    }
}

static void on_goaway_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_h2_conn *h = t->data;
    if (h->c->dead) return;
    final_goaway(h); /* the PING answer did not come in time */
    h2_flush(h);
}

/* The settings this listener offers (see sk_h2_start). */
static int submit_settings(sk_h2_conn *h)
{
    const sk_listener *l = h->c->listener;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, l->h2_max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)l->h2_stream_window},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, (uint32_t)l->h2_frame_size},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
         (uint32_t)(l->max_header_bytes + 32 * (uint64_t)l->max_headers)},
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, SK_ARRAY_LEN(iv)) != 0) return -1;
    if (l->h2_conn_window > 65535 &&
        nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)l->h2_conn_window) != 0)
        return -1;
    return 0;
}

/* The callbacks every session uses (sessions copy them): made once for
 * the process, on the first connection of any worker. */
static nghttp2_session_callbacks *ng_cbs;
static pthread_once_t cbs_once = PTHREAD_ONCE_INIT;

static void make_callbacks(void)
{
    if (nghttp2_session_callbacks_new(&ng_cbs) != 0) {
        ng_cbs = NULL;
        return;
    }
    nghttp2_session_callbacks_set_send_callback(ng_cbs, ng_send);
    nghttp2_session_callbacks_set_send_data_callback(ng_cbs, ng_send_data);
    nghttp2_session_callbacks_set_on_begin_frame_callback(ng_cbs, ng_on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(ng_cbs, ng_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(ng_cbs, ng_on_header);
    nghttp2_session_callbacks_set_on_invalid_header_callback(ng_cbs, ng_on_invalid_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(ng_cbs, ng_on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(ng_cbs, ng_on_frame_recv);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(ng_cbs, ng_on_invalid_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(ng_cbs, ng_on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(ng_cbs, ng_on_frame_send);
    nghttp2_session_callbacks_set_error_callback2(ng_cbs, ng_on_error);
    nghttp2_session_callbacks_set_data_source_read_length_callback(ng_cbs, ng_read_length);
}

static nghttp2_session_callbacks *session_callbacks(void)
{
    pthread_once(&cbs_once, make_callbacks);
    return ng_cbs;
}

/* Makes c an HTTP/2 connection (see h2_server.h). */
int sk_h2_start(sk_conn *c)
{
    const sk_listener *l = c->listener;
    sk_h2_conn *h = calloc(1, sizeof(*h));
    nghttp2_session_callbacks *cbs = session_callbacks();
    nghttp2_option *opt = NULL;
    if (!h || !cbs || nghttp2_option_new(&opt) != 0) goto oom;
    h->c = c;
    sk_list_init(&h->streams);
    sk_list_init(&h->touched);
    sk_list_init(&h->todo);
    /* A header block may be a little larger than the header list it
     * decodes to (Huffman code can grow rare bytes), never much. */
    h->hb_limit = l->max_header_bytes + 32 * (size_t)l->max_headers + 4096;
    h->hb_max_frames = 16 + (unsigned)(l->max_header_bytes / 4096);
    h->reset_burst = 2ull * l->h2_max_streams > RESET_MIN_BURST ? 2ull * l->h2_max_streams : RESET_MIN_BURST;
    h->reset_rate = l->h2_max_streams > RESET_MIN_RATE ? l->h2_max_streams : RESET_MIN_RATE;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    /* nghttp2's own bounds stay as a backstop above ours, so that ours
     * answer first (and with ENHANCE_YOUR_CALM). */
    nghttp2_option_set_max_continuations(opt, h->hb_max_frames + 8);
    nghttp2_option_set_stream_reset_rate_limit(opt, h->reset_burst * 4, h->reset_rate * 4);
    int rv = nghttp2_session_server_new2(&h->ng, cbs, h, opt);
    nghttp2_option_del(opt);
    if (rv != 0) goto oom;
    uint64_t now = now_ms(h);
    bucket_init(&h->pings, PING_BURST, now);
    bucket_init(&h->settings, SETTINGS_BURST, now);
    bucket_init(&h->empty, EMPTY_BURST, now);
    bucket_init(&h->resets, h->reset_burst, now);
    ev_init(&h->goaway_timer, on_goaway_timer);
    h->goaway_timer.data = h;
    ev_prepare_init(&h->prep, on_prepare);
    h->prep.data = h;
    if (submit_settings(h) < 0) goto oom;
    c->h2 = h;
    c->tr.cbs = &h2_transport_cbs;
    ev_set_cb(&c->timer, h2_on_timer);
    h->timer_kind = T_NONE;
    ev_timer_stop(c->worker->loop, &c->timer);
    SK_INC(metrics(h)->h2_active);
    SK_INC(metrics(h)->h2_total);
    sk_transport_want_read(&c->tr, true);
    /* What HTTP/1 read already (the preface and what followed it). */
    if (c->rbuf) {
        h2_recv(h, c->rbuf + c->rpos, c->rlen - c->rpos);
        sk_wctx_buf_put(c->worker, c->rbuf);
        c->rbuf = NULL;
        c->rpos = c->rlen = 0;
    }
    if (c->worker->draining) sk_h2_drain(c);
    if (!c->dead) after_input(h);
    return 0;
oom:
    sk_error("out of memory starting an HTTP/2 connection");
    if (h && h->ng) nghttp2_session_del(h->ng);
    free(h);
    sk_conn_close(c);
    return -1;
}

/* Cuts every request and stops the session (see h2_server.h). */
void sk_h2_close(sk_conn *c, const char *reason)
{
    sk_h2_conn *h = c->h2;
    if (!h) return;
    ev_timer_stop(c->worker->loop, &h->goaway_timer);
    ev_prepare_stop(c->worker->loop, &h->prep);
    /* c is dead: each stream leaves the list as it is finished */
    while (!sk_list_empty(&h->streams)) {
        h2_stream *s = SK_CONTAINER(h->streams.next, h2_stream, link);
        if (s->rq && reason && !s->req->reason) s->req->reason = reason;
        if (s->rq) finish(s, s->finish_due);
        maybe_release(s);
    }
    if (!h->closed) {
        h->closed = true;
        SK_DEC(metrics(h)->h2_active);
    }
    h->ng_broken = true; /* nothing drives it any more; freed with the connection */
}

/* Frees the session (from sk_conn_free). */
void sk_h2_free(sk_h2_conn *h)
{
    if (!h) return;
    if (h->ng) nghttp2_session_del(h->ng);
    free(h->snap);
    free(h);
}

/* A graceful GOAWAY (see h2_server.h). */
void sk_h2_drain(sk_conn *c)
{
    sk_h2_conn *h = c->h2;
    if (c->dead || h->notice_sent || h->failing || h->ng_broken) return;
    h->notice_sent = true;
    nghttp2_submit_shutdown_notice(h->ng);
    nghttp2_submit_ping(h->ng, NGHTTP2_FLAG_NONE, (const uint8_t *)DRAIN_PING);
    h->goaway_timer.repeat = DRAIN_PING_MS / 1000.0;
    ev_timer_again(c->worker->loop, &h->goaway_timer);
    h2_flush(h);
}

bool sk_h2_idle(const sk_conn *c)
{
    return c->h2->nstreams == 0 && sk_out_pending(&c->out) == 0;
}

void sk_h2_each_request(sk_conn *c, void (*fn)(void *rq, void *arg), void *arg)
{
    sk_h2_conn *h = c->h2;
    size_t n = snapshot(h);
    for (size_t i = 0; i < n; i++)
        if (!h->snap[i]->released && h->snap[i]->rq) fn(h->snap[i]->rq, arg);
}

/* ---- sk_server_ops: the request layer's side of a stream ---- */

/* Is a response header field one that HTTP/2 forbids (RFC 9113 8.2.2)? */
static bool connection_specific(const sk_header *x)
{
    switch (x->name_len) {
    case 2: return strncasecmp(x->name, "te", 2) == 0;
    case 7: return strncasecmp(x->name, "upgrade", 7) == 0;
    case 10:
        return strncasecmp(x->name, "connection", 10) == 0 || strncasecmp(x->name, "keep-alive", 10) == 0;
    case 16: return strncasecmp(x->name, "proxy-connection", 16) == 0;
    case 17: return strncasecmp(x->name, "transfer-encoding", 17) == 0;
    default: return false;
    }
}

static nghttp2_nv nv_make(const char *name, size_t nl, const char *value, size_t vl)
{
    nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, nl, vl, NGHTTP2_NV_FLAG_NONE};
    return nv;
}
#define NV_LIT(n, v, vl) nv_make(n, sizeof(n) - 1, v, vl)

/* Submits the response HEADERS of s: :status, the fields (nghttp2 copies
 * them and lowercases the names), a content-length; with a body a data
 * source follows. 0 or -1. */
static int submit_head(h2_stream *s, int status, const sk_header *hdrs, size_t n, const char *const *extra,
                       bool has_length, uint64_t length, bool body)
{
    sk_h2_conn *h = s->h;
    size_t nextra = 0;
    for (size_t i = 0; extra && extra[i]; i += 2) nextra++;
    size_t cap = n + nextra + 2;
    nghttp2_nv stack[64],
        *nv = cap <= SK_ARRAY_LEN(stack) ? stack : sk_arena_alloc(&s->req->arena, cap * sizeof(*nv));
    if (!nv) return -1;
    char st[4] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10), (char)('0' + status % 10),
                  0};
    char cl[24];
    size_t k = 0;
    nv[k++] = NV_LIT(":status", st, 3);
    for (size_t i = 0; i < n; i++)
        if (!connection_specific(&hdrs[i]) && hdrs[i].name_len && hdrs[i].name[0] != ':')
            nv[k++] = nv_make(hdrs[i].name, hdrs[i].name_len, hdrs[i].value, hdrs[i].value_len);
    for (size_t i = 0; i < 2 * nextra; i += 2) {
        sk_header x = {extra[i], strlen(extra[i]), extra[i + 1], strlen(extra[i + 1])};
        if (!connection_specific(&x) && x.name_len && x.name[0] != ':')
            nv[k++] = nv_make(x.name, x.name_len, x.value, x.value_len);
    }
    if (has_length) nv[k++] = NV_LIT("content-length", cl, (size_t)(sk_put_u64(cl, length) - cl));
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = data_read};
    if (nghttp2_submit_response(h->ng, s->id, nv, k, body ? &prd : NULL) != 0) return -1;
    s->submitted = true;
    if (!body) s->resp_eof = true;
    return 0;
}

static bool usable(const h2_stream *s)
{
    return s->rq && !s->cut && !s->closed && !s->h->c->dead && !s->h->ng_broken;
}

static int op_send_head(void *p, int status, const char *reason, size_t reason_len, const sk_header *hdrs,
                        size_t n, int framing, bool has_length, uint64_t length)
{
    h2_stream *s = p;
    if (!usable(s) || s->submitted || status < 200 || status > 999) return -1;
    sk_msg *r = s->req;
    if (framing == SK_BODY_LENGTH) has_length = true;
    if (framing == SK_BODY_CHUNKED || framing == SK_BODY_EOF) has_length = false;
    if (submit_head(s, status, hdrs, n, NULL, has_length, length, framing != SK_BODY_NONE) < 0) return -1;
    r->status = status;
    r->response_started = true;
    r->state = SK_REQ_RESPONDING;
    return 0;
}

/* Resumes the data source of s when it waits. */
static void resume(h2_stream *s)
{
    if (s->deferred && s->submitted && !s->closed && !s->h->ng_broken) {
        s->deferred = false;
        nghttp2_session_resume_data(s->h->ng, s->id);
    }
}

static int op_send_body(void *p, const void *b, size_t n)
{
    h2_stream *s = p;
    if (!usable(s) || !s->submitted) return -1;
    if (s->resp_eof || n == 0) return 0;
    if (s->nrefs == REFS && detach_refs(s) < 0) return -1;
    s->refp[s->nrefs] = b;
    s->refn[s->nrefs] = n;
    s->nrefs++;
    s->ref_bytes += n;
    s->req->bytes_sent += n;
    resume(s);
    return 0;
}

static int op_send_end(void *p)
{
    h2_stream *s = p;
    if (!usable(s) || !s->submitted) return -1;
    if (s->resp_eof) return 0;
    s->resp_eof = true;
    resume(s);
    return 0;
}

static int op_send_trailers(void *p, const sk_header *hdrs, size_t n)
{
    h2_stream *s = p;
    if (!usable(s) || !s->submitted) return -1;
    if (s->resp_eof) return 0; /* no body was announced: nowhere to put them */
    size_t bytes = 0, k = 0;
    for (size_t i = 0; i < n; i++) bytes += hdrs[i].name_len + hdrs[i].value_len;
    nghttp2_nv *nv = n ? malloc(n * sizeof(*nv) + bytes) : NULL;
    if (n && !nv) return -1;
    char *q = (char *)(nv + n);
    for (size_t i = 0; i < n; i++) {
        if (connection_specific(&hdrs[i]) || !hdrs[i].name_len || hdrs[i].name[0] == ':') continue;
        nv[k].name = (uint8_t *)q;
        q = sk_put(q, hdrs[i].name, hdrs[i].name_len);
        nv[k].value = (uint8_t *)q;
        q = sk_put(q, hdrs[i].value, hdrs[i].value_len);
        nv[k].namelen = hdrs[i].name_len;
        nv[k].valuelen = hdrs[i].value_len;
        nv[k].flags = NGHTTP2_NV_FLAG_NONE;
        k++;
    }
    free(s->trailers);
    s->trailers = k ? nv : NULL;
    s->ntrailers = k;
    if (!k) free(nv);
    s->resp_eof = true;
    resume(s);
    return 0;
}

static int op_send_continue(void *p)
{
    h2_stream *s = p;
    if (!usable(s) || s->submitted) return -1;
    nghttp2_nv nv = NV_LIT(":status", "100", 3);
    return nghttp2_submit_headers(s->h->ng, NGHTTP2_FLAG_NONE, s->id, NULL, &nv, 1, NULL) == 0 ? 0 : -1;
}

/* The response of s is complete (queued): the request is finished now,
 * or right after nghttp2 returns when this happens inside a receive
 * callback; the rest of the request body is dropped. */
static void response_done(h2_stream *s)
{
    sk_h2_conn *h = s->h;
    sk_msg *r = s->req;
    r->state = SK_REQ_DONE;
    s->resp_done = true;
    if (!s->req_end) {
        r->discard_body = true;
        s->discard = true;
        sk_buf_reset(&s->in);
        if (s->unconsumed) consume_stream(s, s->unconsumed);
        s->unconsumed = 0;
    }
    if (h->in_recv) {
        s->finish_due = true;
        todo(s);
        return;
    }
    finish(s, true);
}

/* Cuts s at once: RST_STREAM and the request ends incomplete. */
static void cut(h2_stream *s)
{
    reset(s, NGHTTP2_INTERNAL_ERROR);
    s->cut = true;
    finish(s, false);
}

/* A local reply on s (see sk_server_ops.local_reply): the body is copied. */
static void stream_local_reply(h2_stream *s, int status, const char *reason, const char *body, size_t len,
                               const char *const *headers)
{
    sk_h2_conn *h = s->h;
    if (!s->rq) return;
    sk_msg *r = s->req;
    h->c->cbs->cancel(s->rq); /* nothing more goes upstream */
    if (!s->rq) return;
    if (r->response_started || !usable(s)) {
        /* Part of a response is already out: all we can do is cut it. */
        r->status = r->status ? r->status : status;
        r->reason = reason;
        cut(s);
        return;
    }
    char text[64];
    if (!body) {
        len = (size_t)snprintf(text, sizeof(text), "%s\n", reason ? reason : "");
        body = text;
    }
    bool bodiless = status == 204 || status == 304;
    if (bodiless) len = 0;
    bool own_type = false;
    for (size_t i = 0; headers && headers[i]; i += 2)
        if (strcasecmp(headers[i], "content-type") == 0) own_type = true;
    sk_header fixed[2];
    size_t nf = 0;
    if (!bodiless && !own_type) fixed[nf++] = (sk_header){"content-type", 12, "text/plain", 10};
    if (reason) fixed[nf++] = (sk_header){"x-sidekick-reason", 17, reason, strlen(reason)};
    bool send_body = len > 0 && r->method_id != SK_METHOD_HEAD;
    if (send_body && sk_buf_append(&s->out, body, len) < 0) {
        cut(s);
        return;
    }
    if (submit_head(s, status, fixed, nf, headers, !bodiless, len, send_body) < 0) {
        cut(s);
        return;
    }
    s->resp_eof = true;
    if (send_body) r->bytes_sent += len;
    r->status = status;
    r->reason = reason;
    r->response_started = true;
    response_done(s);
}

static void op_local_reply(void *p, int status, const char *reason, const char *body, size_t len,
                           const char *const *headers, bool close)
{
    stream_local_reply(p, status, reason, body, len, headers); /* `close` is HTTP/1's: streams end alone */
}

/* The request layer's flush: nghttp2 makes its frames now; when they are
 * few, what they reference is copied and the write waits for the end of
 * this loop iteration (an ev_prepare), where the frames of every stream
 * answered meanwhile go out in one writev. Otherwise, a flush. */
static void soft_flush(sk_h2_conn *h)
{
    sk_conn *c = h->c;
    if (c->dead || h->in_recv || h->in_send || h->ng_broken || h->failing) {
        h2_flush(h);
        return;
    }
    h->blocked = false;
    h->in_send = true;
    int rv = nghttp2_session_send(h->ng);
    h->in_send = false;
    if (rv < 0 || h->blocked || h->flush_due || sk_out_pending(&c->out) >= COALESCE_MAX ||
        sk_out_detach(&c->out) < 0) {
        h2_flush(h);
        return;
    }
    detach_all(h);
    if (!ev_is_active(&h->prep)) ev_prepare_start(c->worker->loop, &h->prep);
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    sk_h2_conn *h = w->data;
    ev_prepare_stop(loop, w);
    h2_flush(h);
    if (!h->c->dead) run_todo(h);
}

static void op_flush(void *p)
{
    h2_stream *s = p;
    soft_flush(s->h);
}

static size_t op_pending(void *p)
{
    h2_stream *s = p;
    size_t n = stream_pending(s);
    if (n > SK_HIGH_WATER && !s->congested && s->rq) {
        s->congested = true; /* the request layer stops its source: it hears drained later */
        s->h->ncongested++;
    }
    return n;
}

static void op_pause_body(void *p)
{
    h2_stream *s = p;
    s->paused = true;
}

static void op_resume_body(void *p)
{
    h2_stream *s = p;
    if (!s->paused) return;
    s->paused = false;
    if (s->unconsumed && !s->filter_wait) {
        consume_stream(s, s->unconsumed); /* the window opens again: WINDOW_UPDATE */
        s->unconsumed = 0;
        h2_flush(s->h);
    }
}

static void op_chain_resumed(void *p)
{
    h2_stream *s = p;
    if (!s->filter_wait) return;
    s->filter_wait = false;
    if (s->rq) todo(s); /* the held body goes on at the next safe point, as HTTP/1 does */
    if (!s->h->in_recv && !s->h->c->dead) arm_timer(s->h, false);
}

static void op_response_done(void *p)
{
    h2_stream *s = p;
    if (s->rq) response_done(s);
}

static void op_abort(void *p)
{
    h2_stream *s = p;
    if (s->rq) cut(s);
}

static bool op_gone(void *p)
{
    h2_stream *s = p;
    return s->cut || s->h->c->dead || s->h->ng_broken;
}

const sk_server_ops sk_h2_server_ops = {
    .send_head = op_send_head,
    .send_body = op_send_body,
    .send_end = op_send_end,
    .send_trailers = op_send_trailers,
    .send_continue = op_send_continue,
    .local_reply = op_local_reply,
    .flush = op_flush,
    .pending = op_pending,
    .pause_body = op_pause_body,
    .resume_body = op_resume_body,
    .chain_resumed = op_chain_resumed,
    .response_done = op_response_done,
    .abort = op_abort,
    .gone = op_gone,
};
