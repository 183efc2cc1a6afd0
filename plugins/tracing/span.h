/*
 * span.h — a finished span as workers store it (a compact record: fixed
 * fields and length-prefixed strings, no pointers, one memcpy into the
 * queue) and the JSON encoders the main thread runs over batches of them:
 * OTLP/HTTP JSON (ExportTraceServiceRequest) and Zipkin v2.
 */
#ifndef SK_TRACING_SPAN_H
#define SK_TRACING_SPAN_H

#include <stddef.h>
#include <stdint.h>

/* The strings of a span, in record order, with the bytes kept of each. */
enum span_str {
    S_METHOD,     /* request method as received */
    S_ROUTE,      /* matched route name, empty when none */
    S_PATH,       /* url.path */
    S_AUTHORITY,  /* server.address */
    S_CLIENT,     /* client.address */
    S_ENDPOINT,   /* "ip:port" of the last upstream endpoint tried */
    S_USER_AGENT, /* user_agent.original */
    S_IDENTITY,   /* the downstream peer's SPIFFE ID */
    S_REASON,     /* x-sidekick-reason of a local reply, or client_closed */
    S_TRACESTATE, /* tracestate forwarded upstream (w3c) */
    S_SCHEME,     /* url.scheme */
    S_NSTR
};
extern const uint16_t span_str_max[S_NSTR];

enum span_kind { SPAN_SERVER = 0, SPAN_CLIENT = 1 };

/* The fixed part of a record; the strings follow it back to back, then
 * padding to 8 bytes (size counts it all). */
typedef struct span_rec {
    uint32_t size;          /* bytes of the whole record, a multiple of 8 */
    uint8_t kind;           /* span_kind */
    uint8_t has_parent;     /* parent_id is set */
    uint16_t status;        /* HTTP status sent to the client; 0 = none */
    uint8_t trace_id[16];   /* 128-bit trace id */
    uint8_t span_id[8];     /* this span (the parent of the upstream request) */
    uint8_t parent_id[8];   /* the caller's span */
    uint64_t start_ns;      /* Unix time, ns: first byte of the request head */
    uint64_t end_ns;        /* Unix time, ns: response complete or aborted */
    uint64_t connect_ns;    /* Unix time, ns: upstream connection ready; 0 = none */
    uint64_t first_byte_ns; /* Unix time, ns: first upstream response byte; 0 = none */
    uint64_t bytes_in;      /* request bytes read from the client, head included */
    uint64_t bytes_out;     /* response bytes written to the client, head included */
    uint64_t generation;    /* config generation; 0 = unknown */
    uint32_t attempts;      /* upstream tries */
    uint16_t server_port;   /* port of the Host header (or the scheme's); 0 = unknown */
    uint16_t len[S_NSTR];   /* bytes of each string */
} span_rec;

#define SPAN_REC_MAX 4096 /* bytes a record may take (fixed part + every string at its max, padded) */

/* Appends string i to a record being built in buf (SPAN_REC_MAX bytes, a
 * span_rec at its start): at most span_str_max[i] bytes are kept. Strings
 * must be added in enum order, each once; span_end() finishes. */
void span_put(span_rec *r, enum span_str i, const char *s, size_t n);
/* Sets r->size (padding included). Returns it. */
uint32_t span_end(span_rec *r);
/* String i of a finished record, and its length in *n. */
const char *span_get(const span_rec *r, enum span_str i, size_t *n);

/* A growable byte buffer for the JSON bodies (main thread). */
typedef struct jbuf {
    char *p;
    size_t len, cap;
    int oom; /* an allocation failed: the content is incomplete */
} jbuf;
void jbuf_free(jbuf *b);

/* Exporter formats. */
enum span_format { FMT_OTLP = 0, FMT_ZIPKIN = 1 };

/* Opens a batch body in b (emptied first): the OTLP envelope with the
 * resource's service.name, or Zipkin's '['. */
void span_batch_begin(jbuf *b, int fmt, const char *service_name);
/* Appends one span (the first of a batch when first is 1). */
void span_batch_add(jbuf *b, int fmt, const span_rec *r, const char *service_name, int first);
/* Closes the batch. 0, or -1 when memory ran out on the way. */
int span_batch_end(jbuf *b, int fmt);

/* The span's name: "METHOD ROUTE", or "METHOD" without a route; an
 * unknown method reads HTTP (OpenTelemetry's rule). Into out (cap bytes). */
size_t span_name(const span_rec *r, char *out, size_t cap);
/* 1 when the span's status is an error (5xx, no status at all, or 4xx on a
 * CLIENT span). */
int span_is_error(const span_rec *r);

#endif
