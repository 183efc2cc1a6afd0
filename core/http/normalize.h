/*
 * normalize.h — request-target normalisation and Host validation, done once
 * per request before routing, plugins and Lua (DESIGN.md "Request
 * normalisation"). Pure functions over byte ranges: no allocation, no
 * dependency on connections, requests or the config.
 */
#ifndef SK_NORMALIZE_H
#define SK_NORMALIZE_H

#include <stdbool.h>
#include <stddef.h>

/* Flags of sk_path_normalize(). Without a slash flag, an encoded slash
 * (%2F, %2f) is refused (`escaped_slashes = reject`). */
#define SK_PATH_MERGE_SLASHES  0x1u /* "//" → "/" before dot-segment removal */
#define SK_PATH_KEEP_SLASHES   0x2u /* %2F stays encoded (one segment) */
#define SK_PATH_DECODE_SLASHES 0x4u /* %2F becomes a real "/" (a separator) */

/* Why a path was refused (negative return values of sk_path_normalize;
 * all below -9, so that callers can mix them with their own -1). */
enum sk_path_error {
    SK_PATH_ENOTABS = -10,  /* does not start with "/" */
    SK_PATH_EPERCENT = -11, /* "%" not followed by two hex digits */
    SK_PATH_ENUL = -12,     /* %00 */
    SK_PATH_ESLASH = -13,   /* an encoded slash, and the policy is reject */
    SK_PATH_EABOVE = -14,   /* a ".." segment climbs above "/" */
};

/*
 * Is `path` (len bytes) already normal under `flags`: no "%", no "." or ".."
 * segment and, when merging, no "//"? Such a path is what sk_path_normalize
 * returns unchanged, so callers can skip the output buffer.
 */
bool sk_path_is_normal(const char *path, size_t len, unsigned flags);

/*
 * Normalises the path part of a request target (no query): decodes
 * percent-encoded unreserved characters (ALPHA DIGIT - . _ ~) and writes
 * other escapes with upper-case hex (RFC 3986 §6.2.2.1), handles %2F by the
 * SK_PATH_*_SLASHES flag, merges slashes with SK_PATH_MERGE_SLASHES, then
 * removes dot segments (RFC 3986 §5.2.4) — so "%2e%2e" is a ".." segment.
 *
 * `out` must have room for `len` bytes (the result is never longer) and may
 * be NULL when sk_path_is_normal() is true. On success *res points to the
 * result: `path` itself when it was already normal (nothing copied), else
 * `out`; *res_len is its length (at least 1, always starting with "/").
 * Nothing is NUL-terminated. The result is a fixed point: normalising it
 * again gives it back unchanged.
 *
 * Returns 0, or a negative enum sk_path_error saying why the path is
 * refused (then *res and *res_len are untouched).
 */
int sk_path_normalize(const char *path, size_t len, unsigned flags, char *out, const char **res,
                      size_t *res_len);

/* A short text for an enum sk_path_error, for logs ("climbs above /"). */
const char *sk_path_strerror(int rc);

/*
 * Validates an authority as sent in Host or an absolute-form target:
 * host [":" port], where host is an RFC 3986 reg-name (unreserved,
 * pct-encoded, sub-delims; so also IPv4) that is not empty, or an
 * IP-literal "[IPv6]" / "[vX.…]" (RFC 3986 §3.2.2, no zone id), and port
 * is 1 to 5 digits with a value ≤ 65535. Userinfo ("@"), spaces, "/", "?",
 * "#" and controls are invalid.
 *
 * On success, *host / *host_len (both may be NULL) give the host without
 * port and without the brackets of an IP-literal, pointing into `s`.
 * Returns 0, or -1 when the authority is invalid.
 */
int sk_authority_parse(const char *s, size_t len, const char **host, size_t *host_len);

#endif
