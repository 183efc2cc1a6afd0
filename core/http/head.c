/*
 * head.c — message heads, independent of the codec that fills them:
 * accumulating header pieces within limits, header views, lookups, edits,
 * reason phrases and the token rule.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "message.h"
#include "normalize.h"

/* Appends a piece of a header name; starts a new header when the previous
 * piece was a value. Returns 0, or -1 when a limit is exceeded / OOM. */
int sk_head_field(sk_head *h, const char *at, size_t n, size_t max_headers, size_t max_bytes)
{
    if (h->done) {
        /* A trailer field of a chunked body: not forwarded (the head went
         * out long ago), but bounded like the head. */
        h->trailer_bytes += n;
        return h->trailer_bytes > max_bytes ? -2 : 0;
    }
    if (h->nhdrs == 0 || h->in_value) {
        if (h->nhdrs >= max_headers) return -1;
        if (h->nhdrs == h->cap) {
            size_t cap = h->cap ? h->cap * 2 : 32;
            sk_hdr_off *o = realloc(h->offs, cap * sizeof(*o));
            if (!o) return -1;
            h->offs = o;
            h->cap = cap;
        }
        sk_hdr_off *o = &h->offs[h->nhdrs++];
        o->name = (uint32_t)h->raw.len;
        o->name_len = 0;
        o->value = (uint32_t)h->raw.len;
        o->value_len = 0;
        h->in_value = false;
    }
    if (h->raw.len + n > max_bytes) return -2;
    if (sk_buf_append(&h->raw, at, n) < 0) return -1;
    h->offs[h->nhdrs - 1].name_len += (uint32_t)n;
    return 0;
}

/* Appends a piece of a header value. Same returns as sk_head_field. */
int sk_head_value(sk_head *h, const char *at, size_t n, size_t max_bytes)
{
    if (h->done) {
        h->trailer_bytes += n;
        return h->trailer_bytes > max_bytes ? -2 : 0;
    }
    if (h->nhdrs == 0) return -1;
    sk_hdr_off *o = &h->offs[h->nhdrs - 1];
    if (!h->in_value) {
        o->value = (uint32_t)h->raw.len;
        o->value_len = 0;
        h->in_value = true;
    }
    if (h->raw.len + n > max_bytes) return -2;
    if (sk_buf_append(&h->raw, at, n) < 0) return -1;
    o->value_len += (uint32_t)n;
    return 0;
}

/* Builds the sk_header views once the head is complete (raw no longer
 * grows). Trims surrounding whitespace from values. Returns 0 or -1. */
int sk_head_finish(sk_head *h)
{
    h->done = true;
    if (h->nhdrs > h->views_cap) {
        sk_header *v = realloc(h->views, h->nhdrs * sizeof(*v));
        if (!v) return -1;
        h->views = v;
        h->views_cap = h->nhdrs;
    }
    for (size_t i = 0; i < h->nhdrs; i++) {
        const sk_hdr_off *o = &h->offs[i];
        const char *v = h->raw.data + o->value;
        size_t vl = o->value_len;
        while (vl && (*v == ' ' || *v == '\t')) v++, vl--;
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
        h->views[i].name = h->raw.data + o->name;
        h->views[i].name_len = o->name_len;
        h->views[i].value = v;
        h->views[i].value_len = vl;
    }
    return 0;
}

/* Returns the first header named `name` (lower-case), or NULL. */
const sk_header *sk_head_get(const sk_head *h, const char *name)
{
    for (size_t i = 0; i < h->nhdrs; i++)
        if (sk_streq_nocase(h->views[i].name, h->views[i].name_len, name)) return &h->views[i];
    return NULL;
}

/* Counts headers named `name`. */
size_t sk_head_count(const sk_head *h, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < h->nhdrs; i++)
        if (sk_streq_nocase(h->views[i].name, h->views[i].name_len, name)) n++;
    return n;
}

/* Is s a valid header name (name) or value (no CR, LF, NUL or other
 * controls but TAB)? Shared with the plugin host. */
bool sk_header_field_ok(const char *s, bool name)
{
    if (!s || (name && !*s)) return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\r' || *p == '\n' || *p == 0x7f || (*p < 0x20 && *p != '\t')) return false;
        if (name && (*p == ':' || *p <= 0x20)) return false;
    }
    return true;
}

