/*
 * propagation.h — trace context on the wire: W3C Trace Context
 * (traceparent, tracestate) and B3 (the single `b3` header and the
 * X-B3-* headers). Pure functions over byte strings, no allocation, no
 * sidekick types: tracing.c calls them with header values, and
 * tests/fuzz/fuzz_trace.c links this file alone.
 *
 * Every parser is strict: lowercase hex only, exact lengths, no all-zero
 * ids. A value that does not parse yields no context (the caller starts a
 * new trace and never forwards it).
 */
#ifndef SK_TRACING_PROPAGATION_H
#define SK_TRACING_PROPAGATION_H

#include <stddef.h>
#include <stdint.h>

/* W3C limits of tracestate (Trace Context, section 3.3). */
#define TP_TRACESTATE_MAX_MEMBERS 32
#define TP_TRACESTATE_MAX_LEN     512  /* characters kept (the spec's "at least 512") */
#define TP_TRACESTATE_BIG_MEMBER  128  /* members longer than this go first when cutting */
#define TP_TRACESTATE_MAX_INPUT   8192 /* combined header bytes considered at all */

#define TP_TRACEPARENT_LEN 55 /* "00-" 32 "-" 16 "-" 2 */

/* A trace context read from a request. */
typedef struct tp_ctx {
    uint8_t trace_id[16]; /* 128 bits; a 64-bit B3 id is left-padded with zeros */
    uint8_t span_id[8];   /* the caller's span: our span's parent */
    int has_ids;          /* 0 for a B3 sampling decision alone ("b3: 0") */
    int sampled;          /* 1, 0, or -1 when the sender left the decision to us (B3 only) */
    int debug;            /* B3 debug ("d", X-B3-Flags: 1); implies sampled = 1 */
} tp_ctx;

/*
 * traceparent: "VV-TRACEID-PARENTID-FLAGS". Version ff is invalid; version
 * 00 must be exactly 55 characters; a higher version may carry more fields
 * after a '-' at offset 55, which are ignored (parsed by its first four).
 * Ids are lowercase hex and not all zero. 0 and *c filled, or -1.
 */
int tp_traceparent_parse(const char *s, size_t n, tp_ctx *c);

/* Writes version 00 with the sampled flag into out (TP_TRACEPARENT_LEN + 1
 * bytes, NUL-terminated). Returns TP_TRACEPARENT_LEN. */
size_t tp_traceparent_format(char *out, const uint8_t trace_id[16], const uint8_t span_id[8], int sampled);

/*
 * tracestate (the values of every tracestate header joined with ','): the
 * list-members are checked against the W3C grammar (keys simple or
 * tenant@system, values of printable ASCII without ',' and '=', at most
 * 256 characters, no trailing space), empty members and whitespace around
 * members are dropped. A member that does not parse, a repeated key, more
 * than TP_TRACESTATE_MAX_MEMBERS members or an input longer than
 * TP_TRACESTATE_MAX_INPUT makes the whole list invalid: -1. Otherwise the
 * members are written joined with ',' into out (cap bytes, at least
 * TP_TRACESTATE_MAX_LEN + 1, NUL-terminated), cut to TP_TRACESTATE_MAX_LEN
 * characters the W3C way (members longer than TP_TRACESTATE_BIG_MEMBER are
 * dropped first, then members from the end), *len set (0 = nothing left);
 * returns 0. Normalising its own output gives the same output.
 */
int tp_tracestate_normalize(const char *s, size_t n, char *out, size_t cap, size_t *len);

/*
 * b3 single header: "TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]" with a 16 or
 * 32 hex trace id, a 16 hex span id, SAMPLED one of 1, 0, d; or a sampling
 * decision alone: "1", "0", "d" (has_ids 0). No sampling state = the
 * decision is ours (sampled -1). 0 and *c filled, or -1.
 */
int tp_b3_parse(const char *s, size_t n, tp_ctx *c);

/*
 * X-B3-* headers, each given as (pointer, length), pointer NULL when the
 * header is absent: TraceId (16 or 32 hex) and SpanId (16 hex) together or
 * not at all, ParentSpanId (16 hex, checked, not used), Sampled ("1", "0",
 * "true", "false"), Flags ("1" = debug, "0"). Anything else makes the whole
 * set invalid. All absent: -1 (no context). 0 and *c filled, or -1.
 */
int tp_b3_multi_parse(const char *trace, size_t trace_n, const char *span, size_t span_n, const char *parent,
                      size_t parent_n, const char *sampled, size_t sampled_n, const char *flags,
                      size_t flags_n, tp_ctx *c);

/* Writes "TRACEID32-SPANID-S[-PARENTID]" (S = 1, 0 or d) into out (at
 * least 70 bytes), NUL-terminated; parent may be NULL. Returns the length. */
size_t tp_b3_format(char *out, const uint8_t trace_id[16], const uint8_t span_id[8], const uint8_t *parent_id,
                    int sampled, int debug);

/* Lowercase hex of n bytes into out (2n + 1 bytes, NUL-terminated). */
void tp_hex(char *out, const uint8_t *b, size_t n);
/* Reads 2n lowercase hex characters into b. 0, or -1. */
int tp_unhex(uint8_t *b, const char *s, size_t n);
/* 1 when every one of the n bytes is zero. */
int tp_all_zero(const uint8_t *b, size_t n);

/* The ratio sampler of OpenTelemetry (TraceIdRatioBased): a trace is
 * sampled when its id's last 8 bytes, big-endian and shifted right by one,
 * are below tp_ratio_bound(ratio). Deterministic: every sidecar using the
 * same ratio takes the same decision for a trace. */
uint64_t tp_ratio_bound(double ratio);
int tp_ratio_sampled(const uint8_t trace_id[16], uint64_t bound);

#endif
