/*
 * parse.c — the parsers of discovery.so that need neither the host nor any
 * I/O: config values (durations, numbers, HOST:PORT lists), endpoint text,
 * and the endpoint file format. tests/fuzz/fuzz_endpoints.c builds this
 * file alone.
 */
#include "discovery.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <sys/socket.h>

int dsc_parse_uint(const char *v, unsigned long long lo, unsigned long long hi, unsigned long long *out)
{
    if (!v || !isdigit((unsigned char)*v)) return -1;
    errno = 0;
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || *end || n < lo || n > hi) return -1;
    *out = n;
    return 0;
}

int dsc_parse_duration(const char *v, uint64_t min_ms, uint64_t max_ms, uint64_t *ms)
{
    char num[24];
    size_t d = 0;
    while (v[d] && isdigit((unsigned char)v[d])) {
        if (d == sizeof num - 1) return -1;
        num[d] = v[d];
        d++;
    }
    num[d] = 0;
    unsigned long long n;
    if (d == 0 || dsc_parse_uint(num, 0, 1000000000ull, &n) < 0) return -1;
    const char *u = v + d;
    uint64_t mul = !*u                    ? 1000
                   : strcmp(u, "ms") == 0 ? 1
                   : strcmp(u, "s") == 0  ? 1000
                   : strcmp(u, "m") == 0  ? 60000
                                          : 0;
    if (mul == 0) return -1;
    uint64_t r = (uint64_t)n * mul;
    if (r < min_ms || r > max_ms) return -1;
    *ms = r;
    return 0;
}

int dsc_parse_bool(const char *v, int *out)
{
    if (strcmp(v, "on") == 0)
        *out = 1;
    else if (strcmp(v, "off") == 0)
        *out = 0;
    else
        return -1;
    return 0;
}

static int name_char(int c)
{
    return isalnum(c) || c == '.' || c == '-' || c == '_';
}

int dsc_parse_hostport(const char *s, size_t len, int allow_names, dsc_hostport *out)
{
    const char *host, *colon, *end = s + len;
    size_t hlen;
    int bracket = len > 0 && s[0] == '[';
    if (bracket) {
        const char *rb = memchr(s, ']', len);
        if (!rb || rb + 1 >= end || rb[1] != ':') return -1;
        host = s + 1;
        hlen = (size_t)(rb - host);
        colon = rb + 1;
    } else {
        colon = NULL;
        for (const char *p = s; p < end; p++)
            if (*p == ':') {
                if (colon) return -1; /* two colons: a bare IPv6 address needs [] */
                colon = p;
            }
        if (!colon) return -1;
        host = s;
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= sizeof out->host) return -1;
    /* the port: 1..65535, digits only */
    const char *p = colon + 1;
    if (p >= end || end - p > 5) return -1;
    unsigned port = 0;
    for (; p < end; p++) {
        if (!isdigit((unsigned char)*p)) return -1;
        port = port * 10 + (unsigned)(*p - '0');
    }
    if (port < 1 || port > 65535) return -1;
    char h[sizeof out->host];
    memcpy(h, host, hlen);
    h[hlen] = 0;
    unsigned char buf[16];
    int family = 0;
    if (inet_pton(AF_INET6, h, buf) == 1)
        family = AF_INET6;
    else if (!bracket && inet_pton(AF_INET, h, buf) == 1)
        family = AF_INET;
    if (family == AF_INET6 && !bracket) return -1;
    if (!family) {
        if (bracket || !allow_names) return -1;
        for (size_t i = 0; i < hlen; i++)
            if (!name_char((unsigned char)h[i])) return -1;
    }
    memcpy(out->host, h, hlen + 1);
    out->port = (uint16_t)port;
    out->family = family;
    return 0;
}

int dsc_parse_hostports(const char *list, int allow_names, dsc_hostport *out, size_t max, size_t *n,
                        char *err, size_t errsz)
{
    *n = 0;
    const char *p = list;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        const char *q = p;
        while (*q && *q != ' ' && *q != '\t' && *q != ',') q++;
        if (*n == max) {
            snprintf(err, errsz, "more than %zu entries", max);
            return -1;
        }
        if (dsc_parse_hostport(p, (size_t)(q - p), allow_names, &out[*n]) < 0) {
            snprintf(err, errsz, "'%.*s' is not %s:PORT (port 1..65535 required%s)",
                     (int)(q - p > 200 ? 200 : q - p), p, allow_names ? "HOST" : "IP",
                     allow_names ? "" : ", [IPv6]:PORT for IPv6");
            return -1;
        }
        (*n)++;
        p = q;
    }
    if (*n == 0) {
        snprintf(err, errsz, "no HOST:PORT given");
        return -1;
    }
    return 0;
}

