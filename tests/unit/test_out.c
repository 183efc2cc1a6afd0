/*
 * test_out.c — unit tests of out.c, the write queue sk_out: pieces by
 * reference and by copy, more pieces than SK_OUT_IOV (they spill into the
 * backlog), partial writes and EAGAIN from a fake transport, sk_out_detach
 * and write errors. Every case compares what the transport received, byte
 * for byte, with the concatenation of what was queued; referenced memory is
 * overwritten after each flush, so a reference that outlived its flush
 * shows up as wrong bytes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "out.h"

#include "check.h"

/* A transport whose writev takes at most `take` bytes per call (0: all)
 * and `budget` bytes until it says EAGAIN (SIZE_MAX: no limit), or fails
 * with `fail` (an errno value). It keeps what it was given in got[]. */
typedef struct fake {
    sk_transport t;
    char got[1 << 16];
    size_t len;
    size_t take;
    size_t budget;
    int fail;
    int calls;
    int max_iovcnt;
} fake;

static ssize_t fake_writev(sk_transport *t, const struct iovec *iov, int iovcnt)
{
    fake *f = t->data;
    f->calls++;
    if (iovcnt > f->max_iovcnt) f->max_iovcnt = iovcnt;
    if (f->fail) {
        errno = f->fail;
        return -1;
    }
    if (f->budget == 0) {
        errno = EAGAIN;
        return -1;
    }
    size_t room = f->budget;
    if (f->take && f->take < room) room = f->take;
    if (room > sizeof(f->got) - f->len) room = sizeof(f->got) - f->len;
    size_t n = 0;
    for (int i = 0; i < iovcnt && n < room; i++) {
        size_t k = iov[i].iov_len < room - n ? iov[i].iov_len : room - n;
        memcpy(f->got + f->len + n, iov[i].iov_base, k);
        n += k;
    }
    f->len += n;
    if (f->budget != SIZE_MAX) f->budget -= n;
    return (ssize_t)n;
}

static const sk_transport_ops fake_ops = {.writev = fake_writev};

static void fake_init(fake *f)
{
    memset(f, 0, sizeof(*f));
    f->t.ops = &fake_ops;
    f->t.data = f;
    f->t.fd = 1000; /* never used: only fake_writev sees it */
    f->budget = SIZE_MAX;
}

/* The stream that was queued, in order. */
static char expect[1 << 16];
static size_t expect_len;

static void queue_ref(sk_out *o, const char *p, size_t n)
{
    CHECK(sk_out_ref(o, p, n) == 0);
    memcpy(expect + expect_len, p, n);
    expect_len += n;
}

static void queue_copy(sk_out *o, const char *p, size_t n)
{
    CHECK(sk_out_copy(o, p, n) == 0);
    memcpy(expect + expect_len, p, n);
    expect_len += n;
}

static bool got_expected(const fake *f)
{
    return f->len == expect_len && memcmp(f->got, expect, expect_len) == 0;
}

static void fill(char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) p[i] = (char)('a' + (seed + i * 7) % 26);
}

/* References and copies, interleaved, written in one flush. */
static void test_ref_and_copy(void)
{
    fake f;
    fake_init(&f);
    sk_out o = {0};
    expect_len = 0;
    char a[100], b[3000];
    fill(a, sizeof(a), 1);
    fill(b, sizeof(b), 2);
    queue_ref(&o, a, sizeof(a));
    queue_copy(&o, "\r\n", 2);
    queue_copy(&o, b, sizeof(b)); /* larger than scratch: into the backlog */
    queue_ref(&o, a, 10);
    CHECK(sk_out_ref(&o, a, 0) == 0 && sk_out_copy(&o, a, 0) == 0); /* empty pieces: nothing */
    CHECK(sk_out_pending(&o) == expect_len);
    CHECK(sk_out_flush(&o, &f.t) == 0);
    CHECK(sk_out_pending(&o) == 0);
    CHECK(got_expected(&f));
    sk_out_free(&o);
}

/* More referenced pieces than the iov holds: the older ones are copied to
 * the backlog, which is written first; writev never gets more than
 * SK_OUT_IOV + 1 entries. */
static void test_iov_limit(void)
{
    fake f;
    fake_init(&f);
    sk_out o = {0};
    expect_len = 0;
    static char pieces[SK_OUT_IOV * 3][40];
    for (int i = 0; i < SK_OUT_IOV * 3; i++) {
        fill(pieces[i], sizeof(pieces[i]), (unsigned)i);
        queue_ref(&o, pieces[i], (size_t)(i % 40) + 1);
        CHECK(o.niov <= SK_OUT_IOV);
        if (i == SK_OUT_IOV) CHECK(sk_buf_pending(&o.backlog) > 0); /* spilled */
    }
    CHECK(sk_out_pending(&o) == expect_len);
    CHECK(sk_out_flush(&o, &f.t) == 0);
    CHECK(got_expected(&f));
    CHECK(f.max_iovcnt <= SK_OUT_IOV + 1);
    /* small copies fill scratch and the iov too, and spill the same way */
    fake_init(&f);
    expect_len = 0;
    for (int i = 0; i < SK_OUT_IOV * 4; i++) queue_copy(&o, pieces[i % (SK_OUT_IOV * 3)], 11);
    CHECK(sk_out_flush(&o, &f.t) == 0);
    CHECK(got_expected(&f));
    sk_out_free(&o);
}

