/*
 * hashkey.h — the key a ring_hash cluster hashes for a request
 * (`hash_key = header:NAME | cookie:NAME | client_ip`), and the Cookie
 * header lookup it needs (hashkey.c).
 */
#ifndef SK_HASHKEY_H
#define SK_HASHKEY_H

#include "request.h"

/* The bytes of r that cl hashes (*key points into r, valid while r is),
 * or 0 when cl hashes nothing or r lacks the key (the balancer then goes
 * round robin). The header and cookie are read as they are when the
 * attempt starts, after the filters' edits. */
size_t sk_request_hash_key(const sk_request *r, const sk_cluster *cl, const char **key);

/* Finds the cookie `name` (nlen bytes, compared exactly) in the value of
 * one Cookie header (RFC 6265 cookie-string: "a=1; b=2", spaces around the
 * separators tolerated): true with *val and *vlen its value (quotes
 * included, possibly empty), false when absent. Never reads past n. */
bool sk_cookie_find(const char *v, size_t n, const char *name, size_t nlen, const char **val, size_t *vlen);

#endif
