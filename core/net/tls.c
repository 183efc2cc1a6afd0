/*
 * tls.c — the TLS transport kind on wolfSSL: contexts made from sk_tls_opts,
 * and the ops (handshake, read, writev, shutdown, close) of a connection,
 * non-blocking on the transport's fd with wolfSSL's own socket I/O.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "tls.h"

/* TLS 1.3 suites, then forward-secret ECDHE with AEAD only (DESIGN.md). */
#define DEFAULT_CIPHERS                                                                        \
    "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:"          \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

#define SPIFFE_MAX   2048 /* the X509-SVID limit of an ID's length */
#define GEN_URI_TYPE 6    /* GeneralName uniformResourceIdentifier (RFC 5280) */

struct sk_tls_ctx {
    WOLFSSL_CTX *ctx;
    bool server;
    sk_tls_verify verify;
    char *alpn; /* comma-separated, or NULL */
    char *sni;  /* client default, or NULL */
};

/* One connection's state (t->ctx). */
typedef struct tls_conn {
    WOLFSSL *ssl;
    sk_tls_ctx *c;
    int fd;         /* the fd given to wolfSSL, -1 until known */
    char *identity; /* the peer's SPIFFE ID (t->peer_identity), or NULL */
    char err[96];   /* why the last operation failed */
} tls_conn;

static void init_once(void)
{
    static bool done;
    if (!done) wolfSSL_Init(); /* idempotent; never cleaned up (contexts may outlive each other) */
    done = true;
}

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

