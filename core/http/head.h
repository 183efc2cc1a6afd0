/*
 * head.h — the parsed head of an HTTP message, in protocol-neutral form:
 * the request target or reason text and the header fields, stored back to
 * back in one buffer with offsets, and sk_header views once complete. Filled
 * by a codec (HTTP/1 today), read and edited by the request layer, plugins,
 * Lua and the access log.
 */
#ifndef SK_HEAD_H
#define SK_HEAD_H

#include "sk.h"

/* A parsed header: offsets into sk_head.raw (stable across reallocs). */
typedef struct sk_hdr_off {
    uint32_t name, name_len, value, value_len;
} sk_hdr_off;

/* The parsed head of a message plus its storage. Reused across messages. */
typedef struct sk_head {
    sk_buf raw;            /* url/status text and header bytes, back to back */
    sk_hdr_off *offs;      /* header offsets into raw */
    size_t nhdrs;          /* headers parsed (views once done: edits change it) */
    size_t cap;            /* capacity of offs */
    uint32_t url, url_len; /* request target (request) or reason text (response) */
    sk_header *views;      /* header views, valid once the head is complete */
    size_t views_cap;      /* capacity of views */
    bool in_value;         /* last callback was a value piece */
    bool done;             /* head complete: later fields are trailers (dropped, but counted) */
    size_t trailer_bytes;  /* bytes of trailer fields seen */
} sk_head;

/* How a body is framed. SK_BODY_EOF: delimited by the connection close. */
enum sk_framing { SK_BODY_NONE = 0, SK_BODY_LENGTH, SK_BODY_CHUNKED, SK_BODY_EOF };

/* Header-piece accumulation; 0, -1 (OOM or too many headers), -2 (too many bytes). */
int sk_head_field(sk_head *h, const char *at, size_t n, size_t max_headers, size_t max_bytes);
int sk_head_value(sk_head *h, const char *at, size_t n, size_t max_bytes);
/* Builds the header views after the head is complete. 0 or -1. */
int sk_head_finish(sk_head *h);
/* Replaces (replace) / appends / removes (value NULL) a header of a complete head. 0 or -1. */
int sk_head_edit(sk_head *h, sk_arena *a, const char *name, const char *value, bool replace);
/* A valid header name (name = true) or value for edits and local replies? */
bool sk_header_field_ok(const char *s, bool name);
/* First header with that (lower-case) name, or NULL. */
const sk_header *sk_head_get(const sk_head *h, const char *name);
/* Number of headers with that name. */
size_t sk_head_count(const sk_head *h, const char *name);
/* Empties h for the next message (storage kept) / frees its storage. */
void sk_head_reset(sk_head *h);
void sk_head_free(sk_head *h);
/* Is s[0..n) an RFC 9110 token (header names, methods)? Inline: it runs
 * for every header of every request. */
static inline bool sk_is_token(const char *s, size_t n)
{
    /* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT
     * / ALPHA */
    static const uint32_t tchar[8] = {0, 0x03ff6cfa, 0xc7fffffe, 0x57ffffff, 0, 0, 0, 0};
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(tchar[ch >> 5] & (1u << (ch & 31)))) return false;
    }
    return true;
}

/*
 * Writing a message head into memory the codec sized up front (from the
 * request's arena): plain copies, no bounds check per piece. Each returns
 * the position after what it wrote.
 */
static inline char *sk_put(char *p, const void *s, size_t n)
{
    __builtin_memcpy(p, s, n);
    return p + n;
}
#define SK_PUT_LIT(p, lit) sk_put(p, lit, sizeof(lit) - 1)
/* "name: value\r\n" (at most name_len + value_len + 4 bytes). */
static inline char *sk_put_header(char *p, const sk_header *h)
{
    p = sk_put(p, h->name, h->name_len);
    *p++ = ':';
    *p++ = ' ';
    p = sk_put(p, h->value, h->value_len);
    *p++ = '\r';
    *p++ = '\n';
    return p;
}
/* v in decimal (at most 20 bytes). */
char *sk_put_u64(char *p, uint64_t v);
/* Reason phrase of a status code. */
const char *sk_status_text(int status);

#endif
