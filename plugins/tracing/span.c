/*
 * span.c — span records (see span.h) and their JSON: OTLP/HTTP JSON
 * (opentelemetry-proto's JSON mapping: ids as lowercase hex, 64-bit
 * integers and times as decimal strings, enums as integers) and Zipkin v2
 * (ids as hex, times and durations as integer microseconds).
 */
#include "span.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "propagation.h"

/* Bytes kept of each string (span.h order). The sum, plus the fixed part and
 * padding, stays within SPAN_REC_MAX. */
const uint16_t span_str_max[S_NSTR] = {
    [S_METHOD] = 32, [S_ROUTE] = 128,      [S_PATH] = 1024,      [S_AUTHORITY] = 256,
    [S_CLIENT] = 64, [S_ENDPOINT] = 64,    [S_USER_AGENT] = 256, [S_IDENTITY] = 512,
    [S_REASON] = 64, [S_TRACESTATE] = 512, [S_SCHEME] = 8,
};

/* ---- records ---- */

/* Bytes of the strings added so far. */
static size_t used(const span_rec *r)
{
    size_t n = 0;
    for (int i = 0; i < S_NSTR; i++) n += r->len[i];
    return n;
}

/* See span.h. */
void span_put(span_rec *r, enum span_str i, const char *s, size_t n)
{
    if (!s) n = 0;
    if (n > span_str_max[i]) n = span_str_max[i];
    char *at = (char *)(r + 1) + used(r);
    if (n) memcpy(at, s, n);
    r->len[i] = (uint16_t)n;
}

/* See span.h. */
uint32_t span_end(span_rec *r)
{
    size_t n = sizeof(*r) + used(r);
    r->size = (uint32_t)((n + 7) & ~(size_t)7);
    return r->size;
}

/* See span.h. */
const char *span_get(const span_rec *r, enum span_str i, size_t *n)
{
    const char *p = (const char *)(r + 1);
    for (int j = 0; j < (int)i; j++) p += r->len[j];
    *n = r->len[i];
    return p;
}

/* ---- the JSON buffer ---- */