/* Makes a context (see tls.h). */
sk_tls_ctx *sk_tls_ctx_new(const sk_tls_opts *o, char *err, size_t n)
{
    init_once();
    sk_tls_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    c->server = o->server;
    c->verify = o->verify;
    c->ctx = wolfSSL_CTX_new(o->server ? wolfTLS_server_method() : wolfTLS_client_method());
    if (!c->ctx) {
        snprintf(err, n, "cannot make a TLS context");
        goto fail;
    }
    int minv = o->min_version ? o->min_version : 12;
    if (minv != 12 && minv != 13) {
        snprintf(err, n, "min_version must be 1.2 or 1.3");
        goto fail;
    }
    if (wolfSSL_CTX_SetMinVersion(c->ctx, minv == 13 ? WOLFSSL_TLSV1_3 : WOLFSSL_TLSV1_2) !=
        WOLFSSL_SUCCESS) {
        snprintf(err, n, "cannot set the minimum TLS version");
        goto fail;
    }
    const char *ciphers = o->ciphers ? o->ciphers : DEFAULT_CIPHERS;
    if (wolfSSL_CTX_set_cipher_list(c->ctx, ciphers) != WOLFSSL_SUCCESS) {
        snprintf(err, n, "bad cipher list '%s'", ciphers);
        goto fail;
    }
    if (o->server && (!o->cert || !o->key)) {
        snprintf(err, n, "a server needs cert and key");
        goto fail;
    }
    if (!o->cert != !o->key) {
        snprintf(err, n, "cert and key go together");
        goto fail;
    }
    if (o->cert) {
        if (wolfSSL_CTX_use_certificate_chain_file(c->ctx, o->cert) != WOLFSSL_SUCCESS) {
            snprintf(err, n, "cannot load certificate '%s'", o->cert);
            goto fail;
        }
        if (wolfSSL_CTX_use_PrivateKey_file(c->ctx, o->key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
            snprintf(err, n, "cannot load key '%s'", o->key);
            goto fail;
        }
        if (wolfSSL_CTX_check_private_key(c->ctx) != WOLFSSL_SUCCESS) {
            snprintf(err, n, "key '%s' does not match certificate '%s'", o->key, o->cert);
            goto fail;
        }
    }
    if (o->verify != SK_TLS_VERIFY_NONE && !o->ca) {
        snprintf(err, n, "verify needs a ca file");
        goto fail;
    }
    if (o->ca && wolfSSL_CTX_load_verify_locations(c->ctx, o->ca, NULL) != WOLFSSL_SUCCESS) {
        snprintf(err, n, "cannot load ca '%s'", o->ca);
        goto fail;
    }
    int mode = WOLFSSL_VERIFY_NONE;
    if (o->verify != SK_TLS_VERIFY_NONE) mode = WOLFSSL_VERIFY_PEER;
    if (o->server && o->verify == SK_TLS_VERIFY_REQUIRED) mode |= WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    wolfSSL_CTX_set_verify(c->ctx, mode, NULL);
    c->alpn = dup_or_null(o->alpn);
    c->sni = o->server ? NULL : dup_or_null(o->sni);
    if ((o->alpn && *o->alpn && !c->alpn) || (!o->server && o->sni && *o->sni && !c->sni)) {
        snprintf(err, n, "out of memory");
        goto fail;
    }
    return c;
fail:
    sk_tls_ctx_free(c);
    return NULL;
}

/* Frees a context (see tls.h). */
void sk_tls_ctx_free(sk_tls_ctx *c)
{
    if (!c) return;
    if (c->ctx) wolfSSL_CTX_free(c->ctx);
    free(c->alpn);
    free(c->sni);
    free(c);
}

/* Makes a connection's state (see tls.h). */
void *sk_tls_conn_new(sk_tls_ctx *c, int fd, const char *sni)
{
    tls_conn *k = calloc(1, sizeof(*k));
    if (!k) return NULL;
    k->c = c;
    k->fd = -1;
    k->ssl = wolfSSL_new(c->ctx);
    if (!k->ssl) goto fail;
    if (fd >= 0) {
        if (wolfSSL_set_fd(k->ssl, fd) != WOLFSSL_SUCCESS) goto fail;
        k->fd = fd;
    }
    if (c->alpn && wolfSSL_UseALPN(k->ssl, c->alpn, (unsigned)strlen(c->alpn),
                                   WOLFSSL_ALPN_CONTINUE_ON_MISMATCH) != WOLFSSL_SUCCESS)
        goto fail;
    const char *name = sni ? sni : c->sni;
    if (!c->server && name &&
        wolfSSL_UseSNI(k->ssl, WOLFSSL_SNI_HOST_NAME, name, (unsigned short)strlen(name)) != WOLFSSL_SUCCESS)
        goto fail;
    return k;
fail:
    sk_tls_conn_free(k);
    return NULL;
}

/* Frees a state that never reached a transport (see tls.h). */
void sk_tls_conn_free(void *state)
{
    tls_conn *k = state;
    if (!k) return;
    if (k->ssl) wolfSSL_free(k->ssl);
    free(k->identity);
    free(k);
}

/* Why the last operation failed (see tls.h). */
const char *sk_tls_conn_error(const sk_transport *t)
{
    const tls_conn *k = t->ctx;
    return k && t->ops == &sk_tls_ops ? k->err : "";
}

/* Records wolfSSL's reason for error code e. */
static void set_error(tls_conn *k, int e)
{
    char buf[WOLFSSL_MAX_ERROR_SZ];
    wolfSSL_ERR_error_string_n((unsigned long)e, buf, sizeof(buf));
    snprintf(k->err, sizeof(k->err), "%s", buf);
}

/* A SPIFFE ID by the SPIFFE ID rules: spiffe://trust-domain[/path], the
 * trust domain of [a-z0-9.-_], path segments of [a-zA-Z0-9.-_], none empty,
 * "." or "..", no query, fragment, port or user info. */
static bool spiffe_valid(const char *s, size_t len)
{
    if (len > SPIFFE_MAX || len < 10 || strncmp(s, "spiffe://", 9) != 0) return false;
    size_t i = 9, td = 0;
    for (; i < len && s[i] != '/'; i++, td++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_'))
            return false;
    }
    if (td == 0) return false;
    while (i < len) { /* at a '/' */
        size_t start = ++i;
        for (; i < len && s[i] != '/'; i++) {
            char ch = s[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '.' || ch == '-' || ch == '_'))
                return false;
        }
        size_t seg = i - start;
        if (seg == 0) return false;
        if ((seg == 1 && s[start] == '.') || (seg == 2 && s[start] == '.' && s[start + 1] == '.'))
            return false;
    }
    return true;
}

/* The peer's SPIFFE ID: exactly one URI SAN with scheme spiffe, valid, on
 * a verified leaf that is not a CA; else NULL (the caller frees it). */
static char *peer_spiffe_id(tls_conn *k)
{
    if (k->c->verify == SK_TLS_VERIFY_NONE) return NULL; /* nothing verified: no identity */
    WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(k->ssl);
    if (!x) return NULL;
    char *id = NULL;
    int spiffe = 0;
    if (wolfSSL_get_verify_result(k->ssl) == X509_V_OK && !wolfSSL_X509_get_isCA(x)) {
        WOLF_STACK_OF(WOLFSSL_GENERAL_NAME) *names =
            wolfSSL_X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
        int num = names ? wolfSSL_sk_GENERAL_NAME_num(names) : 0;
        for (int i = 0; i < num; i++) {
            WOLFSSL_GENERAL_NAME *g = wolfSSL_sk_GENERAL_NAME_value(names, i);
            if (!g || g->type != GEN_URI_TYPE || !g->d.uniformResourceIdentifier) continue;
            const char *s = (const char *)wolfSSL_ASN1_STRING_data(g->d.uniformResourceIdentifier);
            int len = wolfSSL_ASN1_STRING_length(g->d.uniformResourceIdentifier);
            if (!s || len < 7 || strncasecmp(s, "spiffe:", 7) != 0) continue;
            spiffe++;
            free(id);
            id = NULL;
            if (spiffe == 1 && memchr(s, 0, (size_t)len) == NULL && spiffe_valid(s, (size_t)len))
                id = strndup(s, (size_t)len);
        }
        if (names) wolfSSL_sk_GENERAL_NAME_pop_free(names, wolfSSL_GENERAL_NAME_free);
    }
    wolfSSL_X509_free(x);
    if (spiffe != 1) {
        free(id);
        return NULL;
    }
    return id;
}

