/*
 * propagation.c — parsing and writing W3C Trace Context and B3 (see
 * propagation.h). References: W3C Trace Context (Level 1, and Level 2's
 * rules for versions above 00), openzipkin/b3-propagation.
 */
#include "propagation.h"

#include <string.h>

static const char HEX[] = "0123456789abcdef";

/* 1 + the value of each lowercase hex digit; 0 for every other byte
 * (uppercase is not hex here). */
static const uint8_t HEXVAL1[256] = {
    ['0'] = 1, ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,  ['6'] = 7,  ['7'] = 8,
    ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/* Lowercase hex of n bytes into out (2n + 1 bytes, NUL-terminated). */
void tp_hex(char *out, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = HEX[b[i] >> 4];
        out[2 * i + 1] = HEX[b[i] & 15];
    }
    out[2 * n] = 0;
}

/* Reads 2n lowercase hex characters into b. 0, or -1. */
int tp_unhex(uint8_t *b, const char *s, size_t n)
{
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned hi = HEXVAL1[(unsigned char)s[2 * i]], lo = HEXVAL1[(unsigned char)s[2 * i + 1]];
        bad |= (hi == 0) | (lo == 0);
        b[i] = (uint8_t)((hi - 1) << 4 | ((lo - 1) & 15));
    }
    return bad ? -1 : 0;
}

/* 1 when every one of the n bytes is zero. */
int tp_all_zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

/* ---- traceparent ---- */

/* See propagation.h. */
int tp_traceparent_parse(const char *s, size_t n, tp_ctx *c)
{
    uint8_t ver, flags;
    if (!s || n < TP_TRACEPARENT_LEN) return -1;
    if (tp_unhex(&ver, s, 1) != 0 || ver == 0xff) return -1;
    if (s[2] != '-' || s[35] != '-' || s[52] != '-') return -1;
    if (ver == 0 && n != TP_TRACEPARENT_LEN) return -1; /* 00 with trailing data */
    if (n > TP_TRACEPARENT_LEN && s[TP_TRACEPARENT_LEN] != '-') return -1;
    tp_ctx v;
    memset(&v, 0, sizeof(v));
    if (tp_unhex(v.trace_id, s + 3, 16) != 0 || tp_unhex(v.span_id, s + 36, 8) != 0 ||
        tp_unhex(&flags, s + 53, 1) != 0)
        return -1;
    if (tp_all_zero(v.trace_id, 16) || tp_all_zero(v.span_id, 8)) return -1;
    v.has_ids = 1;
    v.sampled = flags & 1;
    *c = v;
    return 0;
}

/* See propagation.h. */
size_t tp_traceparent_format(char *out, const uint8_t trace_id[16], const uint8_t span_id[8], int sampled)
{
    out[0] = '0', out[1] = '0', out[2] = '-';
    tp_hex(out + 3, trace_id, 16);
    out[35] = '-';
    tp_hex(out + 36, span_id, 8);
    out[52] = '-';
    out[53] = '0';
    out[54] = sampled > 0 ? '1' : '0';
    out[55] = 0;
    return TP_TRACEPARENT_LEN;
}

/* ---- tracestate ---- */

static int lcalpha(unsigned char ch)
{
    return ch >= 'a' && ch <= 'z';
}
static int digit(unsigned char ch)
{
    return ch >= '0' && ch <= '9';
}
/* lcalpha / DIGIT / "_" / "-" / "*" / "/" */
static int keychar(unsigned char ch)
{
    return lcalpha(ch) || digit(ch) || ch == '_' || ch == '-' || ch == '*' || ch == '/';
}
/* nblk-chr = %x21-2B / %x2D-3C / %x3E-7E */
static int nblk(unsigned char ch)
{
    return ch >= 0x21 && ch <= 0x7e && ch != ',' && ch != '=';
}