void dsc_format_addr(int family, const void *addr, uint16_t port, char buf[DSC_ADDR_LEN])
{
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(family, addr, ip, sizeof ip);
    if (family == AF_INET6)
        snprintf(buf, DSC_ADDR_LEN, "[%s]:%u", ip, (unsigned)port);
    else
        snprintf(buf, DSC_ADDR_LEN, "%s:%u", ip, (unsigned)port);
}

/* ---- the endpoint file ---- */

void dsc_eplist_free(dsc_eplist *l)
{
    free(l->eps);
    free(l->addrs);
    memset(l, 0, sizeof *l);
}

/* Appends one endpoint. 0, or -1 on OOM. */
static int eplist_add(dsc_eplist *l, const char *addr, uint32_t weight)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        sk_weighted_endpoint *eps = realloc(l->eps, cap * sizeof *eps);
        if (!eps) return -1;
        l->eps = eps;
        char(*addrs)[DSC_ADDR_LEN] = realloc(l->addrs, cap * sizeof *addrs);
        if (!addrs) return -1;
        l->addrs = addrs;
        l->cap = cap;
    }
    snprintf(l->addrs[l->n], DSC_ADDR_LEN, "%s", addr);
    l->eps[l->n].weight = weight;
    l->n++;
    return 0;
}

static int blank(int c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* One line (s[0..len), no '\n'): 0 with *have 0 (nothing on it) or 1 and
 * the endpoint in addr / *weight; -1 with a message in err. */
static int parse_line(const char *s, size_t len, int *have, char addr[DSC_ADDR_LEN], uint32_t *weight,
                      char *err, size_t errsz)
{
    const char *end = s + len;
    const char *hash = memchr(s, '#', len);
    if (hash) end = hash;
    const char *f[3];
    size_t fl[3];
    int nf = 0;
    for (const char *p = s;;) {
        while (p < end && blank((unsigned char)*p)) p++;
        if (p >= end) break;
        const char *q = p;
        while (q < end && !blank((unsigned char)*q)) q++;
        if (nf == 3) break;
        f[nf] = p;
        fl[nf] = (size_t)(q - p);
        nf++;
        p = q;
    }
    *have = 0;
    if (nf == 0) return 0;
    if (nf > 2) {
        snprintf(err, errsz, "expected 'ADDRESS:PORT [WEIGHT]', found more fields ('%.*s')",
                 (int)(fl[2] > 64 ? 64 : fl[2]), f[2]);
        return -1;
    }
    for (size_t i = 0; i < fl[0]; i++)
        if ((unsigned char)f[0][i] < 0x21 || (unsigned char)f[0][i] > 0x7e) {
            snprintf(err, errsz, "a control or non-ASCII byte in the address");
            return -1;
        }
    dsc_hostport hp;
    if (dsc_parse_hostport(f[0], fl[0], 1, &hp) < 0) {
        snprintf(err, errsz, "'%.*s' is not IPv4:PORT or [IPv6]:PORT (port 1..65535)",
                 (int)(fl[0] > 80 ? 80 : fl[0]), f[0]);
        return -1;
    }
    if (!hp.family) {
        snprintf(err, errsz, "'%.*s': host names are not resolved here, use a numeric address",
                 (int)(fl[0] > 80 ? 80 : fl[0]), f[0]);
        return -1;
    }
    unsigned char bin[16];
    inet_pton(hp.family, hp.host, bin);
    dsc_format_addr(hp.family, bin, hp.port, addr);
    *weight = 1;
    if (nf == 2) {
        char w[8];
        unsigned long long v;
        if (fl[1] >= sizeof w) {
            snprintf(err, errsz, "weight '%.*s' is not a whole number in 1..%d",
                     (int)(fl[1] > 32 ? 32 : fl[1]), f[1], DSC_MAX_WEIGHT);
            return -1;
        }
        memcpy(w, f[1], fl[1]);
        w[fl[1]] = 0;
        if (dsc_parse_uint(w, 1, DSC_MAX_WEIGHT, &v) < 0) {
            snprintf(err, errsz, "weight '%s' is not a whole number in 1..%d", w, DSC_MAX_WEIGHT);
            return -1;
        }
        *weight = (uint32_t)v;
    }
    *have = 1;
    return 0;
}

int dsc_parse_endpoints(const char *text, size_t len, dsc_eplist *out, int *bad_line, char *err, size_t errsz)
{
    memset(out, 0, sizeof *out);
    *bad_line = 0;
    int line = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        line++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (memchr(p, 0, (size_t)(le - p))) {
            snprintf(err, errsz, "a NUL byte");
            goto bad;
        }
        int have;
        char addr[DSC_ADDR_LEN];
        uint32_t w;
        if (parse_line(p, (size_t)(le - p), &have, addr, &w, err, errsz) < 0) goto bad;
        if (have) {
            if (out->n == DSC_MAX_ENDPOINTS) {
                snprintf(err, errsz, "more than %d endpoints", DSC_MAX_ENDPOINTS);
                goto bad;
            }
            if (eplist_add(out, addr, w) < 0) {
                snprintf(err, errsz, "out of memory");
                goto bad;
            }
        }
        p = nl ? nl + 1 : end;
    }
    for (size_t i = 0; i < out->n; i++) out->eps[i].address = out->addrs[i];
    return 0;
bad:
    *bad_line = line;
    dsc_eplist_free(out);
    return -1;
}