/* What the handshake learned: ALPN and the peer identity. */
static void handshake_done(sk_transport *t, tls_conn *k)
{
    char *proto = NULL;
    unsigned short plen = 0;
    t->alpn = NULL;
    if (wolfSSL_ALPN_GetProtocol(k->ssl, &proto, &plen) == WOLFSSL_SUCCESS && proto) {
        if (plen == 2 && memcmp(proto, "h2", 2) == 0)
            t->alpn = "h2";
        else if (plen == 8 && memcmp(proto, "http/1.1", 8) == 0)
            t->alpn = "http/1.1";
    }
    free(k->identity);
    k->identity = peer_spiffe_id(k);
    t->peer_identity = k->identity;
}

static int tls_handshake(sk_transport *t)
{
    tls_conn *k = t->ctx;
    if (k->fd != t->fd) { /* a connect: the transport made the socket */
        if (wolfSSL_set_fd(k->ssl, t->fd) != WOLFSSL_SUCCESS) {
            snprintf(k->err, sizeof(k->err), "cannot attach the socket");
            errno = EPROTO;
            return -1;
        }
        k->fd = t->fd;
    }
    int rc = k->c->server ? wolfSSL_accept(k->ssl) : wolfSSL_connect(k->ssl);
    if (rc == WOLFSSL_SUCCESS) {
        handshake_done(t, k);
        return 0;
    }
    int e = wolfSSL_get_error(k->ssl, rc);
    if (e == WOLFSSL_ERROR_WANT_READ) {
        sk_transport_wait(t, true, false);
        return 1;
    }
    if (e == WOLFSSL_ERROR_WANT_WRITE) {
        sk_transport_wait(t, false, true);
        return 1;
    }
    set_error(k, e);
    errno = (e == SOCKET_PEER_CLOSED_E || e == SOCKET_ERROR_E) ? ECONNRESET : EPROTO;
    return -1;
}

/* Maps a failed wolfSSL read or write: EAGAIN when it waits for the socket
 * (either way: a TLS read may need to write), 0 for EOF on a read. */
static ssize_t io_error(tls_conn *k, int rc, bool reading)
{
    int e = wolfSSL_get_error(k->ssl, rc);
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (reading && (e == WOLFSSL_ERROR_ZERO_RETURN || e == SOCKET_PEER_CLOSED_E)) return 0;
    set_error(k, e);
    errno = (e == SOCKET_PEER_CLOSED_E || e == SOCKET_ERROR_E) ? ECONNRESET : EPROTO;
    return -1;
}

static ssize_t tls_read(sk_transport *t, void *buf, size_t len)
{
    tls_conn *k = t->ctx;
    if (len > INT32_MAX) len = INT32_MAX;
    int rc = wolfSSL_read(k->ssl, buf, (int)len);
    if (rc <= 0) return io_error(k, rc, true);
    /* decrypted bytes the socket will not announce again */
    if (wolfSSL_pending(k->ssl) > 0) sk_transport_feed_read(t);
    return rc;
}

static ssize_t tls_writev(sk_transport *t, const struct iovec *iov, int iovcnt)
{
    tls_conn *k = t->ctx;
    ssize_t done = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len == 0) continue;
        size_t len = iov[i].iov_len > INT32_MAX ? INT32_MAX : iov[i].iov_len;
        int rc = wolfSSL_write(k->ssl, iov[i].iov_base, (int)len);
        if (rc <= 0) {
            ssize_t r = io_error(k, rc, false);
            return done > 0 && errno == EAGAIN ? done : r;
        }
        done += rc;
        if ((size_t)rc < iov[i].iov_len) break;
    }
    return done;
}

/* close_notify (one attempt; a full socket drops it), then the TCP half close. */
static void tls_shutdown(sk_transport *t)
{
    tls_conn *k = t->ctx;
    if (t->fd < 0) return;
    if (k && k->fd == t->fd) wolfSSL_shutdown(k->ssl);
    shutdown(t->fd, SHUT_WR);
}

static void tls_close(sk_transport *t)
{
    sk_tls_conn_free(t->ctx);
    t->ctx = NULL;
    t->peer_identity = NULL;
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
}

const sk_transport_ops sk_tls_ops = {
    .read = tls_read,
    .writev = tls_writev,
    .handshake = tls_handshake,
    .shutdown = tls_shutdown,
    .close = tls_close,
};