/* Is k[0..n) a tracestate key (simple-key or tenant-id@system-id)? */
static int key_ok(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (!at) {
        if (n < 1 || n > 256 || !lcalpha((unsigned char)k[0])) return 0;
        for (size_t i = 1; i < n; i++)
            if (!keychar((unsigned char)k[i])) return 0;
        return 1;
    }
    size_t tn = (size_t)(at - k), sn = n - tn - 1;
    if (tn < 1 || tn > 241 || sn < 1 || sn > 14) return 0;
    if (!lcalpha((unsigned char)k[0]) && !digit((unsigned char)k[0])) return 0;
    for (size_t i = 1; i < tn; i++)
        if (!keychar((unsigned char)k[i])) return 0;
    if (!lcalpha((unsigned char)at[1])) return 0;
    for (size_t i = 1; i < sn; i++)
        if (!keychar((unsigned char)at[1 + i])) return 0;
    return 1;
}

/* Is v[0..n) a tracestate value (1..256 chars, no trailing space)? */
static int value_ok(const char *v, size_t n)
{
    if (n < 1 || n > 256 || !nblk((unsigned char)v[n - 1])) return 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (v[i] != ' ' && !nblk((unsigned char)v[i])) return 0;
    return 1;
}

typedef struct member {
    const char *p;
    size_t len, klen;
    int keep;
} member;

/* See propagation.h. */
int tp_tracestate_normalize(const char *s, size_t n, char *out, size_t cap, size_t *len)
{
    member m[TP_TRACESTATE_MAX_MEMBERS];
    size_t nm = 0;
    *len = 0;
    if (cap < TP_TRACESTATE_MAX_LEN + 1) return -1;
    out[0] = 0;
    if (!s || n > TP_TRACESTATE_MAX_INPUT) return -1;
    size_t i = 0;
    while (i <= n) {
        size_t e = i;
        while (e < n && s[e] != ',') e++;
        size_t a = i, b = e;
        while (a < b && (s[a] == ' ' || s[a] == '\t')) a++;
        while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) b--;
        if (b > a) {
            const char *eq = memchr(s + a, '=', b - a);
            if (!eq) return -1;
            size_t kl = (size_t)(eq - (s + a));
            if (!key_ok(s + a, kl) || !value_ok(eq + 1, b - a - kl - 1)) return -1;
            if (nm == TP_TRACESTATE_MAX_MEMBERS) return -1;
            for (size_t j = 0; j < nm; j++)
                if (m[j].klen == kl && memcmp(m[j].p, s + a, kl) == 0) return -1; /* repeated key */
            m[nm++] = (member){s + a, b - a, kl, 1};
        }
        i = e + 1;
    }
    /* total = members joined with ',' */
    size_t total = 0, kept = nm;
    for (size_t j = 0; j < nm; j++) total += m[j].len + (j ? 1 : 0);
    for (size_t j = nm; j-- > 0 && total > TP_TRACESTATE_MAX_LEN;) {
        if (m[j].len <= TP_TRACESTATE_BIG_MEMBER) continue;
        m[j].keep = 0;
        total -= m[j].len + (--kept ? 1 : 0);
    }
    for (size_t j = nm; j-- > 0 && total > TP_TRACESTATE_MAX_LEN;) {
        if (!m[j].keep) continue;
        m[j].keep = 0;
        total -= m[j].len + (--kept ? 1 : 0);
    }
    size_t o = 0;
    for (size_t j = 0; j < nm; j++) {
        if (!m[j].keep) continue;
        if (o) out[o++] = ',';
        memcpy(out + o, m[j].p, m[j].len);
        o += m[j].len;
    }
    out[o] = 0;
    *len = o;
    return 0;
}

/* ---- B3 ---- */

/* A 16 or 32 hex trace id into id (left-padded), not all zero. */
static int b3_trace(const char *s, size_t n, uint8_t id[16])
{
    memset(id, 0, 16);
    if (n == 32) {
        if (tp_unhex(id, s, 16) != 0) return -1;
    } else if (n == 16) {
        if (tp_unhex(id + 8, s, 8) != 0) return -1;
    } else {
        return -1;
    }
    return tp_all_zero(id, 16) ? -1 : 0;
}

/* A 16 hex span id, not all zero. */
static int b3_span(const char *s, size_t n, uint8_t id[8])
{
    if (n != 16 || tp_unhex(id, s, 8) != 0) return -1;
    return tp_all_zero(id, 8) ? -1 : 0;
}

