/*
 * accesslog.c — one JSON object per finished request or TCP relay, written
 * with a single write(2) to the worker's access log fd (stdout, stderr or an
 * O_APPEND file), so lines from several workers never interleave.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "accesslog.h"
#include "head.h"

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned min;
    unsigned cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2, min = 0x80, cp = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3, min = 0x800, cp = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4, min = 0x10000, cp = s[0] & 0x07;
    else
        return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Appends s as a JSON string (with quotes), or null. Valid UTF-8 passes
 * through; control characters are \u-escaped; bytes that are not UTF-8
 * become the text \xNN, so every line stays valid JSON. */
static void json_str(sk_buf *b, const char *s, size_t n)
{
    if (!s) {
        sk_buf_append(b, "null", 4);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    sk_buf_append(b, "\"", 1);
    size_t start = 0;
    for (size_t i = 0; i < n;) {
        unsigned char ch = u[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch < 0x7f) {
            i++;
            continue;
        }
        if (ch >= 0x80) {
            size_t l = utf8_len(u + i, n - i);
            if (l) {
                i += l;
                continue;
            }
        }
        sk_buf_append(b, s + start, i - start);
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            sk_buf_append(b, esc, 2);
        } else if (ch >= 0x80) {
            char esc[6] = {'\\', '\\', 'x', hex[ch >> 4], hex[ch & 15]};
            sk_buf_append(b, esc, 5);
        } else {
            char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            sk_buf_append(b, esc, 6);
        }
        start = ++i;
    }
    sk_buf_append(b, s + start, n - start);
    sk_buf_append(b, "\"", 1);
}

static void json_cstr(sk_buf *b, const char *s)
{
    json_str(b, s, s ? strlen(s) : 0);
}

/* Starts a line in the thread's buffer: time, generation, "listener":. */
static sk_buf *line_start(sk_wctx *w, uint64_t generation)
{
    sk_buf *b = &w->logline;
    sk_buf_reset(b);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    sk_buf_printf(b, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"generation\":%llu,\"listener\":",
                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  ts.tv_nsec / 1000000, (unsigned long long)generation);
    return b;
}

/* Ends the line and writes it with one write(2). */
static void line_end(sk_wctx *w, sk_buf *b)
{
    sk_buf_append(b, "}\n", 2);
    if (b->len && b->data) {
        ssize_t n = write(w->accesslog_fd, b->data, b->len);
        SK_UNUSED(n);
    }
}

/* Is s (n bytes or more) a trace id: 32 lowercase hex digits, not all zero? */
static bool trace_id_ok(const char *s, size_t n)
{
    if (n < 32) return false;
    bool nonzero = false;
    for (size_t i = 0; i < 32; i++) {
        char ch = s[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
        nonzero |= ch != '0';
    }
    return nonzero;
}

/* The trace id of the request: metadata trace_id (what the tracing plugin
 * sent upstream, whatever the propagation format), else the trace-id field
 * of the traceparent header as it went upstream; NULL when neither is a
 * trace id. Points at 32 characters, not NUL-terminated. */
static const char *trace_id(const sk_request *r)
{
    for (const sk_meta *m = r->meta; m; m = m->next)
        if (strcmp(m->key, "trace_id") == 0) {
            if (strlen(m->value) == 32 && trace_id_ok(m->value, 32)) return m->value;
            break; /* the newest value only */
        }
    const sk_header *tp =
        r->head.views && r->state != SK_REQ_HEAD ? sk_head_get(&r->head, "traceparent") : NULL;
    if (tp && tp->value_len >= 35 && tp->value[2] == '-' && trace_id_ok(tp->value + 3, tp->value_len - 3) &&
        (tp->value_len == 35 || tp->value[35] == '-'))
        return tp->value + 3;
    return NULL;
}

/* Writes the access log line of a finished (or aborted) request. */
void sk_accesslog_write(sk_request *r)
{
    sk_wctx *w = r->worker;
    if (w->accesslog_fd < 0) return;
    sk_buf *b = line_start(w, r->config->generation);
    uint64_t now = sk_now_ns();
    double dur = r->start_ns ? (double)(now - r->start_ns) / 1e6 : 0.0;
    double updur = -1;
    if (r->upstream_start_ns)
        updur = (double)((r->upstream_end_ns ? r->upstream_end_ns : now) - r->upstream_start_ns) / 1e6;

    json_cstr(b, r->listener->name);
    sk_buf_append(b, ",\"route\":", 9);
    json_cstr(b, r->route ? r->route->name : NULL);
    sk_buf_append(b, ",\"cluster\":", 11);
    json_cstr(b, r->cluster ? r->cluster->name : NULL);
    sk_buf_append(b, ",\"endpoint\":", 12);
    json_cstr(b, r->endpoint[0] ? r->endpoint : NULL);
    sk_buf_append(b, ",\"client\":", 10);
    json_cstr(b, r->client_addr);
    sk_buf_append(b, ",\"identity\":", 12);
    json_cstr(b, r->identity);
    sk_buf_append(b, ",\"method\":", 10);
    json_cstr(b, r->method);
    sk_buf_append(b, ",\"authority\":", 13);
    json_str(b, r->authority, r->authority_len);
    sk_buf_append(b, ",\"path\":", 8);
    if (r->head.url_len && r->head.raw.data)
        json_str(b, r->head.raw.data + r->head.url, r->head.url_len);
    else
        json_str(b, NULL, 0);
    if (r->version >= 20)
        sk_buf_printf(b, ",\"protocol\":\"HTTP/%d\",\"status\":%d,\"reason\":", r->version / 10, r->status);
    else
        sk_buf_printf(b, ",\"protocol\":\"HTTP/1.%d\",\"status\":%d,\"reason\":", r->version % 10, r->status);
    json_cstr(b, r->reason);
    sk_buf_printf(
        b, ",\"bytes_received\":%llu,\"bytes_sent\":%llu,\"duration_ms\":%.3f,\"upstream_duration_ms\":",
        (unsigned long long)r->bytes_received, (unsigned long long)r->bytes_sent, dur);
    if (updur >= 0)
        sk_buf_printf(b, "%.3f", updur);
    else
        sk_buf_append(b, "null", 4);
    sk_buf_printf(b, ",\"attempts\":%u,\"request_id\":", r->attempts);
    json_cstr(b, r->request_id[0] ? r->request_id : NULL);
    sk_buf_append(b, ",\"trace_id\":", 12);
    const char *tid = trace_id(r);
    json_str(b, tid, tid ? 32 : 0);
    line_end(w, b);
}

/* Writes the access log line of a finished TCP relay (see accesslog.h). */
void sk_accesslog_write_tcp(sk_wctx *w, const sk_tcp_log *e)
{
    if (w->accesslog_fd < 0) return;
    sk_buf *b = line_start(w, e->generation);
    json_cstr(b, e->listener);
    sk_buf_puts(b, ",\"protocol\":\"tcp\",\"cluster\":");
    json_cstr(b, e->cluster);
    sk_buf_append(b, ",\"endpoint\":", 12);
    json_cstr(b, e->endpoint);
    sk_buf_append(b, ",\"client\":", 10);
    json_cstr(b, e->client);
    sk_buf_append(b, ",\"identity\":", 12);
    json_cstr(b, e->identity);
    sk_buf_printf(b, ",\"bytes_received\":%llu,\"bytes_sent\":%llu,\"duration_ms\":%.3f,\"reason\":",
                  (unsigned long long)e->bytes_in, (unsigned long long)e->bytes_out, e->duration_ms);
    json_cstr(b, e->reason);
    line_end(w, b);
}
