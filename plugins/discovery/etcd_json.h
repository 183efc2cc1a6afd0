/*
 * etcd_json.h — what discovery.so's etcd source sends to and reads from
 * etcd's v3 JSON gateway (grpc-gateway), as pure functions on jansson: the
 * /v3/kv/range and /v3/watch request bodies, the range response, the lines
 * of a watch stream, and the endpoint values. No sidekick header: the fuzz
 * target (tests/fuzz/fuzz_etcd.c) links this file alone.
 *
 * What the gateway sends (etcd 3.4): keys and values base64 (standard
 * alphabet, padded); int64 fields as decimal strings, uint64 ones too
 * (cluster_id, member_id); fields at their zero value are left out (a PUT
 * event has no "type", a first watch has no "watch_id"). A watch response
 * body is a stream of JSON objects, one per line: {"result": {...}} or
 * {"error": {...}}.
 */
#ifndef SK_DISCOVERY_ETCD_JSON_H
#define SK_DISCOVERY_ETCD_JSON_H

#include <stddef.h>
#include <stdint.h>

/* Bounds on what is read. */
#define ETCD_ID_MAX         24          /* a uint64 in decimal, NUL included */
#define ETCD_MSG_MAX        256         /* an error or cancel reason, kept for logs */
#define ETCD_VALUE_MAX      4096        /* bytes of an endpoint value (decoded) */
#define ETCD_ADDR_MAX       64          /* "[v6]:port" + NUL */
#define ETCD_KEY_MAX        (64 * 1024) /* bytes of a key (decoded); longer: malformed response */
#define ETCD_WEIGHT_MAX     10000
#define ETCD_WEIGHT_DEFAULT 1

/* The header of every response. */
typedef struct etcd_header {
    char cluster_id[ETCD_ID_MAX]; /* decimal as sent, "" when absent */
    char member_id[ETCD_ID_MAX];  /* likewise */
    int64_t revision;             /* 0 when absent (a compacted watch's header has none) */
} etcd_header;

/* A key and its value, decoded (each buffer malloc'd, with one NUL past
 * its length so that it prints; the bytes may contain NULs). */
typedef struct etcd_kv {
    char *key;
    size_t key_len;
    char *value; /* NULL for a DELETE event */
    size_t value_len;
    int64_t mod_revision; /* 0 when absent */
} etcd_kv;

/* A /v3/kv/range response. */
typedef struct etcd_range {
    etcd_header header;
    etcd_kv *kvs; /* nkvs, malloc'd */
    size_t nkvs;
    int more; /* the server cut the answer (a limit was set): not expected */
} etcd_range;

enum etcd_event_type { ETCD_PUT = 0, ETCD_DELETE = 1 };

typedef struct etcd_event {
    int type; /* etcd_event_type */
    etcd_kv kv;
} etcd_event;

/* What one line of a watch stream says, most specific first. */
enum etcd_watch_kind {
    ETCD_W_ERROR = 1, /* {"error": ...}: the stream failed (message in `message`) */
    ETCD_W_COMPACTED, /* canceled with compact_revision: the start revision is gone */
    ETCD_W_CANCELED,  /* canceled by the server otherwise (reason in `message`) */
    ETCD_W_CREATED,   /* the watch is set up (may carry no events) */
    ETCD_W_EVENTS,    /* one batch of events */
    ETCD_W_PROGRESS,  /* no event: a progress notification (header.revision is current) */
};

typedef struct etcd_watch_resp {
    int kind; /* etcd_watch_kind */
    etcd_header header;
    int64_t compact_revision; /* > 0 for ETCD_W_COMPACTED */
    char message[ETCD_MSG_MAX];
    etcd_event *events; /* nevents, malloc'd; only for ETCD_W_CREATED / ETCD_W_EVENTS */
    size_t nevents;
} etcd_watch_resp;

/* Standard base64 with padding into out (room for etcd_b64_len(n) + 1
 * bytes, NUL-terminated). Returns the length written. */
