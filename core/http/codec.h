/*
 * codec.h — the seam between the request layer (proxy/) and the codecs
 * (http/): the HTTP/1 and HTTP/2 server codecs, the HTTP/1 client.
 *
 * The request layer talks to a codec only through an ops table and hears
 * from it only through the callbacks it registered, as h2o's protocols call
 * h2o_process_request() and HAProxy's streams use struct mux_ops. A codec
 * writes every byte of its wire format; the request layer never formats a
 * status line, a chunk or a Connection header, and a codec never runs a
 * filter, picks an endpoint or writes a log line.
 *
 * Handles: a server stream (`void *s`) is the codec's side of one request
 * (an HTTP/1 connection serves one at a time; an HTTP/2 stream is one); a
 * client connection (`void *u`) is one upstream connection carrying the
 * request. The request layer's request is `void *req` to the codecs.
 */
#ifndef SK_CODEC_H
#define SK_CODEC_H

#include "message.h"

struct sk_listener;
struct sk_config;
struct sk_wctx;

#define SK_HIGH_WATER (256 * 1024) /* stop reading the source above this many queued bytes */
#define SK_LOW_WATER  (64 * 1024)  /* resume below this */

/* What a server codec knows of the connection a request came in on. */
typedef struct sk_conn_info {
    struct sk_wctx *wctx;               /* the worker */
    struct sk_config *config;           /* generation the connection runs on */
    const struct sk_listener *listener; /* the listener it was accepted on */
    const char *client_ip;              /* peer address text (lives as long as the connection) */
    const char *client_addr;            /* peer "ip:port" (lives only during begin: copy it) */
    const char *peer_identity;          /* verified peer identity, or NULL */
    bool secure;                        /* the connection is TLS */
} sk_conn_info;

/* ---- server side: a downstream codec, driven by the request layer ---- */

/* What the request layer asks of a server stream. */
typedef struct sk_server_ops {
    /* Queues the response head: status, reason text (NULL: the standard
     * one), the end-to-end header fields (hdrs[0..n); the codec adds its own
     * framing and connection management), and the body: SK_BODY_NONE (no
     * body; `length` is still announced when has_length, for HEAD and 304),
     * SK_BODY_LENGTH (`length` bytes follow) or SK_BODY_CHUNKED (length not
     * known). Returns 0 or -1. */
    int (*send_head)(void *s, int status, const char *reason, size_t reason_len, const sk_header *hdrs,
                     size_t n, int framing, bool has_length, uint64_t length);
    /* Queues body bytes by reference: valid until the next flush, which the
     * caller makes before the memory goes. 0 or -1. */
    int (*send_body)(void *s, const void *p, size_t n);
    /* The body is complete. 0 or -1. */
    int (*send_end)(void *s);
    /* The body is complete and trailer fields hdrs[0..n) follow it (instead
     * of send_end; a send_end after it does nothing). HTTP/2 sends them as a
     * HEADERS frame that ends the stream; HTTP/1 as the trailer section of a
     * chunked body, and drops them with other framings (there is nowhere to
     * put them). The request layer forwards none yet (the HTTP/1 client
     * drops an upstream's trailers); gRPC will. 0 or -1. */
    int (*send_trailers)(void *s, const sk_header *hdrs, size_t n);
    /* Tells a client that waits for it (Expect: 100-continue) to send the body. */
    int (*send_continue)(void *s);
    /* Answers the request locally with x-sidekick-reason `reason` (static),
     * a body and extra headers (name, value, ..., NULL; a content-type among
     * them replaces text/plain). With `close`, the connection closes after
     * it. When part of a response is already out, it cuts the stream. */
    void (*local_reply)(void *s, int status, const char *reason, const char *body, size_t len,
                        const char *const *headers, bool close);
    /* Writes what is queued (or arms the write for later). */
    void (*flush)(void *s);
    /* Bytes queued towards the client and not yet written. */
    size_t (*pending)(void *s);
    /* Back-pressure: stop / resume reading the request body. */
    void (*pause_body)(void *s);
    void (*resume_body)(void *s);
    /* A paused filter chain went on: the codec may deliver the body now. */
    void (*chain_resumed)(void *s);
    /* The response is complete (all of it queued). */
    void (*response_done)(void *s);
    /* Cuts the stream at once (a response already started cannot be completed). */
    void (*abort)(void *s);
    /* Has the stream gone (the request must stop)? */
    bool (*gone)(void *s);
} sk_server_ops;