/* "1", "0", "d" into c. */
static int b3_state(char ch, tp_ctx *c)
{
    switch (ch) {
    case '0': c->sampled = 0; return 0;
    case '1': c->sampled = 1; return 0;
    case 'd': c->sampled = 1, c->debug = 1; return 0;
    default: return -1;
    }
}

/* See propagation.h. */
int tp_b3_parse(const char *s, size_t n, tp_ctx *c)
{
    tp_ctx v;
    memset(&v, 0, sizeof(v));
    v.sampled = -1;
    if (!s || n == 0) return -1;
    if (n == 1) {
        if (b3_state(s[0], &v) != 0) return -1;
        *c = v;
        return 0;
    }
    const char *dash = memchr(s, '-', n);
    if (!dash) return -1;
    size_t tl = (size_t)(dash - s);
    if (b3_trace(s, tl, v.trace_id) != 0) return -1;
    size_t rest = n - tl - 1;
    const char *p = dash + 1;
    if (rest < 16 || b3_span(p, 16, v.span_id) != 0) return -1;
    p += 16, rest -= 16;
    if (rest) {
        if (rest < 2 || p[0] != '-' || b3_state(p[1], &v) != 0) return -1;
        p += 2, rest -= 2;
        if (rest) {
            uint8_t parent[8];
            if (rest != 17 || p[0] != '-' || b3_span(p + 1, 16, parent) != 0) return -1;
        }
    }
    v.has_ids = 1;
    *c = v;
    return 0;
}

static int eq(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && memcmp(s, lit, l) == 0;
}

/* See propagation.h. */
int tp_b3_multi_parse(const char *trace, size_t trace_n, const char *span, size_t span_n, const char *parent,
                      size_t parent_n, const char *sampled, size_t sampled_n, const char *flags,
                      size_t flags_n, tp_ctx *c)
{
    tp_ctx v;
    memset(&v, 0, sizeof(v));
    v.sampled = -1;
    if (!trace && !span && !sampled && !flags) return -1;
    if (!trace != !span) return -1;
    if (trace) {
        uint8_t p[8];
        if (b3_trace(trace, trace_n, v.trace_id) != 0 || b3_span(span, span_n, v.span_id) != 0) return -1;
        if (parent && b3_span(parent, parent_n, p) != 0) return -1;
        v.has_ids = 1;
    }
    if (sampled) {
        if (eq(sampled, sampled_n, "1") || eq(sampled, sampled_n, "true"))
            v.sampled = 1;
        else if (eq(sampled, sampled_n, "0") || eq(sampled, sampled_n, "false"))
            v.sampled = 0;
        else
            return -1;
    }
    if (flags) {
        if (eq(flags, flags_n, "1"))
            v.debug = 1, v.sampled = 1;
        else if (!eq(flags, flags_n, "0"))
            return -1;
    }
    *c = v;
    return 0;
}

/* See propagation.h. */
size_t tp_b3_format(char *out, const uint8_t trace_id[16], const uint8_t span_id[8], const uint8_t *parent_id,
                    int sampled, int debug)
{
    tp_hex(out, trace_id, 16);
    out[32] = '-';
    tp_hex(out + 33, span_id, 8);
    out[49] = '-';
    out[50] = debug ? 'd' : sampled > 0 ? '1' : '0';
    size_t n = 51;
    if (parent_id) {
        out[n++] = '-';
        tp_hex(out + n, parent_id, 8);
        n += 16;
    }
    out[n] = 0;
    return n;
}

/* ---- sampling ---- */

/* See propagation.h. */
uint64_t tp_ratio_bound(double ratio)
{
    if (!(ratio > 0)) return 0;
    if (ratio >= 1) return UINT64_C(1) << 63;
    return (uint64_t)(ratio * 9223372036854775808.0); /* 2^63 */
}

/* See propagation.h. */
int tp_ratio_sampled(const uint8_t trace_id[16], uint64_t bound)
{
    uint64_t x = 0;
    for (int i = 8; i < 16; i++) x = x << 8 | trace_id[i];
    return (x >> 1) < bound;
}
