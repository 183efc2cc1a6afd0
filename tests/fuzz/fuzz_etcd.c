/*
 * fuzz_etcd.c — libFuzzer target for discovery.so's etcd decoding
 * (plugins/discovery/etcd_json.c): what etcd's JSON gateway sends.
 *
 * Input: byte 0 says how the rest is cut into pieces (a watch stream arrives
 * in arbitrary pieces); the rest is read
 *  - as a watch stream: split into lines, every line parsed as a watch
 *    response, every PUT value as an endpoint; the lines must be the same
 *    whatever the cuts;
 *  - as a /v3/kv/range response, every value as an endpoint;
 *  - as one endpoint value;
 *  - as key bytes: base64 round trip, the prefix's range_end, and the
 *    request bodies, read back with jansson.
 * A parsed endpoint that is not "ip:port" / "[v6]:port" with a weight in
 * 1..10000, a response kind out of range, or any round trip that differs
 * aborts.
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_endpoint(const char *v, size_t n)
{
    char addr[ETCD_ADDR_MAX], why[128];
    uint32_t w = 12345;
    if (etcd_parse_endpoint(v, n, addr, &w, why, sizeof(why)) < 0) {
        if (!why[0]) abort();
        return;
    }
    if (w < 1 || w > ETCD_WEIGHT_MAX) abort();
    char *colon = strrchr(addr, ':');
    if (!colon || colon == addr) abort();
    long port = strtol(colon + 1, NULL, 10);
    if (port < 1 || port > 65535) abort();
    char ip[ETCD_ADDR_MAX];
    unsigned char bin[16];
    size_t iplen = (size_t)(colon - addr);
    if (addr[0] == '[') {
        if (iplen < 3 || addr[iplen - 1] != ']') abort();
        memcpy(ip, addr + 1, iplen - 2);
        ip[iplen - 2] = '\0';
        if (inet_pton(AF_INET6, ip, bin) != 1) abort();
    } else {
        memcpy(ip, addr, iplen);
        ip[iplen] = '\0';
        if (inet_pton(AF_INET, ip, bin) != 1) abort();
    }
}

static void check_kv(const etcd_kv *kv, int want_value)
{
    if (!kv->key || kv->key[kv->key_len] != '\0') abort();
    if (want_value && (!kv->value || kv->value[kv->value_len] != '\0')) abort();
    if (!want_value && kv->value) abort();
    if (kv->mod_revision < 0) abort();
    if (kv->value) check_endpoint(kv->value, kv->value_len);
    char printable[80];
    etcd_printable(kv->key, kv->key_len, printable, sizeof(printable));
    if (strlen(printable) >= sizeof(printable)) abort();
}

/* The lines of a stream, concatenated with their lengths, for comparing. */
typedef struct lines_seen {
    char *buf;
    size_t len, cap;
    size_t count;
} lines_seen;

static int on_line(void *arg, const char *line, size_t len)
{
    lines_seen *s = arg;
    if (len == 0 || memchr(line, '\n', len)) abort();
    if (s->len + len + sizeof(size_t) > s->cap) {
        size_t cap = (s->cap ? s->cap * 2 : 256) + len + sizeof(size_t);
        char *b = realloc(s->buf, cap);
        if (!b) abort();
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, &len, sizeof(len));
    memcpy(s->buf + s->len + sizeof(len), line, len);
    s->len += sizeof(len) + len;
    s->count++;

    etcd_watch_resp w;
    char why[200];
    if (etcd_parse_watch(line, len, &w, why, sizeof(why)) == 0) {
        if (w.kind < ETCD_W_ERROR || w.kind > ETCD_W_PROGRESS) abort();
        if (w.kind == ETCD_W_COMPACTED && w.compact_revision <= 0) abort();
        if (w.kind == ETCD_W_EVENTS && w.nevents == 0) abort();
        if (w.header.revision < 0) abort();
        for (size_t i = 0; i < w.nevents; i++) check_kv(&w.events[i].kv, w.events[i].type == ETCD_PUT);
        etcd_watch_free(&w);
    } else if (!why[0]) {
        abort();
    }
    return 0;
}

