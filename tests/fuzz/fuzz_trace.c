/*
 * fuzz_trace.c — libFuzzer target for tracing.so's wire formats:
 * plugins/tracing/propagation.c (traceparent, tracestate, b3, X-B3-*) and
 * plugins/tracing/span.c (a span record and its OTLP and Zipkin JSON),
 * linked alone (no sidekick core).
 *
 * The whole input is tried as a traceparent, a tracestate and a b3 value;
 * its '\n'-separated parts as the five X-B3-* headers and as the strings
 * of a span record. Aborts when:
 *  - a parsed traceparent or b3 value, written back and parsed again, gives
 *    other ids or another decision, or is not 55 / 51+ characters;
 *  - an accepted id is all zero, or a 64-bit b3 trace id is not padded;
 *  - a normalised tracestate is longer than 512 characters, has more than
 *    32 members, or changes when normalised again;
 *  - a span's OTLP or Zipkin body is not valid JSON (jansson) or not the
 *    shape expected (one span, its ids as given).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "propagation.h"
#include "span.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_trace: %s\n", what);
        abort();
    }
}

static void same_ctx(const tp_ctx *a, const tp_ctx *b, const char *what)
{
    check(!memcmp(a->trace_id, b->trace_id, 16) && !memcmp(a->span_id, b->span_id, 8), what);
}

static void try_traceparent(const char *s, size_t n)
{
    tp_ctx c, d;
    if (tp_traceparent_parse(s, n, &c) != 0) return;
    check(c.has_ids && !tp_all_zero(c.trace_id, 16) && !tp_all_zero(c.span_id, 8), "traceparent: zero id");
    check(!(s[0] == 'f' && s[1] == 'f'), "traceparent: version ff accepted");
    check(n == TP_TRACEPARENT_LEN || !(s[0] == '0' && s[1] == '0'), "traceparent: 00 with trailing data");
    char out[TP_TRACEPARENT_LEN + 1];
    check(tp_traceparent_format(out, c.trace_id, c.span_id, c.sampled) == TP_TRACEPARENT_LEN &&
              strlen(out) == TP_TRACEPARENT_LEN,
          "traceparent: written length");
    check(tp_traceparent_parse(out, TP_TRACEPARENT_LEN, &d) == 0, "traceparent: own output refused");
    same_ctx(&c, &d, "traceparent: round trip ids");
    check(c.sampled == d.sampled, "traceparent: round trip flag");
}

static void try_tracestate(const char *s, size_t n)
{
    char out[TP_TRACESTATE_MAX_LEN + 1], again[TP_TRACESTATE_MAX_LEN + 1];
    size_t len, len2;
    if (tp_tracestate_normalize(s, n, out, sizeof(out), &len) != 0) return;
    check(len <= TP_TRACESTATE_MAX_LEN && strlen(out) == len, "tracestate: too long");
    size_t members = len ? 1 : 0;
    for (size_t i = 0; i < len; i++) members += out[i] == ',';
    check(members <= TP_TRACESTATE_MAX_MEMBERS, "tracestate: too many members");
    check(tp_tracestate_normalize(out, len, again, sizeof(again), &len2) == 0,
          "tracestate: own output refused");
    check(len == len2 && !memcmp(out, again, len), "tracestate: not idempotent");
}

static void b3_round_trip(const tp_ctx *c, const char *what)
{
    char out[80];
    tp_ctx d;
    uint8_t parent[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    size_t n = tp_b3_format(out, c->trace_id, c->span_id, parent, c->sampled, c->debug);
    check(n == strlen(out) && n == 68, what);
    check(tp_b3_parse(out, n, &d) == 0, what);
    same_ctx(c, &d, what);
    if (c->sampled >= 0) check(d.sampled == c->sampled && d.debug == c->debug, what);
}

static void try_b3(const char *s, size_t n)
{
    tp_ctx c;
    if (tp_b3_parse(s, n, &c) != 0) return;
    if (!c.has_ids) {
        check(n == 1 && c.sampled >= 0, "b3: a decision alone");
        return;
    }
    check(!tp_all_zero(c.trace_id, 16) && !tp_all_zero(c.span_id, 8), "b3: zero id");
    const char *dash = memchr(s, '-', n);
    if (dash && dash - s == 16) check(tp_all_zero(c.trace_id, 8), "b3: 64-bit id not padded");
    b3_round_trip(&c, "b3: round trip");
}

static void try_span(const char *const *part, const size_t *len, size_t nparts, const uint8_t *data,
                     size_t size)
{
    static union {
        span_rec rec;
        char bytes[SPAN_REC_MAX];
    } u;
    span_rec *r = &u.rec;
    memset(r, 0, sizeof(*r));
    for (size_t i = 0; i < 16; i++) r->trace_id[i] = (uint8_t)(i < size ? data[i] : i + 1);
    r->trace_id[15] |= 1;
    for (size_t i = 0; i < 8; i++) r->span_id[i] = (uint8_t)(i + 1);
    r->has_parent = size > 0 && (data[0] & 1);
    memset(r->parent_id, 0xab, 8);
    r->kind = size > 0 && (data[0] & 2) ? SPAN_CLIENT : SPAN_SERVER;
    r->status = (uint16_t)(size > 1 ? data[1] * 3 : 0);
    r->start_ns = 1700000000000000000ull;
    r->end_ns = r->start_ns + (size > 2 ? data[2] : 0);
    r->connect_ns = size > 3 && (data[3] & 1) ? r->start_ns + 1 : 0;
    r->first_byte_ns = size > 3 && (data[3] & 2) ? r->start_ns + 2 : 0;
    r->attempts = size > 4 ? data[4] : 0;
    r->server_port = 8080;
    for (int i = 0; i < S_NSTR; i++)
        span_put(r, (enum span_str)i, (size_t)i < nparts ? part[i] : NULL, (size_t)i < nparts ? len[i] : 0);
    check(span_end(r) <= SPAN_REC_MAX && r->size % 8 == 0, "span: record size");
    for (int fmt = 0; fmt < 2; fmt++) {
        jbuf b = {0};
        span_batch_begin(&b, fmt, "fuzz \"service\"\n");
        span_batch_add(&b, fmt, r, "fuzz \"service\"\n", 1);
        check(span_batch_end(&b, fmt) == 0, "span: out of memory");
        json_error_t e;
        json_t *doc = json_loadb(b.p, b.len, JSON_ALLOW_NUL, &e);
        if (!doc) fprintf(stderr, "%.*s\n%s\n", (int)b.len, b.p, e.text);
        check(doc != NULL, "span: body is not JSON");
        json_t *span;
        if (fmt == FMT_ZIPKIN) {
            check(json_is_array(doc) && json_array_size(doc) == 1, "zipkin: one span");
            span = json_array_get(doc, 0);
            check(json_integer_value(json_object_get(span, "duration")) >= 1, "zipkin: duration < 1");
            check(strlen(json_string_value(json_object_get(span, "id"))) == 16, "zipkin: id");
        } else {
            json_t *spans = json_object_get(
                json_array_get(
                    json_object_get(json_array_get(json_object_get(doc, "resourceSpans"), 0), "scopeSpans"),
                    0),
                "spans");
            check(json_is_array(spans) && json_array_size(spans) == 1, "otlp: one span");
            span = json_array_get(spans, 0);
            check(json_is_string(json_object_get(span, "startTimeUnixNano")), "otlp: times as strings");
            check(strlen(json_string_value(json_object_get(span, "spanId"))) == 16, "otlp: spanId");
        }
        check(strlen(json_string_value(json_object_get(span, "traceId"))) == 32, "traceId");
        json_decref(doc);
        jbuf_free(&b);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    try_traceparent(s, size);
    try_tracestate(s, size);
    try_b3(s, size);

    const char *part[S_NSTR];
    size_t len[S_NSTR], n = 0, start = 0;
    for (size_t i = 0; i <= size && n < S_NSTR; i++)
        if (i == size || s[i] == '\n') {
            part[n] = s + start;
            len[n++] = i - start;
            start = i + 1;
        }
    /* X-B3-*: a part "-" is an absent header */
    const char *x[5];
    size_t xl[5];
    for (int i = 0; i < 5; i++) {
        int absent = (size_t)i >= n || (len[i] == 1 && part[i][0] == '-');
        x[i] = absent ? NULL : part[i];
        xl[i] = absent ? 0 : len[i];
    }
    tp_ctx c;
    if (tp_b3_multi_parse(x[0], xl[0], x[1], xl[1], x[2], xl[2], x[3], xl[3], x[4], xl[4], &c) == 0 &&
        c.has_ids) {
        check(!tp_all_zero(c.trace_id, 16) && !tp_all_zero(c.span_id, 8), "x-b3: zero id");
        b3_round_trip(&c, "x-b3: round trip");
    }
    try_span(part, len, n, data, size);
    return 0;
}