size_t etcd_b64_len(size_t n);
size_t etcd_b64_encode(const void *in, size_t n, char *out);
/* Decodes standard base64 (padding optional, no whitespace) into a fresh
 * buffer (*out, *outlen; NUL-terminated). 0, or -1 (bad input, OOM). */
int etcd_b64_decode(const char *in, size_t len, char **out, size_t *outlen);

/* The range_end that makes [prefix, end) every key starting with prefix:
 * prefix with its last byte below 0xff incremented and the bytes after it
 * dropped. Written to out (room for len bytes), length in *end_len; a
 * prefix of 0xff bytes only (or empty) has the end "\0" (every key from
 * prefix on), *end_len 1. */
void etcd_prefix_end(const char *prefix, size_t len, char *out, size_t *end_len);

/* Request bodies (malloc'd NUL-terminated JSON, NULL on OOM):
 * {"key": B64(prefix), "range_end": B64(end)} for /v3/kv/range, and
 * {"create_request": {"key", "range_end", "start_revision": "N",
 * "progress_notify": true}} for /v3/watch. */
char *etcd_range_request(const char *prefix, size_t len);
char *etcd_watch_request(const char *prefix, size_t len, int64_t start_revision);

/* Parses a /v3/kv/range response body. 0, or -1 with why in err (an
 * {"error"} body gives its message; *compacted is set to 1 when that
 * message says the revision was compacted). On 0 the caller frees *out with
 * etcd_range_free. */
int etcd_parse_range(const char *json, size_t len, etcd_range *out, int *compacted, char *err,
                     size_t err_size);
void etcd_range_free(etcd_range *r);

/* Parses one line of a watch stream (without its newline). 0, or -1 with
 * why in err (not JSON, a bad field). On 0 the caller frees *out with
 * etcd_watch_free. */
int etcd_parse_watch(const char *line, size_t len, etcd_watch_resp *out, char *err, size_t err_size);
void etcd_watch_free(etcd_watch_resp *w);

/* 1 when an error message says that the asked revision was compacted
 * ("mvcc: required revision has been compacted"), else 0. */
int etcd_is_compacted_message(const char *msg);

/* An endpoint value: a JSON object {"address": IP, "port": 1..65535,
 * "weight": 1..10000 (optional, default 1)}; other members are ignored. The
 * address is an IPv4 or IPv6 literal (IPv6 with or without brackets).
 * Writes "ip:port" or "[v6]:port" into addr (ETCD_ADDR_MAX bytes) and the
 * weight into *weight. 0, or -1 with why in err ("not JSON", "port: ...").
 */
int etcd_parse_endpoint(const char *value, size_t len, char *addr, uint32_t *weight, char *err,
                        size_t err_size);

/* A bounded, printable copy of bytes for a log line: printable ASCII as is,
 * the rest as \xNN, cut with "..." to fit out (out_size bytes, NUL-terminated). */
void etcd_printable(const char *s, size_t n, char *out, size_t out_size);

/* Cuts a body that arrives in pieces into lines ('\n'-terminated; a '\r'
 * before it and empty lines are dropped). */
typedef struct etcd_lines {
    char *buf;  /* the start of an unfinished line, malloc'd */
    size_t len; /* bytes in buf */
    size_t cap;
    size_t max; /* longest line accepted; 0 = 64 MiB */
} etcd_lines;

/* Feeds n bytes; calls cb(arg, line, len) for each complete line, in order.
 * Returns 0; -1 when a line grew past max or memory ran out (the splitter
 * is then reset); or the first non-zero value cb returned (the rest of
 * data is dropped and the splitter reset: the caller is done with the
 * stream). */
int etcd_lines_feed(etcd_lines *l, const char *data, size_t n,
                    int (*cb)(void *arg, const char *line, size_t len), void *arg);
/* Drops a partial line and frees the buffer (the splitter can be used again). */
void etcd_lines_reset(etcd_lines *l);

#endif