static void check_stream(const char *p, size_t n, unsigned cuts)
{
    lines_seen whole = {0}, cut = {0};
    etcd_lines l = {0};
    if (etcd_lines_feed(&l, p, n, on_line, &whole) != 0) abort();
    etcd_lines_reset(&l);
    size_t off = 0, step = 1 + (cuts & 15);
    while (off < n) {
        size_t k = n - off < step ? n - off : step;
        if (etcd_lines_feed(&l, p + off, k, on_line, &cut) != 0) abort();
        off += k;
        step = 1 + ((step * 7 + cuts) & 31);
    }
    etcd_lines_reset(&l);
    if (whole.count != cut.count || whole.len != cut.len ||
        (whole.len && memcmp(whole.buf, cut.buf, whole.len) != 0))
        abort();
    free(whole.buf);
    free(cut.buf);

    /* a line longer than max is refused, and the splitter stays usable */
    etcd_lines small = {.max = 8};
    lines_seen s = {0};
    int rc = etcd_lines_feed(&small, p, n, on_line, &s);
    if (rc != 0 && rc != -1) abort();
    etcd_lines_reset(&small);
    free(s.buf);
}

static void check_range(const char *p, size_t n)
{
    etcd_range r;
    int compacted = 0;
    char why[200];
    if (etcd_parse_range(p, n, &r, &compacted, why, sizeof(why)) == 0) {
        if (r.header.revision <= 0 || compacted) abort();
        for (size_t i = 0; i < r.nkvs; i++) check_kv(&r.kvs[i], 1);
        etcd_range_free(&r);
    } else if (!why[0]) {
        abort();
    }
}

/* The base64 key of a request body, decoded, must be the prefix. */
static void check_request_key(const char *body, const char *outer, const char *p, size_t n, int64_t rev)
{
    if (!body) abort();
    json_t *j = json_loads(body, 0, NULL);
    if (!j) abort();
    json_t *o = outer ? json_object_get(j, outer) : j;
    json_t *k = json_object_get(o, "key"), *e = json_object_get(o, "range_end");
    if (!json_is_string(k) || !json_is_string(e)) abort();
    char *raw;
    size_t rawlen;
    if (etcd_b64_decode(json_string_value(k), json_string_length(k), &raw, &rawlen) < 0) abort();
    if (rawlen != n || memcmp(raw, p, n) != 0) abort();
    free(raw);
    if (outer) {
        json_t *sr = json_object_get(o, "start_revision");
        if (!json_is_string(sr) || strtoll(json_string_value(sr), NULL, 10) != rev) abort();
    }
    json_decref(j);
}

static void check_keys(const char *p, size_t n)
{
    char *enc = malloc(etcd_b64_len(n) + 1), *dec;
    size_t declen;
    if (!enc) abort();
    size_t elen = etcd_b64_encode(p, n, enc);
    if (elen != etcd_b64_len(n) || strlen(enc) != elen) abort();
    if (etcd_b64_decode(enc, elen, &dec, &declen) < 0 || declen != n || memcmp(dec, p, n) != 0) abort();
    free(dec);
    free(enc);
    /* decoding then encoding is stable on what decodes */
    if (etcd_b64_decode(p, n, &dec, &declen) == 0) {
        if (dec[declen] != '\0') abort();
        char *again = malloc(etcd_b64_len(declen) + 1), *back;
        size_t backlen;
        if (!again) abort();
        etcd_b64_encode(dec, declen, again);
        if (etcd_b64_decode(again, strlen(again), &back, &backlen) < 0 || backlen != declen ||
            memcmp(back, dec, declen) != 0)
            abort();
        free(back);
        free(again);
        free(dec);
    }
    /* range_end: every key with the prefix sorts below it */
    char *end = malloc(n ? n : 1);
    size_t end_len;
    if (!end) abort();
    etcd_prefix_end(p, n, end, &end_len);
    if (!(end_len == 1 && end[0] == '\0')) {
        if (end_len > n || end_len == 0) abort();
        if (memcmp(p, end, end_len) >= 0) abort(); /* prefix (and its extensions) < end */
    }
    free(end);
    int64_t rev = (int64_t)n * 1000 + 1;
    char *body = etcd_range_request(p, n);
    check_request_key(body, NULL, p, n, 0);
    free(body);
    body = etcd_watch_request(p, n, rev);
    check_request_key(body, "create_request", p, n, rev);
    free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned cuts = data[0];
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    check_stream(p, n, cuts);
    check_range(p, n);
    check_endpoint(p, n);
    if (n <= 4096) check_keys(p, n);
    return 0;
}
