/*
 * hashkey.c — what of a request a ring_hash cluster hashes (see
 * hashkey.h): the first value of a header, the value of a cookie, or the
 * client's address.
 */
#include <string.h>

#include "hashkey.h"

/* Finds a cookie in one Cookie header value (see hashkey.h). */
bool sk_cookie_find(const char *v, size_t n, const char *name, size_t nlen, const char **val, size_t *vlen)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ';')) i++;
        size_t start = i;
        while (i < n && v[i] != '=' && v[i] != ';') i++;
        size_t end = i; /* the pair's name is v[start, end), trailing spaces off */
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) end--;
        if (i < n && v[i] == '=') {
            i++;
            while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
            size_t vs = i;
            while (i < n && v[i] != ';') i++;
            size_t ve = i;
            while (ve > vs && (v[ve - 1] == ' ' || v[ve - 1] == '\t')) ve--;
            if (end - start == nlen && nlen && memcmp(v + start, name, nlen) == 0) {
                *val = v + vs;
                *vlen = ve - vs;
                return true;
            }
        }
        /* a piece without '=' is not a cookie: skipped */
    }
    return false;
}

/* The key cl hashes for r (see hashkey.h). */
size_t sk_request_hash_key(const sk_request *r, const sk_cluster *cl, const char **key)
{
    if (cl->lb != SK_LB_RING_HASH) return 0;
    switch (cl->hash_key) {
    case SK_HASH_CLIENT_IP: *key = r->client_ip; return r->client_ip ? strlen(r->client_ip) : 0;
    case SK_HASH_HEADER: {
        const sk_header *h = sk_head_get(&r->head, cl->hash_key_name);
        if (!h || !h->value_len) return 0;
        *key = h->value;
        return h->value_len;
    }
    case SK_HASH_COOKIE: {
        size_t nlen = strlen(cl->hash_key_name);
        for (size_t i = 0; i < r->head.nhdrs; i++) {
            const sk_header *h = &r->head.views[i];
            if (!sk_streq_nocase(h->name, h->name_len, "cookie")) continue;
            size_t vlen;
            if (sk_cookie_find(h->value, h->value_len, cl->hash_key_name, nlen, key, &vlen) && vlen)
                return vlen;
        }
        return 0;
    }
    default: return 0;
    }
}