/* ---- DNS messages ---- */

/* Skips the name at msg[*off]: labels, ending with a zero byte or a
 * compression pointer. 0, or -1 when it runs past len or is malformed. */
static int skip_name(const unsigned char *msg, size_t len, size_t *off)
{
    size_t o = *off;
    for (int labels = 0; labels < 128; labels++) {
        if (o >= len) return -1;
        unsigned c = msg[o];
        if (c == 0) {
            *off = o + 1;
            return 0;
        }
        if ((c & 0xc0) == 0xc0) {
            if (o + 2 > len) return -1;
            *off = o + 2;
            return 0;
        }
        if (c & 0xc0) return -1; /* extended label types */
        o += 1 + c;
    }
    return -1;
}

int dsc_dns_min_ttl(const unsigned char *msg, size_t len, uint32_t *ttl)
{
    if (!msg || len < 12) return -1;
    unsigned qd = (unsigned)msg[4] << 8 | msg[5];
    unsigned an = (unsigned)msg[6] << 8 | msg[7];
    unsigned ns = (unsigned)msg[8] << 8 | msg[9];
    size_t off = 12;
    for (unsigned i = 0; i < qd; i++) {
        if (skip_name(msg, len, &off) < 0 || off + 4 > len) return -1;
        off += 4;
    }
    int seen = 0;
    uint32_t min = UINT32_MAX;
    for (unsigned i = 0; i < an + ns; i++) {
        if (skip_name(msg, len, &off) < 0 || off + 10 > len) return -1;
        uint32_t t = (uint32_t)msg[off + 4] << 24 | (uint32_t)msg[off + 5] << 16 |
                     (uint32_t)msg[off + 6] << 8 | msg[off + 7];
        size_t rdlen = (size_t)msg[off + 8] << 8 | msg[off + 9];
        off += 10;
        if (off + rdlen > len) return -1;
        off += rdlen;
        if (t & 0x80000000u) t = 0; /* RFC 2181 8: a TTL with the top bit set is 0 */
        if (t < min) min = t;
        seen++;
    }
    *ttl = seen ? min : 0;
    return seen;
}

uint32_t dsc_srv_weight(unsigned weight, unsigned max_weight, size_t naddrs)
{
    if (naddrs == 0) naddrs = 1;
    if (max_weight == 0) return 1; /* every weight 0: equal shares */
    /* scaled so that the heaviest target gets DSC_MAX_WEIGHT, then shared
     * among the target's addresses; never below 1 (weight 0 = smallest share) */
    uint64_t w = ((uint64_t)weight * DSC_MAX_WEIGHT + max_weight / 2) / max_weight;
    w /= naddrs;
    return w < 1 ? 1 : w > DSC_MAX_WEIGHT ? DSC_MAX_WEIGHT : (uint32_t)w;
}
