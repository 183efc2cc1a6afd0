/*
 * message.h — one request/response exchange as every codec sees it, in
 * protocol-neutral form: method, target, authority, headers, body framing
 * and counters on the request side; status, headers, progress on the
 * response side. The HTTP/1 codec fills it from llhttp, the HTTP/2 codec
 * the same fields from HEADERS frames.
 *
 * The request layer's sk_request embeds these fields (SK_MSG_FIELDS, in the
 * way the Linux kernel's struct_group() does) so that the proxy reads
 * r->path while a codec holds only an sk_msg *: the codec never sees routes,
 * clusters or plugins.
 */
#ifndef SK_MESSAGE_H
#define SK_MESSAGE_H

#include "head.h"

/* Methods the proxy treats specially; anything else is SK_METHOD_OTHER. */
enum sk_method {
    SK_METHOD_OTHER = 0,
    SK_METHOD_GET,
    SK_METHOD_HEAD,
    SK_METHOD_POST,
    SK_METHOD_PUT,
    SK_METHOD_DELETE,
    SK_METHOD_OPTIONS,
    SK_METHOD_TRACE,
    SK_METHOD_PATCH,
    SK_METHOD_CONNECT,
};

/* Where an exchange is in its life. */
enum sk_req_state {
    SK_REQ_HEAD = 0,   /* reading the request head */
    SK_REQ_UPSTREAM,   /* waiting for / talking to an upstream */
    SK_REQ_RESPONDING, /* response head sent, body streaming */
    SK_REQ_DONE,       /* response complete */
};

/* The exchange's fields; see sk_msg. */
#define SK_MSG_FIELDS                                                                               \
    int state;          /* enum sk_req_state */                                                     \
    uint64_t start_ns;  /* first byte of the head (sk_now_ns) */                                    \
    sk_head head;       /* request head: target and header fields */                                \
    const char *method; /* method name (static string) */                                           \
    int method_id;      /* enum sk_method */                                                        \
    int version;        /* 10 or 11 for HTTP/1.x, 20 for HTTP/2 */                                  \
    const char *path;   /* path part of the target (head.raw or arena) */                           \
    size_t path_len;                                                                                \
    const char *query; /* after '?', or NULL */                                                     \
    size_t query_len;                                                                               \
    const char *host; /* authority without port, or "" */                                           \
    size_t host_len;                                                                                \
    const char *authority; /* authority as sent (Host or :authority) */                             \
    size_t authority_len;                                                                           \
    int req_framing;                 /* enum sk_framing of the request body */                      \
    uint64_t req_content_length;     /* when SK_BODY_LENGTH */                                      \
    uint64_t body_received;          /* request body bytes received (decoded) */                    \
    uint64_t bytes_received;         /* request bytes on the wire, head included */                 \
    bool body_done;                  /* request body fully received */                              \
    bool expect_continue;            /* the client waits for 100 Continue */                        \
    bool keep_alive;                 /* the client wants the connection kept */                     \
    sk_head rhead;                   /* response head as the upstream sent it */                    \
    uint64_t upstream_first_byte_ns; /* first upstream response byte, last attempt */               \
    int status;                      /* response status sent to the client, 0 = none yet */         \
    const char *reason;              /* x-sidekick-reason of a local reply (static), or NULL */     \
    uint64_t bytes_sent;             /* bytes written towards the client, framing included */       \
    bool response_started;           /* response head queued to the client */                       \
    bool close_after;                /* the connection closes after this response */                \
    bool discard_body;               /* the rest of the request body is dropped (answered early) */ \
    bool client_closed;              /* the client closed or reset before its response started */   \
    sk_arena arena;                  /* memory that lives as long as the exchange */

/* One exchange, as a codec holds it (the first part of an sk_request). */
typedef struct sk_msg {
    SK_MSG_FIELDS
} sk_msg;

/* The enum sk_method of a method name. */
int sk_method_id(const char *name, size_t len);
/* The name of an enum sk_method (static), NULL for SK_METHOD_OTHER. */
const char *sk_method_name(int id);

/*
 * Sets r->path and r->query from an origin-form request target u[0..n)
 * ("/path?query", or "*"), as the server codecs share it: the path is
 * normalised once under `flags` (normalize.h SK_PATH_*), into a copy in
 * r->arena when that changes it; r->query points into u. Returns 0, -1 for
 * a malformed target (not starting with "/", a space or control byte), -2
 * on OOM, or a negative enum sk_path_error.
 */
int sk_msg_origin_target(sk_msg *r, const char *u, size_t n, unsigned flags);

/* Is a request with this method safe to send twice (RFC 9110 9.2.2)? */
static inline bool sk_method_idempotent(int m)
{
    return m == SK_METHOD_GET || m == SK_METHOD_HEAD || m == SK_METHOD_OPTIONS || m == SK_METHOD_PUT ||
           m == SK_METHOD_DELETE || m == SK_METHOD_TRACE;
}

#endif
