/*
 * h2_server.h — the downstream HTTP/2 codec (h2_server.c) on nghttp2: one
 * nghttp2 server session per client connection, one request per stream,
 * through the same sk_server_cbs as HTTP/1 (the request layer does not know
 * which codec a request came from). It implements sk_server_ops for its
 * streams.
 *
 * A connection becomes HTTP/2 in h1_server.c, which owns the connection
 * (sk_conn: socket, write queue, read buffer, timer, the runtime's list and
 * generation): after the TLS handshake when ALPN chose "h2", or when a plain
 * connection's first bytes are the connection preface. sk_h2_start() then
 * takes over the transport's callbacks and the timer; the sk_conn_*
 * functions of h1_server.h call the functions below for an HTTP/2
 * connection.
 *
 * Threads: a connection and its streams live on one worker.
 */
#ifndef SK_H2_SERVER_H
#define SK_H2_SERVER_H

#include "h1_server.h"

typedef struct sk_h2_conn sk_h2_conn;

/*
 * Makes c an HTTP/2 connection: a server session with the listener's
 * settings (max_concurrent_streams, the header limits, http2_max_frame_size,
 * http2_initial_window_size, http2_connection_window_size), the transport's
 * callbacks and c->timer taken over. Bytes already read (c->rbuf[c->rpos..
 * c->rlen), the preface first, or none after an ALPN "h2") are processed
 * at once. Returns 0, or -1 when out of memory (c is closed).
 */
int sk_h2_start(sk_conn *c);
/* sk_conn_close of an HTTP/2 connection: every open request is cut (logged
 * as the request layer does; `reason` (static, may be NULL) for those that
 * have none), the session stops. The transport is closed by the caller. */
void sk_h2_close(sk_conn *c, const char *reason);
/* Frees the session (from sk_conn_free). NULL is fine. */
void sk_h2_free(sk_h2_conn *h);
/* A graceful shutdown (drain, reload, a removed listener): a GOAWAY with
 * the last stream id 2^31-1, a PING, and on its answer (or after 1 s) the
 * GOAWAY with the last stream id processed; streams up to it finish, then
 * the connection closes. Idempotent. */
void sk_h2_drain(sk_conn *c);
/* No stream open and nothing queued? */
bool sk_h2_idle(const sk_conn *c);
/* Calls fn(rq, arg) for the request of every stream of c that has one
 * (tests and the fuzz harness: a request's timers). */
void sk_h2_each_request(sk_conn *c, void (*fn)(void *rq, void *arg), void *arg);

/* The ops table of HTTP/2 server streams (the stream is h2_server.c's). */
extern const sk_server_ops sk_h2_server_ops;

/* The client connection preface (RFC 9113 3.4) and its length. */
#define SK_H2_PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define SK_H2_PREFACE_LEN 24

#endif
