/*
 * sk.h — common definitions shared by every core file: logging, byte
 * buffers, header views and small helpers. Types of wider subsystems live in
 * their own headers (config.h, message.h, request.h, worker.h, ...).
 */
#ifndef SK_SK_H
#define SK_SK_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <strings.h>
#include <sys/types.h>

#define SK_VERSION "0.1.0"

#define SK_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SK_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define SK_MAX(a, b)    ((a) > (b) ? (a) : (b))
#define SK_UNUSED(x)    ((void)(x))

/* Counters written by one thread and read by another (the admin endpoint):
 * relaxed atomics, no locked instructions on the writer's side. */
#define SK_INC(x)    __atomic_store_n(&(x), __atomic_load_n(&(x), __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED)
#define SK_ADD(x, n) __atomic_store_n(&(x), __atomic_load_n(&(x), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define SK_DEC(x)    __atomic_store_n(&(x), __atomic_load_n(&(x), __ATOMIC_RELAXED) - 1, __ATOMIC_RELAXED)
#define SK_LOAD(x)   __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* Log levels (SK_LOG_ERROR..SK_LOG_DEBUG), shared with the plugin ABI. */
#include <sidekick/plugin.h>

extern int sk_log_level;

/*
 * sk_log() writes one line "<time> <level> <message>" to stderr when `level`
 * is at or below sk_log_level. Thread-safe (one write(2) per line).
 */
void sk_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sk_error(...) sk_log(SK_LOG_ERROR, __VA_ARGS__)
#define sk_warn(...)                                                       \
    do {                                                                   \
        if (sk_log_level >= SK_LOG_WARN) sk_log(SK_LOG_WARN, __VA_ARGS__); \
    } while (0)
#define sk_info(...)                                                       \
    do {                                                                   \
        if (sk_log_level >= SK_LOG_INFO) sk_log(SK_LOG_INFO, __VA_ARGS__); \
    } while (0)
#define sk_debug(...)                                                        \
    do {                                                                     \
        if (sk_log_level >= SK_LOG_DEBUG) sk_log(SK_LOG_DEBUG, __VA_ARGS__); \
    } while (0)

/*
 * A view of one header: pointers into memory owned by whoever produced it
 * (a request's arena, a config). Never NUL-terminated by contract.
 */
typedef struct sk_header {
    const char *name;  /* header name as received (case preserved) */
    size_t name_len;   /* length of name */
    const char *value; /* value, leading/trailing whitespace trimmed */
    size_t value_len;  /* length of value */
} sk_header;

/*
 * A growable byte buffer with a read offset. `data[off..len)` is pending.
 * Owned by its embedding object; freed with sk_buf_free().
 */
typedef struct sk_buf {
    char *data; /* heap storage, or NULL when empty */
    size_t off; /* first byte not yet consumed */
    size_t len; /* end of valid bytes */
    size_t cap; /* allocated size of data */
} sk_buf;

/* Returns the number of pending bytes. */
static inline size_t sk_buf_pending(const sk_buf *b)
{
    return b->len - b->off;
}

/* Appends n bytes, growing the buffer (out of line); 0 or -1 on OOM. */
int sk__buf_append_slow(sk_buf *b, const void *p, size_t n);
/* Appends n bytes; returns 0 or -1 on allocation failure (buffer unchanged).
 * Inline fast path: room at the end, no compaction needed. */
static inline int sk_buf_append(sk_buf *b, const void *p, size_t n)
{
    if (n && b->len + n <= b->cap && b->off < b->len) {
        __builtin_memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
    }
    if (n && b->off == 0 && b->len + n <= b->cap) {
        __builtin_memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
    }
    return sk__buf_append_slow(b, p, n);
}
/* Appends a C string. 0 or -1. */
static inline int sk_buf_puts(sk_buf *b, const char *s)
{
    return sk_buf_append(b, s, __builtin_strlen(s));
}
/* Writes n in lower-case hex followed by CRLF (a chunk header) into out
 * (at least 19 bytes); returns the length. */
size_t sk_chunk_header(char *out, size_t n);
/* Appends formatted text; returns 0 or -1. */
int sk_buf_printf(sk_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Marks n pending bytes consumed; resets the buffer when it becomes empty. */
void sk_buf_consume(sk_buf *b, size_t n);
/* Drops all content, keeping the storage for reuse. */
static inline void sk_buf_reset(sk_buf *b)
{
    b->off = b->len = 0;
}
/* Releases the storage. */
void sk_buf_free(sk_buf *b);

/*
 * sk_arena — a per-request bump allocator: memory that lives exactly as
 * long as one request (plugin header copies, metadata, local replies).
 * sk_arena_reset() keeps the first block for the next request, so a warmed
 * up worker does not malloc per request.
 */
typedef struct sk_arena_block {
    struct sk_arena_block *next; /* older block */
    size_t used, cap;            /* bytes used / available in data */
    char data[];                 /* the memory */
} sk_arena_block;

typedef struct sk_arena {
    sk_arena_block *head; /* newest block, or NULL */
} sk_arena;

/* n bytes, 16-byte aligned, valid until reset/free; NULL on OOM. */
void *sk_arena_alloc(sk_arena *a, size_t n);
/* A NUL-terminated copy of n bytes at s; NULL on OOM. */
char *sk_arena_strndup(sk_arena *a, const char *s, size_t n);
/* Frees all blocks but the oldest, which is emptied for reuse. */
void sk_arena_reset(sk_arena *a);
/* Frees everything. */
void sk_arena_free(sk_arena *a);

/* Case-insensitive comparison of a length-delimited string with a C string
 * (inline: with a literal `b` the length is a constant). */
static inline bool sk_streq_nocase(const char *a, size_t alen, const char *b)
{
    size_t blen = __builtin_strlen(b);
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

/* Monotonic clock in milliseconds / nanoseconds. */
uint64_t sk_now_ms(void);
uint64_t sk_now_ns(void);

#endif