/* Edits a complete head (plugins, filters): with `replace`, removes every
 * header named `name`; then, when value is not NULL, appends `name: value`
 * (copied into the arena). Returns 0, or -1 on a bad name/value or OOM. */
int sk_head_edit(sk_head *h, sk_arena *a, const char *name, const char *value, bool replace)
{
    if (!h->done || !sk_header_field_ok(name, true) || (value && !sk_header_field_ok(value, false)))
        return -1;
    if (replace) {
        size_t j = 0;
        for (size_t i = 0; i < h->nhdrs; i++)
            if (!sk_streq_nocase(h->views[i].name, h->views[i].name_len, name)) h->views[j++] = h->views[i];
        h->nhdrs = j;
    }
    if (!value) return 0;
    if (h->nhdrs + 1 > h->views_cap) {
        size_t cap = h->views_cap ? h->views_cap * 2 : 8;
        sk_header *v = realloc(h->views, cap * sizeof(*v));
        if (!v) return -1;
        h->views = v;
        h->views_cap = cap;
    }
    size_t nl = strlen(name), vl = strlen(value);
    const char *n = sk_arena_strndup(a, name, nl), *v = sk_arena_strndup(a, value, vl);
    if (!n || !v) return -1;
    h->views[h->nhdrs].name = n;
    h->views[h->nhdrs].name_len = nl;
    h->views[h->nhdrs].value = v;
    h->views[h->nhdrs].value_len = vl;
    h->nhdrs++;
    return 0;
}

/* Standard reason phrase of a status code. */
const char *sk_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:
        return status < 300   ? "OK"
               : status < 400 ? "Redirect"
               : status < 500 ? "Client Error"
                              : "Server Error";
    }
}

/* Writes v in decimal at p; returns the position after it. */
char *sk_put_u64(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

/* Empties a head for the next message, keeping its storage. */
void sk_head_reset(sk_head *h)
{
    sk_buf_reset(&h->raw);
    h->nhdrs = 0;
    h->in_value = false;
    h->done = false;
    h->trailer_bytes = 0;
    h->url = h->url_len = 0;
}

/* Frees a head's storage; it is empty and reusable afterwards. */
void sk_head_free(sk_head *h)
{
    sk_buf_free(&h->raw);
    free(h->offs);
    free(h->views);
    memset(h, 0, sizeof(*h));
}

/* The enum sk_method of a method name (exact, case-sensitive: RFC 9110 9.1). */
int sk_method_id(const char *name, size_t len)
{
    static const struct {
        const char *name;
        int id;
    } methods[] = {
        {"GET", SK_METHOD_GET},     {"HEAD", SK_METHOD_HEAD},     {"POST", SK_METHOD_POST},
        {"PUT", SK_METHOD_PUT},     {"DELETE", SK_METHOD_DELETE}, {"OPTIONS", SK_METHOD_OPTIONS},
        {"TRACE", SK_METHOD_TRACE}, {"PATCH", SK_METHOD_PATCH},   {"CONNECT", SK_METHOD_CONNECT},
    };
    for (size_t i = 0; i < SK_ARRAY_LEN(methods); i++)
        if (strlen(methods[i].name) == len && memcmp(methods[i].name, name, len) == 0) return methods[i].id;
    return SK_METHOD_OTHER;
}

/* The static name of a method id (sk_method_id's table), NULL for OTHER. */
const char *sk_method_name(int id)
{
    static const char *const names[] = {NULL,     "GET",     "HEAD",  "POST",  "PUT",
                                        "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT"};
    return id > 0 && (size_t)id < SK_ARRAY_LEN(names) ? names[id] : NULL;
}

/* Splits and normalises an origin-form target (see message.h). */
int sk_msg_origin_target(sk_msg *r, const char *u, size_t n, unsigned flags)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] == 0x7f) return -1;
    if (n == 0 || (u[0] != '/' && !(n == 1 && u[0] == '*'))) return -1;
    const char *q = memchr(u, '?', n);
    r->path = u;
    r->path_len = q ? (size_t)(q - u) : n;
    if (q) {
        r->query = q + 1;
        r->query_len = n - r->path_len - 1;
    }
    if (u[0] == '*') return 0;
    char *buf = NULL;
    if (!sk_path_is_normal(r->path, r->path_len, flags) && !(buf = sk_arena_alloc(&r->arena, r->path_len)))
        return -2;
    return sk_path_normalize(r->path, r->path_len, flags, buf, &r->path, &r->path_len);
}