void jbuf_free(jbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

static int reserve(jbuf *b, size_t n)
{
    if (b->oom) return -1;
    if (b->len + n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline void put(jbuf *b, const char *s, size_t n)
{
    if (b->len + n > b->cap && reserve(b, n) != 0) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

#define LIT(b, s) put((b), (s), sizeof(s) - 1)

static void put_u64(jbuf *b, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(b, tmp + i, sizeof(tmp) - i);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned min, cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2, min = 0x80, cp = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3, min = 0x800, cp = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4, min = 0x10000, cp = s[0] & 0x07;
    else
        return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* A JSON string with quotes: valid UTF-8 passes, control characters are
 * \u-escaped, bytes that are not UTF-8 become U+FFFD. */
static void put_str(jbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    LIT(b, "\"");
    size_t start = 0;
    for (size_t i = 0; i < n;) {
        unsigned char ch = u[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch < 0x7f) {
            i++;
            continue;
        }
        if (ch >= 0x80) {
            size_t l = utf8_len(u + i, n - i);
            if (l) {
                i += l;
                continue;
            }
        }
        put(b, s + start, i - start);
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            put(b, esc, 2);
        } else if (ch >= 0x80) {
            LIT(b, "\\ufffd");
        } else {
            char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            put(b, esc, 6);
        }
        start = ++i;
    }
    put(b, s + start, n - start);
    LIT(b, "\"");
}

static void put_cstr(jbuf *b, const char *s)
{
    put_str(b, s, strlen(s));
}

static void put_hex(jbuf *b, const uint8_t *id, size_t n)
{
    char tmp[33];
    tp_hex(tmp, id, n);
    LIT(b, "\"");
    put(b, tmp, 2 * n);
    LIT(b, "\"");
}

/* ---- what both formats say ---- */

static const char *const known_methods[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
                                            "CONNECT", "OPTIONS", "TRACE", "PATCH", NULL};

static int method_known(const char *m, size_t n)
{
    for (const char *const *k = known_methods; *k; k++)
        if (strlen(*k) == n && memcmp(*k, m, n) == 0) return 1;
    return 0;
}

/* See span.h. */
size_t span_name(const span_rec *r, char *out, size_t cap)
{
    size_t mn, rn, n = 0;
    const char *m = span_get(r, S_METHOD, &mn);
    const char *rt = span_get(r, S_ROUTE, &rn);
    if (!method_known(m, mn)) m = "HTTP", mn = 4;
    if (cap == 0) return 0;
    if (mn > cap - 1) mn = cap - 1;
    memcpy(out, m, mn);
    n = mn;
    if (rn && n + 1 < cap) {
        out[n++] = ' ';
        if (rn > cap - 1 - n) rn = cap - 1 - n;
        memcpy(out + n, rt, rn);
        n += rn;
    }
    out[n] = 0;
    return n;
}

/* See span.h. */
int span_is_error(const span_rec *r)
{
    if (r->status == 0 || r->status >= 500) return 1;
    return r->kind == SPAN_CLIENT && r->status >= 400;
}

/* error.type: the reason of a local reply, else the status code. */
static size_t error_type(const span_rec *r, char *out, size_t cap)
{
    size_t n;
    const char *reason = span_get(r, S_REASON, &n);
    if (n) {
        if (n >= cap) n = cap - 1;
        memcpy(out, reason, n);
        out[n] = 0;
        return n;
    }
    if (!r->status) return (size_t)snprintf(out, cap, "_OTHER");
    return (size_t)snprintf(out, cap, "%u", r->status);
}

/* The address and port of "ip:port" / "[v6]:port": *a, *an and the port. */
static unsigned split_hostport(const char *s, size_t n, const char **a, size_t *an)
{
    *a = s, *an = n;
    size_t colon = n;
    while (colon > 0 && s[colon - 1] != ':') colon--;
    if (!colon) return 0;
    unsigned port = 0;
    for (size_t i = colon; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || port > 65535) return 0;
        port = port * 10 + (unsigned)(s[i] - '0');
    }
    size_t hl = colon - 1;
    if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']')
        *a = s + 1, *an = hl - 2;
    else
        *an = hl;
    return port <= 65535 ? port : 0;
}

/* One attribute: a name and a string or an integer value. The two formats
 * walk the same list (OTLP attributes, Zipkin tags). */
typedef struct attr {
    const char *key; /* a constant name: needs no escaping */
    size_t klen;
    const char *s; /* string value, or NULL for an integer */
    size_t n;
    uint64_t i;
} attr;

#define MAX_ATTRS 24

static size_t attributes(const span_rec *r, attr *a, char *errbuf, size_t errcap)
{
    size_t k = 0, n;
    const char *s;
#define ADD_S(name, ptr, len) a[k++] = (attr){(name), sizeof(name) - 1, (ptr), (len), 0}
#define ADD_I(name, val)                         \
    a[k++] = (attr)                              \
    {                                            \
        (name), sizeof(name) - 1, NULL, 0, (val) \
    }
    s = span_get(r, S_METHOD, &n);
    if (method_known(s, n)) {
        ADD_S("http.request.method", s, n);
    } else {
        ADD_S("http.request.method", "_OTHER", 6);
        ADD_S("http.request.method_original", s, n);
    }
    if (r->status) ADD_I("http.response.status_code", r->status);
    s = span_get(r, S_PATH, &n);
    ADD_S("url.path", s, n);
    s = span_get(r, S_SCHEME, &n);
    if (n) ADD_S("url.scheme", s, n);
    s = span_get(r, S_AUTHORITY, &n);
    if (n) ADD_S("server.address", s, n);
    if (r->server_port) ADD_I("server.port", r->server_port);
    const char *client = span_get(r, S_CLIENT, &n);
    size_t cn = n;
    if (cn) ADD_S("client.address", client, cn);
    size_t en;
    const char *ep = span_get(r, S_ENDPOINT, &en);
    if (r->kind == SPAN_CLIENT) {
        if (en) {
            const char *ip;
            size_t ipn;
            unsigned port = split_hostport(ep, en, &ip, &ipn);
            ADD_S("network.peer.address", ip, ipn);
            if (port) ADD_I("network.peer.port", port);
        }
    } else if (cn) {
        ADD_S("network.peer.address", client, cn);
    }
    s = span_get(r, S_ROUTE, &n);
    if (n) ADD_S("http.route", s, n);
    s = span_get(r, S_USER_AGENT, &n);
    if (n) ADD_S("user_agent.original", s, n);
    ADD_I("http.request.size", r->bytes_in);
    ADD_I("http.response.size", r->bytes_out);
    if (r->kind == SPAN_CLIENT && r->attempts > 1) ADD_I("http.request.resend_count", r->attempts - 1);
    if (span_is_error(r)) {
        size_t el = error_type(r, errbuf, errcap);
        ADD_S("error.type", errbuf, el);
    }
    ADD_I("sidekick.attempts", r->attempts);
    if (en) ADD_S("sidekick.upstream.address", ep, en);
    s = span_get(r, S_REASON, &n);
    if (n) ADD_S("sidekick.reason", s, n);
    s = span_get(r, S_IDENTITY, &n);
    if (n) ADD_S("sidekick.peer.identity", s, n);
    if (r->generation) ADD_I("sidekick.generation", r->generation);
#undef ADD_S
#undef ADD_I
    return k;
}

/* ---- OTLP ---- */

static void otlp_span(jbuf *b, const span_rec *r)
{
    char name[200], err[80];
    attr a[MAX_ATTRS];
    size_t n;
    LIT(b, "{\"traceId\":");
    put_hex(b, r->trace_id, 16);
    LIT(b, ",\"spanId\":");
    put_hex(b, r->span_id, 8);
    if (r->has_parent) {
        LIT(b, ",\"parentSpanId\":");
        put_hex(b, r->parent_id, 8);
    }
    const char *ts = span_get(r, S_TRACESTATE, &n);
    if (n) {
        LIT(b, ",\"traceState\":");
        put_str(b, ts, n);
    }
    LIT(b, ",\"name\":");
    put_str(b, name, span_name(r, name, sizeof(name)));
    LIT(b, ",\"kind\":");
    put_u64(b, r->kind == SPAN_CLIENT ? 3 : 2); /* SPAN_KIND_CLIENT = 3, SPAN_KIND_SERVER = 2 */
    LIT(b, ",\"startTimeUnixNano\":\"");
    put_u64(b, r->start_ns);
    LIT(b, "\",\"endTimeUnixNano\":\"");
    put_u64(b, r->end_ns);
    LIT(b, "\",\"attributes\":[");
    size_t na = attributes(r, a, err, sizeof(err));
    for (size_t i = 0; i < na; i++) {
        if (i) LIT(b, ",");
        LIT(b, "{\"key\":\"");
        put(b, a[i].key, a[i].klen);
        if (a[i].s) {
            LIT(b, "\",\"value\":{\"stringValue\":");
            put_str(b, a[i].s, a[i].n);
            LIT(b, "}}");
        } else {
            LIT(b, "\",\"value\":{\"intValue\":\"");
            put_u64(b, a[i].i);
            LIT(b, "\"}}");
        }
    }
    LIT(b, "]");
    if (r->connect_ns || r->first_byte_ns) {
        LIT(b, ",\"events\":[");
        if (r->connect_ns) {
            LIT(b, "{\"timeUnixNano\":\"");
            put_u64(b, r->connect_ns);
            LIT(b, "\",\"name\":\"upstream_connect\"}");
        }
        if (r->first_byte_ns) {
            if (r->connect_ns) LIT(b, ",");
            LIT(b, "{\"timeUnixNano\":\"");
            put_u64(b, r->first_byte_ns);
            LIT(b, "\",\"name\":\"upstream_first_byte\"}");
        }
        LIT(b, "]");
    }
    /* STATUS_CODE_UNSET = 0, STATUS_CODE_ERROR = 2; HTTP spans never set OK */
    if (span_is_error(r))
        LIT(b, ",\"status\":{\"code\":2}}");
    else
        LIT(b, ",\"status\":{\"code\":0}}");
}

/* ---- Zipkin v2 ---- */

static void zipkin_endpoint_ip(jbuf *b, const char *ip, size_t n)
{
    if (memchr(ip, ':', n))
        LIT(b, "\"ipv6\":");
    else
        LIT(b, "\"ipv4\":");
    put_str(b, ip, n);
}

static void zipkin_span(jbuf *b, const span_rec *r, const char *service)
{
    char name[200], err[80];
    attr a[MAX_ATTRS];
    size_t n;
    LIT(b, "{\"traceId\":");
    put_hex(b, r->trace_id, 16);
    LIT(b, ",\"id\":");
    put_hex(b, r->span_id, 8);
    if (r->has_parent) {
        LIT(b, ",\"parentId\":");
        put_hex(b, r->parent_id, 8);
    }
    LIT(b, ",\"kind\":");
    LIT(b, "\"");
    if (r->kind == SPAN_CLIENT)
        LIT(b, "CLIENT");
    else
        LIT(b, "SERVER");
    LIT(b, "\",\"name\":");
    put_str(b, name, span_name(r, name, sizeof(name)));
    uint64_t us = r->start_ns / 1000;
    uint64_t dur = r->end_ns > r->start_ns ? (r->end_ns - r->start_ns) / 1000 : 0;
    LIT(b, ",\"timestamp\":");
    put_u64(b, us);
    LIT(b, ",\"duration\":");
    put_u64(b, dur ? dur : 1);
    LIT(b, ",\"localEndpoint\":{\"serviceName\":");
    put_cstr(b, service);
    LIT(b, "}");
    const char *ip = NULL;
    size_t ipn = 0;
    unsigned port = 0;
    if (r->kind == SPAN_CLIENT) {
        const char *ep = span_get(r, S_ENDPOINT, &n);
        if (n) port = split_hostport(ep, n, &ip, &ipn);
    } else {
        ip = span_get(r, S_CLIENT, &ipn);
    }
    if (ip && ipn) {
        LIT(b, ",\"remoteEndpoint\":{");
        zipkin_endpoint_ip(b, ip, ipn);
        if (port) {
            LIT(b, ",\"port\":");
            put_u64(b, port);
        }
        LIT(b, "}");
    }
    if (r->connect_ns || r->first_byte_ns) {
        LIT(b, ",\"annotations\":[");
        if (r->connect_ns) {
            LIT(b, "{\"timestamp\":");
            put_u64(b, r->connect_ns / 1000);
            LIT(b, ",\"value\":\"upstream_connect\"}");
        }
        if (r->first_byte_ns) {
            if (r->connect_ns) LIT(b, ",");
            LIT(b, "{\"timestamp\":");
            put_u64(b, r->first_byte_ns / 1000);
            LIT(b, ",\"value\":\"upstream_first_byte\"}");
        }
        LIT(b, "]");
    }
    LIT(b, ",\"tags\":{");
    size_t na = attributes(r, a, err, sizeof(err));
    for (size_t i = 0; i < na; i++) {
        if (i) LIT(b, ",");
        LIT(b, "\"");
        put(b, a[i].key, a[i].klen);
        LIT(b, "\":");
        if (a[i].s) {
            put_str(b, a[i].s, a[i].n);
        } else {
            LIT(b, "\"");
            put_u64(b, a[i].i);
            LIT(b, "\"");
        }
    }
    /* OpenTelemetry's Zipkin mapping: the status as otel.status_code, and
     * an "error" tag on errors */
    if (span_is_error(r)) {
        LIT(b, ",\"otel.status_code\":\"ERROR\",\"error\":");
        put_cstr(b, err);
    }
    size_t tn;
    const char *ts = span_get(r, S_TRACESTATE, &tn);
    if (tn) {
        LIT(b, ",\"w3c.tracestate\":");
        put_str(b, ts, tn);
    }
    LIT(b, "}}");
}

/* ---- batches ---- */

/* See span.h. */
void span_batch_begin(jbuf *b, int fmt, const char *service_name)
{
    b->len = 0;
    b->oom = 0;
    if (fmt == FMT_ZIPKIN) {
        LIT(b, "[");
        return;
    }
    LIT(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{"
           "\"stringValue\":");
    put_cstr(b, service_name);
    LIT(b, "}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"sidekick.tracing\",\"version\":\"1\"},\"spans\":[");
}

/* See span.h. */
void span_batch_add(jbuf *b, int fmt, const span_rec *r, const char *service_name, int first)
{
    if (!first) LIT(b, ",");
    if (fmt == FMT_ZIPKIN)
        zipkin_span(b, r, service_name);
    else
        otlp_span(b, r);
}

/* See span.h. */
int span_batch_end(jbuf *b, int fmt)
{
    if (fmt == FMT_ZIPKIN)
        LIT(b, "]");
    else
        LIT(b, "]}]}]}");
    return b->oom ? -1 : 0;
}