/* What a server codec tells the request layer. `req` is what begin() returned. */
typedef struct sk_server_cbs {
    /* A request starts on stream s: returns the request (its exchange in
     * *msg), or NULL on OOM. *ci lives only during the call; its strings
     * live as long as the connection. */
    void *(*begin)(void *s, const sk_server_ops *ops, const sk_conn_info *ci, sk_msg **msg);
    /* The head is complete and valid: route it. Returns 0 to go on, 1 when
     * the request waits for a filter (hold the body until chain_resumed), -1
     * when the stream must stop (a reply was queued, or it is gone). */
    int (*head)(void *req);
    /* A piece of request body (decoded) / its end. 0, or -1 to stop.
     * body_end comes for a request without a body too (right after head,
     * or after chain_resumed when a filter held it): the upstream
     * connection is reused only once the request has ended. */
    int (*body)(void *req, const char *p, size_t n);
    int (*body_end)(void *req);
    /* Everything one read brought was delivered (body pieces may wait to be
     * written upstream together). */
    void (*input_done)(void *req);
    /* Output towards the client went above SK_HIGH_WATER / below SK_LOW_WATER. */
    void (*congested)(void *req);
    void (*drained)(void *req);
    /* Nothing more goes upstream for this request (an early reply). */
    void (*cancel)(void *req);
    /* The exchange is over (response done and request read, or the stream
     * closed): count, log, release. `complete` is false when it was cut. */
    void (*finish)(void *req, bool complete);
} sk_server_cbs;

/* ---- client side: an upstream codec, driven by the request layer ---- */

/* A request as it goes upstream. Pointers stay valid until send_head returns. */
typedef struct sk_out_request {
    const char *method; /* method name */
    int method_id;      /* enum sk_method */
    const char *path;   /* path as sent */
    size_t path_len;
    const char *query; /* query without '?', or NULL */
    size_t query_len;
    const sk_header *hdrs; /* header fields (end-to-end and the proxy's own) */
    size_t nhdrs;
    const char *default_host; /* Host to send when hdrs has none (HTTP/1.0 clients) */
    int framing;              /* enum sk_framing of the body */
    uint64_t length;          /* when SK_BODY_LENGTH */
} sk_out_request;

/* What the request layer asks of an upstream connection. */
typedef struct sk_client_ops {
    /* Queues the request head (kept by the connection for this attempt). 0 or -1. */
    int (*send_head)(void *u, const sk_out_request *q);
    /* Queues body bytes by reference (valid until the next flush). 0 or -1. */
    int (*send_body)(void *u, const void *p, size_t n);
    /* The request body is complete. 0 or -1. */
    int (*send_end)(void *u);
    /* Writes what is queued. Returns -1 when the connection failed (the
     * error callback has run and it is gone). */
    int (*flush)(void *u);
    /* Back-pressure: stop / resume reading the response. */
    void (*pause_read)(void *u);
    void (*resume_read)(void *u);
} sk_client_ops;

/* What an upstream connection tells the request layer. */
typedef struct sk_client_cbs {
    /* The connection is up (the request no longer waits for a connect). */
    void (*connected)(void *req);
    /* Should a response with this status be read whole and dropped, then the
     * request tried again (retry policy)? */
    bool (*retry_status)(void *req, int status);
    /* The response head is in msg->rhead. Returns 0 to go on, -1 on error, 1
     * when a filter replaced the response (stop reading; the request layer
     * takes it from there). */
    int (*response_head)(void *req, int status, bool no_body, bool has_length, uint64_t length);
    /* Response body bytes (valid until the callback returns and the next
     * flush of the client side); 0 or -1. */
    int (*response_body)(void *req, const char *p, size_t n);
    /* The response is complete; `reusable`: the connection may carry another request. */
    void (*response_end)(void *req, bool reusable);
    /* A response that retry_status() chose was read whole and dropped. */
    void (*retry)(void *req, bool reusable);
    /* The attempt failed: status and reason as in DESIGN.md's local replies;
     * retryable when no byte of the response arrived. The connection is gone
     * after this callback returns. */
    void (*error)(void *req, int status, const char *reason, bool retryable);
    /* The response replaced by a filter (response_head returned 1). */
    void (*filter_reply)(void *req);
    /* Output towards the upstream went above SK_HIGH_WATER / below SK_LOW_WATER. */
    void (*congested)(void *req);
    void (*drained)(void *req);
    /* The body pieces of one read were handed over: the request layer
     * writes them to the client before the read buffer is reused. Returns
     * -1 when the request is gone, 1 when the client is congested (stop
     * reading the response until drained), 0 to go on. */
    int (*read_done)(void *req);
} sk_client_cbs;

#endif
