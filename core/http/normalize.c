/*
 * normalize.c — request path normalisation (RFC 3986 §5.2.4 dot segments,
 * §6.2.2 percent-encoding, optional slash merging, the encoded-slash
 * policy) and authority validation (Host, absolute-form targets). See
 * normalize.h for the contract and DESIGN.md "Request normalisation" for
 * why: every path-based rule (routes, rewrite, auth, Lua) must see the path
 * the upstream will resolve, or a deny is bypassed with "/public/../admin".
 */
#include <arpa/inet.h>
#include <string.h>

#include "normalize.h"

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_unreserved(unsigned char c)
{
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static bool is_sub_delim(unsigned char c)
{
    return c && strchr("!$&'()*+,;=", c) != NULL;
}

/* Does a "." or ".." segment start at p (just after a "/")? */
static bool dot_segment_at(const char *p, const char *end)
{
    if (p >= end || *p != '.') return false;
    p++;
    if (p < end && *p == '.') p++;
    return p == end || *p == '/';
}

/* See normalize.h. */
bool sk_path_is_normal(const char *path, size_t len, unsigned flags)
{
    const char *end = path + len;
    if (len == 0 || path[0] != '/') return false;
    if (memchr(path, '%', len)) return false;
    for (const char *p = path; p < end; p++) {
        if (*p != '/') continue;
        if (dot_segment_at(p + 1, end)) return false;
        if ((flags & SK_PATH_MERGE_SLASHES) && p + 1 < end && p[1] == '/') return false;
    }
    return true;
}

/* Is there a separator at in[i]: "/", or %2F when it is decoded? Returns its length, or 0. */
static size_t separator_at(const char *in, size_t len, size_t i, unsigned flags)
{
    if (in[i] == '/') return 1;
    if ((flags & SK_PATH_DECODE_SLASHES) && in[i] == '%' && i + 2 < len && in[i + 1] == '2' &&
        (in[i + 2] == 'f' || in[i + 2] == 'F'))
        return 3;
    return 0;
}

/* See normalize.h. */
int sk_path_normalize(const char *path, size_t len, unsigned flags, char *out, const char **res,
                      size_t *res_len)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len == 0 || path[0] != '/') return SK_PATH_ENOTABS;
    if (sk_path_is_normal(path, len, flags)) {
        *res = path;
        *res_len = len;
        return 0;
    }
    /* One pass over the segments: each is decoded into out after its "/",
     * then dropped (".", an empty one when merging) or, for "..", dropped
     * together with the segment before it. out never overtakes the input:
     * every output byte comes from at least one input byte. */
    size_t i = 0, o = 0;
    while (i < len) {
        i += separator_at(path, len, i, flags); /* i < len here is always at a separator */
        size_t seg = o;
        out[o++] = '/';
        while (i < len && !separator_at(path, len, i, flags)) {
            unsigned char c = (unsigned char)path[i];
            if (c != '%') {
                out[o++] = (char)c;
                i++;
                continue;
            }
            int hi = i + 2 < len ? hexval((unsigned char)path[i + 1]) : -1;
            int lo = hi >= 0 ? hexval((unsigned char)path[i + 2]) : -1;
            if (lo < 0) return SK_PATH_EPERCENT;
            unsigned char v = (unsigned char)(hi << 4 | lo);
            i += 3;
            if (v == 0) return SK_PATH_ENUL;
            if (v == '/' && !(flags & SK_PATH_KEEP_SLASHES)) return SK_PATH_ESLASH; /* decode: a separator */
            if (is_unreserved(v)) {
                out[o++] = (char)v;
            } else {
                out[o++] = '%';
                out[o++] = hex[v >> 4];
                out[o++] = hex[v & 15];
            }
        }
        size_t n = o - seg - 1;
        bool last = i >= len;
        if (n == 0 && !last && (flags & SK_PATH_MERGE_SLASHES)) {
            o = seg;
        } else if (n == 1 && out[seg + 1] == '.') {
            o = seg;
            if (last) out[o++] = '/';
        } else if (n == 2 && out[seg + 1] == '.' && out[seg + 2] == '.') {
            if (seg == 0) return SK_PATH_EABOVE;
            o = seg - 1;
            while (out[o] != '/') o--; /* out[0] is "/" */
            if (last) out[o++] = '/';
        }
    }
    *res = out;
    *res_len = o;
    return 0;
}

/* See normalize.h. */
const char *sk_path_strerror(int rc)
{
    switch (rc) {
    case 0: return "ok";
    case SK_PATH_ENOTABS: return "path does not start with /";
    case SK_PATH_EPERCENT: return "malformed percent escape";
    case SK_PATH_ENUL: return "encoded NUL (%00)";
    case SK_PATH_ESLASH: return "encoded slash (escaped_slashes = reject)";
    case SK_PATH_EABOVE: return "path climbs above /";
    default: return "invalid path";
    }
}

/* IP-literal contents (between the brackets): IPv6address or IPvFuture. */
static bool ip_literal_ok(const char *s, size_t n)
{
    if (n >= 2 && (s[0] == 'v' || s[0] == 'V')) {
        size_t i = 1;
        while (i < n && hexval((unsigned char)s[i]) >= 0) i++;
        if (i == 1 || i >= n || s[i] != '.' || i + 1 == n) return false;
        for (i++; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (!is_unreserved(c) && !is_sub_delim(c) && c != ':') return false;
        }
        return true;
    }
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr a;
    if (n == 0 || n >= sizeof(buf)) return false;
    for (size_t i = 0; i < n; i++) /* inet_pton would stop at a NUL */
        if (hexval((unsigned char)s[i]) < 0 && s[i] != ':' && s[i] != '.') return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, &a) == 1;
}

/* See normalize.h. */
int sk_authority_parse(const char *s, size_t len, const char **host, size_t *host_len)
{
    const char *h = s;
    size_t hl, i;
    if (len == 0) return -1;
    if (s[0] == '[') {
        const char *e = memchr(s, ']', len);
        if (!e || !ip_literal_ok(s + 1, (size_t)(e - s - 1))) return -1;
        h = s + 1;
        hl = (size_t)(e - s - 1);
        i = (size_t)(e - s) + 1;
    } else {
        for (i = 0; i < len && s[i] != ':'; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == '%') {
                if (i + 2 >= len || hexval((unsigned char)s[i + 1]) < 0 ||
                    hexval((unsigned char)s[i + 2]) < 0)
                    return -1;
                i += 2;
            } else if (!is_unreserved(c) && !is_sub_delim(c)) {
                return -1;
            }
        }
        if (i == 0) return -1; /* empty host (RFC 9110 §4.2.1) */
        hl = i;
    }
    if (i < len) {
        if (s[i] != ':') return -1;
        size_t digits = len - i - 1;
        if (digits == 0 || digits > 5) return -1;
        unsigned port = 0;
        for (i++; i < len; i++) {
            if (s[i] < '0' || s[i] > '9') return -1;
            port = port * 10 + (unsigned)(s[i] - '0');
        }
        if (port > 65535) return -1;
    }
    if (host) *host = h;
    if (host_len) *host_len = hl;
    return 0;
}
