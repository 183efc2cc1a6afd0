/*
 * util.c — logging, byte buffers, clocks and small string helpers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "sk.h"

int sk_log_level = SK_LOG_INFO;

static const char *level_names[] = {"error", "warn", "info", "debug"};

void sk_log(int level, const char *fmt, ...)
{
    if (level > sk_log_level) return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     level_names[level < 0   ? 0
                                 : level > 3 ? 3
                                             : level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    size_t len = (size_t)n + SK_MIN((size_t)m, sizeof(line) - (size_t)n - 2);
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    SK_UNUSED(w);
}

static int buf_reserve(sk_buf *b, size_t n)
{
    if (b->off > 0 && b->off == b->len) b->off = b->len = 0;
    if (b->len + n <= b->cap) return 0;
    if (b->off > 0 && b->len - b->off + n <= b->cap) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        return 0;
    }
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

/* The slow path of sk_buf_append: compacts or grows the buffer first. */
int sk__buf_append_slow(sk_buf *b, const void *p, size_t n)
{
    if (n == 0) return 0;
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int sk_buf_printf(sk_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n + 1) < 0) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void sk_buf_consume(sk_buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len) b->off = b->len = 0;
}

void sk_buf_free(sk_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

uint64_t sk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t sk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define ARENA_BLOCK 4096

/* Returns n bytes from the newest block, adding a block when needed. */
void *sk_arena_alloc(sk_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    sk_arena_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ARENA_BLOCK - sizeof(*b) ? n : ARENA_BLOCK - sizeof(*b);
        sk_arena_block *nb = malloc(sizeof(*nb) + cap);
        if (!nb) return NULL;
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        a->head = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

/* Copies n bytes of s into the arena, NUL-terminated. */
char *sk_arena_strndup(sk_arena *a, const char *s, size_t n)
{
    char *p = sk_arena_alloc(a, n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* Keeps the oldest block (emptied), frees the others. */
void sk_arena_reset(sk_arena *a)
{
    sk_arena_block *b = a->head;
    if (!b) return;
    while (b->next) {
        sk_arena_block *next = b->next;
        free(b);
        b = next;
    }
    b->used = 0;
    a->head = b;
}

/* Frees every block. */
void sk_arena_free(sk_arena *a)
{
    sk_arena_block *b = a->head;
    while (b) {
        sk_arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}

/* "%zx\r\n" without printf. */
size_t sk_chunk_header(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = hex[n & 15];
        n >>= 4;
    } while (n);
    size_t len = sizeof(tmp) - i;
    memcpy(out, tmp + i, len);
    out[len] = '\r';
    out[len + 1] = '\n';
    return len + 2;
}
