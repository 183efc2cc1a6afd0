/*
 * values.c — the value syntax of the config file: numbers, durations,
 * sizes and socket addresses.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>

#include "config_internal.h"

/* Consumes decimal digits at *sp into *out; -1 when there are none or on overflow. */
int sk__cfg_digits(const char **sp, uint64_t *out)
{
    const char *s = *sp;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*s)) return -1;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *sp = s;
    *out = v;
    return 0;
}

/* A plain non-negative integer, nothing else. */
int sk__cfg_parse_u64(const char *s, uint64_t *out)
{
    if (!s || sk__cfg_digits(&s, out) < 0 || *s) return -1;
    return 0;
}

static int mul_ok(uint64_t v, uint64_t m, uint64_t *out)
{
    if (m && v > UINT64_MAX / m) return -1;
    *out = v * m;
    return 0;
}

/*
 * Parses a duration: digits followed by "ms", "s", "m" or nothing (seconds).
 * No sign, no spaces, no fractions. Returns 0 with *ms set, or -1.
 */
int sk_parse_duration(const char *s, uint64_t *ms)
{
    uint64_t v, mult;
    if (!s || sk__cfg_digits(&s, &v) < 0) return -1;
    if (*s == '\0' || strcmp(s, "s") == 0)
        mult = 1000;
    else if (strcmp(s, "ms") == 0)
        mult = 1;
    else if (strcmp(s, "m") == 0)
        mult = 60000;
    else
        return -1;
    return mul_ok(v, mult, ms);
}

/*
 * Parses a size: digits followed by nothing, "k" or "m" (any case; 1024
 * multipliers). Returns 0 with *bytes set, or -1.
 */
int sk_parse_size(const char *s, uint64_t *bytes)
{
    uint64_t v, mult;
    if (!s || sk__cfg_digits(&s, &v) < 0) return -1;
    if (*s == '\0')
        mult = 1;
    else if ((s[0] == 'k' || s[0] == 'K') && s[1] == '\0')
        mult = 1024;
    else if ((s[0] == 'm' || s[0] == 'M') && s[1] == '\0')
        mult = 1024 * 1024;
    else
        return -1;
    return mul_ok(v, mult, bytes);
}

/*
 * Parses "a.b.c.d:port", "[v6]:port" or "localhost:port" (= 127.0.0.1).
 * Hosts must be numeric (no DNS at load time); the port is required, 0..65535.
 * Fills out->ss, out->len and the canonical out->text. Returns 0 or -1
 * (out is zeroed then).
 */
int sk_parse_addr(const char *s, sk_addr *out)
{
    char host[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    const char *port;
    int family;
    uint64_t portnum;

    memset(out, 0, sizeof(*out));
    if (!s) return -1;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host)) return -1;
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        port = close + 2;
        family = AF_INET6;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host)) return -1;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        if (strchr(host, ':')) return -1; /* IPv6 needs brackets */
        port = colon + 1;
        family = AF_INET;
    }
    if (!host[0] || strlen(port) > 5 || sk__cfg_parse_u64(port, &portnum) < 0 || portnum > 65535) return -1;

    if (family == AF_INET) {
        struct in_addr a;
        if (strcasecmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
        /* inet_pton is strict dotted-quad; getaddrinfo would take "1" or "0x7f.1". */
        if (inet_pton(AF_INET, host, &a) != 1) return -1;
    }
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai) return -1;
    if (ai->ai_addrlen > sizeof(out->ss)) {
        freeaddrinfo(ai);
        return -1;
    }
    memcpy(&out->ss, ai->ai_addr, ai->ai_addrlen);
    out->len = ai->ai_addrlen;
    freeaddrinfo(ai);

    char num[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
        sin->sin_port = htons((uint16_t)portnum);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        sin6->sin6_port = htons((uint16_t)portnum);
    }
    if (getnameinfo((struct sockaddr *)&out->ss, out->len, num, sizeof(num), NULL, 0, NI_NUMERICHOST) != 0) {
        memset(out, 0, sizeof(*out));
        return -1;
    }
    snprintf(out->text, sizeof(out->text), family == AF_INET6 ? "[%s]:%u" : "%s:%u", num, (unsigned)portnum);
    return 0;
}

unsigned sk__cfg_addr_port(const sk_addr *a)
{
    if (a->ss.ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

/*
 * Parses a share written as a percentage: digits, an optional fraction of
 * up to 4 digits, then '%' ("20%", "0.5%", "100%"), at most 100%. Returns 0
 * with *ppm in parts per million (SK_PPM = 100%), or -1.
 */
int sk__cfg_parse_percent(const char *s, uint32_t *ppm)
{
    uint64_t whole, frac = 0;
    if (!s || sk__cfg_digits(&s, &whole) < 0 || whole > 100) return -1;
    if (*s == '.') {
        s++;
        int n = 0;
        while (isdigit((unsigned char)*s) && n < 4) frac = frac * 10 + (uint64_t)(*s++ - '0'), n++;
        if (n == 0 || isdigit((unsigned char)*s)) return -1;
        while (n++ < 4) frac *= 10;
    }
    if (strcmp(s, "%") != 0) return -1;
    uint64_t v = whole * 10000 + frac; /* 1% = 10000 ppm; frac is in 1/10000 of a percent */
    if (v > SK_PPM) return -1;
    *ppm = (uint32_t)v;
    return 0;
}
