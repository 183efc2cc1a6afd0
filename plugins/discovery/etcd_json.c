/*
 * etcd_json.c — etcd v3 JSON gateway bodies for discovery.so's etcd source
 * (see etcd_json.h). Pure functions: no I/O, no sidekick header.
 */
#include "etcd_json.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE_MAX_DEFAULT ((size_t)64 * 1024 * 1024)

static void fail(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(char *err, size_t n, const char *fmt, ...)
{
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

/* ---- base64 ---- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t etcd_b64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

size_t etcd_b64_encode(const void *in, size_t n, char *out)
{
    const unsigned char *p = in;
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
        out[o++] = b64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int etcd_b64_decode(const char *in, size_t len, char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    size_t pad = 0;
    while (len > 0 && in[len - 1] == '=' && pad < 2) {
        len--;
        pad++;
    }
    if (len % 4 == 1 || (pad && (len + pad) % 4 != 0)) return -1;
    char *buf = malloc(len / 4 * 3 + 3);
    if (!buf) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0) {
            free(buf);
            return -1;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return 0;
}

/* ---- requests ---- */

void etcd_prefix_end(const char *prefix, size_t len, char *out, size_t *end_len)
{
    size_t n = len;
    while (n > 0 && (unsigned char)prefix[n - 1] == 0xff) n--;
    if (n == 0) {
        out[0] = '\0';
        *end_len = 1;
        return;
    }
    memcpy(out, prefix, n);
    out[n - 1] = (char)((unsigned char)out[n - 1] + 1);
    *end_len = n;
}

/* key and range_end of prefix, base64, into two fresh strings. 0 or -1. */
static int key_and_end(const char *prefix, size_t len, char **key, char **end)
{
    *key = *end = NULL;
    char *raw_end = malloc(len ? len : 1);
    size_t end_len = 0;
    if (!raw_end) return -1;
    etcd_prefix_end(prefix, len, raw_end, &end_len);
    *key = malloc(etcd_b64_len(len) + 1);
    *end = malloc(etcd_b64_len(end_len) + 1);
    if (!*key || !*end) {
        free(raw_end);
        free(*key);
        free(*end);
        *key = *end = NULL;
        return -1;
    }
    etcd_b64_encode(prefix, len, *key);
    etcd_b64_encode(raw_end, end_len, *end);
    free(raw_end);
    return 0;
}

char *etcd_range_request(const char *prefix, size_t len)
{
    char *key, *end;
    if (key_and_end(prefix, len, &key, &end) < 0) return NULL;
    size_t n = strlen(key) + strlen(end) + 32;
    char *body = malloc(n);
    if (body) snprintf(body, n, "{\"key\":\"%s\",\"range_end\":\"%s\"}", key, end);
    free(key);
    free(end);
    return body;
}

char *etcd_watch_request(const char *prefix, size_t len, int64_t start_revision)
{
    char *key, *end;
    if (key_and_end(prefix, len, &key, &end) < 0) return NULL;
    size_t n = strlen(key) + strlen(end) + 128;
    char *body = malloc(n);
    if (body)
        snprintf(body, n,
                 "{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\",\"start_revision\":\"%lld\","
                 "\"progress_notify\":true}}",
                 key, end, (long long)(start_revision > 0 ? start_revision : 0));
    free(key);
    free(end);
    return body;
}

/* ---- fields ---- */

/* An int64 sent as a decimal string (or, leniently, a JSON integer), into
 * *v. Absent: 0 and *v = 0. -1 when present and not such a number. */
static int get_int64(json_t *obj, const char *name, int64_t *v)
{
    *v = 0;
    json_t *j = json_object_get(obj, name);
    if (!j) return 0;
    if (json_is_integer(j)) {
        *v = (int64_t)json_integer_value(j);
        return 0;
    }
    if (!json_is_string(j)) return -1;
    const char *s = json_string_value(j);
    size_t n = json_string_length(j);
    int neg = n > 0 && s[0] == '-';
    if (n == (size_t)neg || n - (size_t)neg > 19) return -1;
    uint64_t acc = 0;
    for (size_t i = (size_t)neg; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        acc = acc * 10 + (uint64_t)(s[i] - '0');
    }
    if (acc > (uint64_t)INT64_MAX) return -1;
    *v = neg ? -(int64_t)acc : (int64_t)acc;
    return 0;
}

/* A uint64 id as a decimal string (or integer) into out (ETCD_ID_MAX). */
static int get_id(json_t *obj, const char *name, char *out)
{
    out[0] = '\0';
    json_t *j = json_object_get(obj, name);
    if (!j) return 0;
    if (json_is_integer(j)) {
        if (json_integer_value(j) < 0) return -1;
        snprintf(out, ETCD_ID_MAX, "%lld", (long long)json_integer_value(j));
        return 0;
    }
    if (!json_is_string(j)) return -1;
    const char *s = json_string_value(j);
    size_t n = json_string_length(j);
    if (n == 0 || n > 20) return -1;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static int get_header(json_t *obj, etcd_header *h, char *err, size_t en)
{
    memset(h, 0, sizeof(*h));
    json_t *j = json_object_get(obj, "header");
    if (!j) return 0;
    if (!json_is_object(j) || get_id(j, "cluster_id", h->cluster_id) < 0 ||
        get_id(j, "member_id", h->member_id) < 0 || get_int64(j, "revision", &h->revision) < 0 ||
        h->revision < 0) {
        fail(err, en, "bad header");
        return -1;
    }
    return 0;
}

/* A base64 field into a fresh buffer. Absent: NULL, 0. -1 if malformed. */
static int get_bytes(json_t *obj, const char *name, size_t max, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    json_t *j = json_object_get(obj, name);
    if (!j) return 0;
    if (!json_is_string(j) || json_string_length(j) > etcd_b64_len(max)) return -1;
    return etcd_b64_decode(json_string_value(j), json_string_length(j), out, len);
}

static void kv_free(etcd_kv *kv)
{
    free(kv->key);
    free(kv->value);
    kv->key = kv->value = NULL;
}

/* A mvccpb.KeyValue object. A missing key is malformed; a missing value is
 * an empty one (a PUT of ""), except for deletes (value NULL). */
static int get_kv(json_t *j, etcd_kv *kv, int want_value, char *err, size_t en)
{
    memset(kv, 0, sizeof(*kv));
    if (!json_is_object(j)) {
        fail(err, en, "kv is not an object");
        return -1;
    }
    if (get_bytes(j, "key", ETCD_KEY_MAX, &kv->key, &kv->key_len) < 0 || !kv->key) {
        fail(err, en, "kv without a valid base64 key");
        goto bad;
    }
    if (get_bytes(j, "value", SIZE_MAX / 2, &kv->value, &kv->value_len) < 0) {
        fail(err, en, "kv with a value that is not base64");
        goto bad;
    }
    if (want_value && !kv->value && !(kv->value = calloc(1, 1))) {
        fail(err, en, "out of memory");
        goto bad;
    }
    if (!want_value) {
        free(kv->value);
        kv->value = NULL;
        kv->value_len = 0;
    }
    if (get_int64(j, "mod_revision", &kv->mod_revision) < 0 || kv->mod_revision < 0) {
        fail(err, en, "kv with a bad mod_revision");
        goto bad;
    }
    return 0;
bad:
    kv_free(kv);
    return -1;
}

/* The message of an {"error": ...} member: a string, or an object with
 * "message" (grpc-gateway's stream errors). */
static void error_message(json_t *e, json_t *top, char *out, size_t n)
{
    json_t *m = json_is_object(e) ? json_object_get(e, "message") : json_object_get(top, "message");
    if (json_is_string(m))
        snprintf(out, n, "%s", json_string_value(m));
    else if (json_is_string(e))
        snprintf(out, n, "%s", json_string_value(e));
    else
        snprintf(out, n, "error without a message");
}

int etcd_is_compacted_message(const char *msg)
{
    return msg && strstr(msg, "required revision has been compacted") != NULL;
}

static json_t *load_object(const char *text, size_t len, char *err, size_t en)
{
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    if (!j) {
        fail(err, en, "not JSON: %s", je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        fail(err, en, "not a JSON object");
        return NULL;
    }
    return j;
}

/* ---- range ---- */

void etcd_range_free(etcd_range *r)
{
    for (size_t i = 0; i < r->nkvs; i++) kv_free(&r->kvs[i]);
    free(r->kvs);
    r->kvs = NULL;
    r->nkvs = 0;
}

int etcd_parse_range(const char *json, size_t len, etcd_range *out, int *compacted, char *err, size_t en)
{
    memset(out, 0, sizeof(*out));
    if (compacted) *compacted = 0;
    json_t *j = load_object(json, len, err, en);
    if (!j) return -1;
    int rc = -1;
    json_t *e = json_object_get(j, "error");
    if (e) {
        char msg[ETCD_MSG_MAX];
        error_message(e, j, msg, sizeof(msg));
        if (compacted) *compacted = etcd_is_compacted_message(msg);
        fail(err, en, "etcd error: %s", msg);
        goto out;
    }
    if (get_header(j, &out->header, err, en) < 0) goto out;
    if (out->header.revision <= 0) {
        fail(err, en, "no header.revision");
        goto out;
    }
    json_t *kvs = json_object_get(j, "kvs"), *more = json_object_get(j, "more");
    if (kvs && !json_is_array(kvs)) {
        fail(err, en, "kvs is not an array");
        goto out;
    }
    out->more = json_is_true(more);
    size_t n = kvs ? json_array_size(kvs) : 0;
    if (n && !(out->kvs = calloc(n, sizeof(*out->kvs)))) {
        fail(err, en, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        char why[128];
        if (get_kv(json_array_get(kvs, i), &out->kvs[i], 1, why, sizeof(why)) < 0) {
            fail(err, en, "kvs[%zu]: %s", i, why);
            goto out;
        }
        out->nkvs++;
    }
    rc = 0;
out:
    if (rc < 0) etcd_range_free(out);
    json_decref(j);
    return rc;
}

/* ---- watch ---- */

void etcd_watch_free(etcd_watch_resp *w)
{
    for (size_t i = 0; i < w->nevents; i++) kv_free(&w->events[i].kv);
    free(w->events);
    w->events = NULL;
    w->nevents = 0;
}

int etcd_parse_watch(const char *line, size_t len, etcd_watch_resp *out, char *err, size_t en)
{
    memset(out, 0, sizeof(*out));
    json_t *j = load_object(line, len, err, en);
    if (!j) return -1;
    int rc = -1;
    json_t *e = json_object_get(j, "error"), *r = json_object_get(j, "result");
    if (e) {
        out->kind = ETCD_W_ERROR;
        error_message(e, j, out->message, sizeof(out->message));
        rc = 0;
        goto out;
    }
    if (!json_is_object(r)) {
        fail(err, en, "neither result nor error");
        goto out;
    }
    if (get_header(r, &out->header, err, en) < 0) goto out;
    if (get_int64(r, "compact_revision", &out->compact_revision) < 0 || out->compact_revision < 0) {
        fail(err, en, "bad compact_revision");
        goto out;
    }
    json_t *canceled = json_object_get(r, "canceled"), *created = json_object_get(r, "created");
    json_t *reason = json_object_get(r, "cancel_reason"), *evs = json_object_get(r, "events");
    if ((canceled && !json_is_boolean(canceled)) || (created && !json_is_boolean(created)) ||
        (reason && !json_is_string(reason)) || (evs && !json_is_array(evs))) {
        fail(err, en, "bad created, canceled, cancel_reason or events");
        goto out;
    }
    if (reason) snprintf(out->message, sizeof(out->message), "%s", json_string_value(reason));
    if (out->compact_revision > 0) {
        /* etcd sets it only on the canceled response of a compacted start */
        out->kind = ETCD_W_COMPACTED;
        rc = 0;
        goto out;
    }
    if (json_is_true(canceled)) {
        out->kind = ETCD_W_CANCELED;
        if (!out->message[0]) snprintf(out->message, sizeof(out->message), "no reason given");
        rc = 0;
        goto out;
    }
    size_t n = evs ? json_array_size(evs) : 0;
    out->kind = json_is_true(created) ? ETCD_W_CREATED : n ? ETCD_W_EVENTS : ETCD_W_PROGRESS;
    if (n && !(out->events = calloc(n, sizeof(*out->events)))) {
        fail(err, en, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(evs, i);
        json_t *type = json_is_object(ev) ? json_object_get(ev, "type") : NULL;
        int t;
        if (!json_is_object(ev)) {
            fail(err, en, "events[%zu] is not an object", i);
            goto out;
        }
        if (!type || (json_is_string(type) && strcmp(json_string_value(type), "PUT") == 0) ||
            (json_is_integer(type) && json_integer_value(type) == 0)) {
            t = ETCD_PUT;
        } else if ((json_is_string(type) && strcmp(json_string_value(type), "DELETE") == 0) ||
                   (json_is_integer(type) && json_integer_value(type) == 1)) {
            t = ETCD_DELETE;
        } else {
            fail(err, en, "events[%zu]: unknown type", i);
            goto out;
        }
        char why[128];
        if (get_kv(json_object_get(ev, "kv"), &out->events[i].kv, t == ETCD_PUT, why, sizeof(why)) < 0) {
            fail(err, en, "events[%zu]: %s", i, why);
            goto out;
        }
        out->events[i].type = t;
        out->nevents++;
    }
    rc = 0;
out:
    if (rc < 0) etcd_watch_free(out);
    json_decref(j);
    return rc;
}

/* ---- endpoint values ---- */

int etcd_parse_endpoint(const char *value, size_t len, char *addr, uint32_t *weight, char *err, size_t en)
{
    addr[0] = '\0';
    *weight = 0;
    if (len > ETCD_VALUE_MAX) {
        fail(err, en, "value longer than %d bytes", ETCD_VALUE_MAX);
        return -1;
    }
    json_error_t je;
    json_t *j = json_loadb(value, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        fail(err, en, "not JSON (%s)", je.text);
        return -1;
    }
    int rc = -1;
    if (!json_is_object(j)) {
        fail(err, en, "not a JSON object");
        goto out;
    }
    json_t *ja = json_object_get(j, "address"), *jp = json_object_get(j, "port"),
           *jw = json_object_get(j, "weight");
    if (!json_is_string(ja)) {
        fail(err, en, "address: %s", ja ? "not a string" : "missing");
        goto out;
    }
    const char *a = json_string_value(ja);
    size_t alen = json_string_length(ja);
    char ip[48];
    if (alen >= 2 && a[0] == '[' && a[alen - 1] == ']') {
        a++;
        alen -= 2;
    }
    if (alen == 0 || alen >= sizeof(ip) || memchr(a, '\0', alen)) {
        fail(err, en, "address: not an IP address");
        goto out;
    }
    memcpy(ip, a, alen);
    ip[alen] = '\0';
    unsigned char bin[16];
    int v6 = 0;
    if (inet_pton(AF_INET, ip, bin) == 1) {
        v6 = 0;
    } else if (inet_pton(AF_INET6, ip, bin) == 1) {
        v6 = 1;
    } else {
        fail(err, en, "address: '%.60s' is not an IPv4 or IPv6 address", ip);
        goto out;
    }
    if (!json_is_integer(jp) || json_integer_value(jp) < 1 || json_integer_value(jp) > 65535) {
        fail(err, en, "port: %s", jp ? "expected a whole number 1..65535" : "missing");
        goto out;
    }
    json_int_t w = ETCD_WEIGHT_DEFAULT;
    if (jw && !json_is_null(jw)) {
        if (!json_is_integer(jw) || json_integer_value(jw) < 1 || json_integer_value(jw) > ETCD_WEIGHT_MAX) {
            fail(err, en, "weight: expected a whole number 1..%d", ETCD_WEIGHT_MAX);
            goto out;
        }
        w = json_integer_value(jw);
    }
    /* the canonical text of the address, so that one endpoint has one name */
    char canon[INET6_ADDRSTRLEN];
    inet_ntop(v6 ? AF_INET6 : AF_INET, bin, canon, sizeof(canon));
    snprintf(addr, ETCD_ADDR_MAX, v6 ? "[%s]:%d" : "%s:%d", canon, (int)json_integer_value(jp));
    *weight = (uint32_t)w;
    rc = 0;
out:
    json_decref(j);
    return rc;
}

/* ---- logs ---- */

void etcd_printable(const char *s, size_t n, char *out, size_t out_size)
{
    if (!out_size) return;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t need = (c >= 0x20 && c < 0x7f && c != '\\') ? 1 : 4;
        if (o + need + 4 > out_size) {
            if (o + 4 <= out_size) memcpy(out + o, "...", 3), o += 3;
            break;
        }
        if (need == 1)
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, out_size - o, "\\x%02x", c);
    }
    out[o < out_size ? o : out_size - 1] = '\0';
}

/* ---- line splitter ---- */

void etcd_lines_reset(etcd_lines *l)
{
    free(l->buf);
    l->buf = NULL;
    l->len = l->cap = 0;
}

/* One complete line to cb, with a trailing '\r' dropped; empty lines skipped. */
static int emit(const char *p, size_t n, int (*cb)(void *, const char *, size_t), void *arg)
{
    if (n && p[n - 1] == '\r') n--;
    if (!n) return 0;
    return cb(arg, p, n);
}

int etcd_lines_feed(etcd_lines *l, const char *data, size_t n,
                    int (*cb)(void *arg, const char *line, size_t len), void *arg)
{
    size_t max = l->max ? l->max : LINE_MAX_DEFAULT;
    while (n > 0) {
        const char *nl = memchr(data, '\n', n);
        size_t take = nl ? (size_t)(nl - data) : n;
        if (l->len + take > max) {
            etcd_lines_reset(l);
            return -1;
        }
        if (!nl || l->len) {
            /* keep (part of) a line across pieces */
            if (l->len + take > l->cap) {
                size_t cap = l->cap ? l->cap : 4096;
                while (cap < l->len + take) cap *= 2;
                char *b = realloc(l->buf, cap);
                if (!b) {
                    etcd_lines_reset(l);
                    return -1;
                }
                l->buf = b;
                l->cap = cap;
            }
            memcpy(l->buf + l->len, data, take);
            l->len += take;
        }
        if (!nl) return 0;
        int rc;
        if (l->len) {
            rc = emit(l->buf, l->len, cb, arg);
            l->len = 0;
        } else {
            rc = emit(data, take, cb, arg);
        }
        if (rc) {
            etcd_lines_reset(l);
            return rc;
        }
        data += take + 1;
        n -= take + 1;
    }
    return 0;
}
