/*
 * accesslog.h — one JSON line per finished HTTP request or TCP relay
 * (accesslog.c).
 */
#ifndef SK_ACCESSLOG_H
#define SK_ACCESSLOG_H

#include "request.h"

/* Writes the access log line of a finished (or cut) request, if enabled. */
void sk_accesslog_write(sk_request *r);

/* What the line of a TCP relay says. Strings may be NULL (JSON null). */
typedef struct sk_tcp_log {
    uint64_t generation;  /* config generation the relay ran on */
    const char *listener; /* listener name */
    const char *cluster;  /* cluster name */
    const char *endpoint; /* "ip:port" of the upstream, or NULL when none was picked */
    const char *client;   /* client "ip:port" */
    const char *identity; /* verified TLS client's SPIFFE ID, or NULL */
    uint64_t bytes_in;    /* client → upstream */
    uint64_t bytes_out;   /* upstream → client */
    double duration_ms;   /* accept to close */
    const char *reason;   /* why it ended abnormally, or NULL */
} sk_tcp_log;

/* Writes the access log line of a finished TCP relay on thread w, if enabled. */
void sk_accesslog_write_tcp(sk_wctx *w, const sk_tcp_log *e);

#endif
