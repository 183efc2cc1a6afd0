/*
 * h1_server.h — the downstream connection and its HTTP/1.1 codec
 * (h1_server.c): one client connection, requests parsed with llhttp one at
 * a time (pipelined input waits), responses written in HTTP/1.1 wire
 * format. It implements sk_server_ops (codec.h) and reports to the request
 * layer through the sk_server_cbs it is given; its owner (the runtime)
 * hears of the connection's life through sk_conn_owner.
 *
 * Every downstream HTTP connection starts here. The protocol is chosen
 * once: after the TLS handshake by ALPN ("h2"), or on a plain connection by
 * its first bytes (the HTTP/2 connection preface, prior knowledge). An
 * HTTP/2 connection is handed to h2_server.c (c->h2), which takes over the
 * transport's callbacks and the timer and keeps the rest of sk_conn (the
 * socket, the write queue, the read buffer, the owner's list and
 * generation); the functions below then act on it through h2_server.h.
 */
#ifndef SK_H1_SERVER_H
#define SK_H1_SERVER_H

#include <llhttp.h>
#include <sys/socket.h>

#include "codec.h"
#include "config.h"
#include "list.h"
#include "out.h"
#include "transport.h"
#include "wctx.h"

typedef struct sk_conn sk_conn;

/* What the runtime hears of a connection. */
typedef struct sk_conn_owner {
    /* The connection closed: unlist it; free it later with sk_conn_free
     * (sk_wctx_defer). */
    void (*closed)(sk_conn *c);
    /* Between two requests of a keep-alive connection: the owner may move
     * it to a newer generation (sk_conn_set_generation) or drain it. */
    void (*idle)(sk_conn *c);
} sk_conn_owner;

/* A downstream (client) connection. */
struct sk_conn {
    sk_wctx *worker;             /* the thread it lives on */
    const sk_conn_owner *owner;  /* the runtime's hooks */
    const sk_server_cbs *cbs;    /* the request layer */
    const sk_listener *listener; /* the listener it was accepted on (of config) */
    sk_config *config;           /* generation at accept or last adoption (reference) */
    sk_link link;                /* in the owner's list of connections */
    sk_transport tr;             /* the socket and its watchers */
    ev_timer timer;              /* header or idle timeout */
    llhttp_t parser;             /* HTTP/1 request parser */
    char *rbuf;                  /* read buffer (SK_READ_BUF, from the thread's pool) or NULL */
    size_t rpos, rlen;           /* unparsed bytes are rbuf[rpos..rlen) */
    sk_out out;                  /* towards the client */
    sk_msg *req;                 /* current exchange, or NULL between requests */
    void *rq;                    /* the request layer's request of req */
    int resp_framing;            /* enum sk_framing of the current response towards the client */
    char client_ip[46];          /* peer address text */
    uint16_t client_port;        /* peer port */
    bool client_v6;              /* the peer is IPv6 ("[ip]:port") */
    bool closing;                /* close once out is flushed */
    bool dead;                   /* closed; freed at the next safe point */
    bool paused;                 /* parser paused at a message end */
    bool read_eof;               /* client half-closed */
    bool in_parser;              /* inside llhttp_execute */
    bool filter_wait;            /* parser paused after a head while a filter works */
    bool linger;                 /* unread input may follow: close with a lingering close */
    bool lingering;              /* half-closed, draining input before the close */
    char last_byte;              /* last byte handed to the parser (obs-fold check) */
    bool chosen;                 /* the protocol is chosen (ALPN, or the first bytes read) */
    struct sk_h2_conn *h2;       /* the HTTP/2 session (h2_server.c) when it speaks HTTP/2, else NULL */
};

/* Takes over an accepted, non-blocking socket of listener l on generation
 * cfg. Returns the connection (listed by the caller through c->link), or
 * NULL when out of memory (fd closed). */
sk_conn *sk_conn_accept(sk_wctx *w, const sk_conn_owner *owner, const sk_server_cbs *cbs,
                        const sk_listener *l, sk_config *cfg, int fd, const struct sockaddr *sa);
/* Closes c now (its request is cut); freed later by sk_conn_free. */
void sk_conn_close(sk_conn *c);
/* Frees a closed connection (void * for sk_wctx_defer). */
void sk_conn_free(void *c);
/* Draining: an idle connection closes now; a busy one after its response.
 * HTTP/2: a graceful GOAWAY; the open streams finish, then it closes. */
void sk_conn_drain(sk_conn *c);
/* Is the connection between requests with nothing buffered? */
bool sk_conn_idle(const sk_conn *c);
/* Moves an idle connection to generation cfg and its listener l (from the
 * owner's idle hook); takes a reference to cfg. */
void sk_conn_set_generation(sk_conn *c, sk_config *cfg, const sk_listener *l);
/* Stops reading and closes once what is queued is written (a listener that
 * went away in a reload). HTTP/2: a graceful GOAWAY, as sk_conn_drain. */
void sk_conn_close_when_flushed(sk_conn *c);
/* Closes c now (drain_timeout reached): its requests are logged with
 * `reason` (static) unless they have one. */
void sk_conn_cut(sk_conn *c, const char *reason);
/* Does c speak HTTP/2? */
static inline bool sk_conn_is_h2(const sk_conn *c)
{
    return c->h2 != NULL;
}
/* The path normalisation flags (normalize.h) of l's merge_slashes and
 * escaped_slashes, for the server codecs. */
unsigned sk_listener_path_flags(const sk_listener *l);

/* The ops table of HTTP/1 server streams (the stream is the sk_conn). */
extern const sk_server_ops sk_h1_server_ops;

#endif
