/*
 * http1.h — message-head helpers shared by the downstream (http1.c) and
 * upstream (upstream.c) HTTP/1 codecs.
 */
#ifndef SK_HTTP1_H
#define SK_HTTP1_H

#include "worker.h"

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
/* Reason phrase of a status code. */
const char *sk_status_text(int status);

#endif