/* A transport that takes k bytes per call and then says EAGAIN: each flush
 * writes what it can and copies the rest aside (nothing stays referenced),
 * and the stream comes out whole and in order for every k. */
static void test_partial_writev(void)
{
    static char src[64][64];
    for (size_t k = 1; k <= 70; k += (k < 16 ? 1 : 9)) {
        fake f;
        fake_init(&f);
        f.take = k;
        sk_out o = {0};
        expect_len = 0;
        unsigned rng = (unsigned)k * 2654435761u;
        for (int round = 0; round < 20; round++) {
            int n = 0;
            for (int i = 0; i < 12; i++) {
                rng = rng * 1103515245u + 12345u;
                size_t len = (rng >> 16) % 60;
                fill(src[n], sizeof(src[n]), rng >> 8);
                if ((rng >> 12) & 1)
                    queue_ref(&o, src[n++], len);
                else
                    queue_copy(&o, src[n++], len);
            }
            f.budget = (rng >> 20) % 200; /* then EAGAIN */
            size_t before = sk_out_pending(&o);
            CHECK(sk_out_flush(&o, &f.t) == 0);
            CHECK(sk_out_pending(&o) + f.len == expect_len);
            CHECK(sk_out_pending(&o) <= before);
            CHECK(o.niov == 0); /* what is left was copied: the sources may go */
            for (int i = 0; i < n; i++) memset(src[i], '#', sizeof(src[i]));
            CHECK(f.len <= expect_len && memcmp(f.got, expect, f.len) == 0);
        }
        f.budget = SIZE_MAX;
        CHECK(sk_out_flush(&o, &f.t) == 0);
        CHECK(sk_out_pending(&o) == 0);
        CHECK(got_expected(&f));
        sk_out_free(&o);
    }
}

/* EAGAIN on the first call: flush returns 0, everything is kept (copied). */
static void test_eagain(void)
{
    fake f;
    fake_init(&f);
    f.budget = 0;
    sk_out o = {0};
    expect_len = 0;
    char a[500];
    fill(a, sizeof(a), 3);
    queue_copy(&o, "head ", 5);
    queue_ref(&o, a, sizeof(a));
    CHECK(sk_out_flush(&o, &f.t) == 0);
    CHECK(f.calls == 1 && f.len == 0);
    CHECK(sk_out_pending(&o) == expect_len);
    memset(a, 0, sizeof(a));
    f.budget = SIZE_MAX;
    CHECK(sk_out_flush(&o, &f.t) == 0);
    CHECK(got_expected(&f));
    sk_out_free(&o);
}

/* sk_out_detach copies referenced pieces; a flush without a transport
 * (not connected yet) does the same and writes nothing. */
static void test_detach(void)
{
    fake f;
    fake_init(&f);
    sk_out o = {0};
    expect_len = 0;
    char a[50], b[70];
    fill(a, sizeof(a), 4);
    fill(b, sizeof(b), 5);
    queue_ref(&o, a, sizeof(a));
    queue_copy(&o, "--", 2);
    CHECK(sk_out_detach(&o) == 0);
    CHECK(o.niov == 0 && sk_out_pending(&o) == expect_len);
    memset(a, 0, sizeof(a));
    queue_ref(&o, b, sizeof(b));
    CHECK(sk_out_flush(&o, NULL) == 0);
    CHECK(o.niov == 0 && sk_out_pending(&o) == expect_len);
    memset(b, 0, sizeof(b));
    f.t.fd = -1; /* a closed transport is not written either */
    CHECK(sk_out_flush(&o, &f.t) == 0);
    CHECK(f.calls == 0);
    f.t.fd = 1000;
    CHECK(sk_out_flush(&o, &f.t) == 0);
    CHECK(got_expected(&f));
    sk_out_free(&o);
}

/* A write error is returned with errno; sk_out_clear drops the queue. */
static void test_error_and_clear(void)
{
    fake f;
    fake_init(&f);
    f.fail = EPIPE;
    sk_out o = {0};
    char a[20];
    fill(a, sizeof(a), 6);
    CHECK(sk_out_ref(&o, a, sizeof(a)) == 0);
    CHECK(sk_out_copy(&o, a, sizeof(a)) == 0);
    errno = 0;
    CHECK(sk_out_flush(&o, &f.t) == -1);
    CHECK(errno == EPIPE);
    CHECK(sk_out_pending(&o) == 40);
    sk_out_clear(&o);
    CHECK(sk_out_pending(&o) == 0 && o.niov == 0);
    f.fail = 0;
    CHECK(sk_out_flush(&o, &f.t) == 0);
    CHECK(f.len == 0);
    sk_out_free(&o);
}

int main(void)
{
    test_ref_and_copy();
    test_iov_limit();
    test_partial_writev();
    test_eagain();
    test_detach();
    test_error_and_clear();
    printf("test_out: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
