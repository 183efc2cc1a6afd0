/*
 * h1_client.h — the upstream HTTP/1.1 codec (h1_client.c): one connection
 * to an endpoint, the request written in HTTP/1.1 wire format, the response
 * parsed with llhttp and handed to the request layer through sk_client_cbs.
 * It implements sk_client_ops (codec.h). Its owner (a pool, upstream/)
 * keeps idle connections and hears when one closes.
 */
#ifndef SK_H1_CLIENT_H
#define SK_H1_CLIENT_H

#include <llhttp.h>
#include <sys/socket.h>

#include "codec.h"
#include "list.h"
#include "out.h"
#include "transport.h"
#include "wctx.h"

typedef struct sk_upconn sk_upconn;

/* What the owner of upstream connections hears. */
typedef struct sk_upconn_owner {
    /* u is closing (an error, the upstream closed it, idle timeout, or the
     * owner's sk_upconn_close): unlist it and drop its counts. u is freed
     * right after this returns. */
    void (*closed)(sk_upconn *u);
} sk_upconn_owner;

/* An upstream connection. */
struct sk_upconn {
    sk_wctx *worker;              /* the thread it lives on */
    const sk_upconn_owner *owner; /* the pool's hooks */
    void *owner_data;             /* the pool */
    sk_link link;                 /* in the owner's idle list while idle */
    const char *peer;             /* "ip:port" of the endpoint, for logs (owner's memory) */
    sk_transport tr;              /* the socket, its watchers and the connect */
    ev_timer timer;               /* idle timeout while pooled */
    llhttp_t parser;              /* HTTP/1 response parser */
    char *rbuf;                   /* read buffer (SK_READ_BUF) or NULL */
    size_t rpos, rlen;            /* unparsed bytes */
    sk_out out;                   /* towards the upstream */
    const char *head;             /* the request head of this attempt (the request's arena) */
    size_t head_len;              /* its length */
    int req_framing;              /* enum sk_framing of the request body being sent */
    sk_msg *req;                  /* the exchange using it, or NULL when idle */
    void *rq;                     /* the request layer's request of req */
    const sk_client_cbs *cbs;     /* the request layer, while attached */
    bool connected;               /* connect completed */
    bool got_response_bytes;      /* any byte of the response arrived */
    bool response_done;           /* the response is complete */
    bool reusable;                /* may carry another request */
    bool retry_response;          /* a response that will be retried: read whole, not forwarded */
    bool filter_reply;            /* a filter replaced the response */
    char last_byte;               /* last byte of the previous read (obs-fold check) */
    unsigned requests;            /* requests served on it */
};

/*
 * Opens a connection to sa (non-blocking, connect_timeout_ms; 0 = none) of
 * transport kind ops with its state (NULL, NULL: plain TCP; a TLS state of
 * sk_tls_conn_new, which u then owns, failure or not). The connect timeout
 * covers a TLS handshake; a peer refused by the TLS kind's allow-list fails
 * the request with 502 upstream_identity_mismatch before a byte is sent.
 * Returns it (u->connected tells whether the connect finished at once), or
 * NULL with errno when it failed at once (nothing is left to free).
 */
sk_upconn *sk_upconn_open(sk_wctx *w, const struct sockaddr *sa, socklen_t len, const char *peer,
                          uint64_t connect_timeout_ms, const sk_transport_ops *ops, void *ops_state,
                          const sk_upconn_owner *owner, void *owner_data);
/* A request starts on u: its exchange m (the response goes to m->rhead)
 * and the callbacks for it. */
void sk_upconn_attach(sk_upconn *u, sk_msg *m, void *rq, const sk_client_cbs *cbs);
/* The request is done with u (no callback follows). */
void sk_upconn_detach(sk_upconn *u);
/* Can u carry another request (connected, nothing queued or unread)? */
bool sk_upconn_reusable(const sk_upconn *u);
/* u waits in its owner's pool: watch for the upstream closing it, close
 * after idle_ms. */
void sk_upconn_park(sk_upconn *u, uint64_t idle_ms);
/* u leaves the pool for a request. */
void sk_upconn_unpark(sk_upconn *u);
/* Closes u (owner->closed runs) and frees it. */
void sk_upconn_close(sk_upconn *u);

/* The ops table of HTTP/1 upstream connections (the handle is the sk_upconn). */
extern const sk_client_ops sk_h1_client_ops;

#endif
