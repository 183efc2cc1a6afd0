/*
 * tls.c — the TLS transport kind on wolfSSL: contexts made from sk_tls_opts
 * (with their certificate's details and a key check), the ops (handshake,
 * read, writev, shutdown, close) of a connection, non-blocking on the
 * transport's fd with wolfSSL's own socket I/O, the outcome of every
 * handshake counted and a failure logged once, client sessions kept for
 * resumption, and the slots that hold a [tls] section's contexts and swap
 * them when its files change.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/error-ssl.h>
#include <wolfssl/openssl/evp.h>
#include <wolfssl/openssl/pem.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>

#include "tls.h"

/* TLS 1.3 suites, then forward-secret ECDHE with AEAD only (DESIGN.md).
 * ChaCha20-Poly1305 first: Debian's wolfSSL has no AES-NI, and there it is
 * the faster AEAD (docs/performance.md, TLS). */
#define DEFAULT_CIPHERS                                                                                \
    "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"                  \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:"         \
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"

#define SPIFFE_MAX   2048 /* the X509-SVID limit of an ID's length */
#define GEN_URI_TYPE 6    /* GeneralName uniformResourceIdentifier (RFC 5280) */
#define SESSIONS     64   /* client sessions kept per context, by peer address */
#define WRITE_CHUNK  16384 /* small pieces are gathered into one record up to this */
#define READ_AHEAD   2048  /* bytes read past what wolfSSL asks for: a small record in one recv */

/* A session to resume with a peer (client contexts). */
typedef struct session_slot {
    struct sockaddr_storage addr; /* the peer (family 0: empty) */
    WOLFSSL_SESSION *sess;        /* owned */
} session_slot;

/* A session a server context made, by its id (server contexts). */
typedef struct cached_session {
    unsigned char id[32];
    unsigned len;
    WOLFSSL_SESSION *sess; /* a reference */
} cached_session;

#define CACHED 256 /* sessions a server context keeps (each with its peer's chain: about 2 KB) */

struct sk_tls_ctx {
    int refcnt; /* atomic */
    WOLFSSL_CTX *ctx;
    bool server;
    sk_tls_verify verify;
    char *alpn;       /* comma-separated, or NULL */
    char *sni;        /* client default, or NULL */
    char **peer_ids;  /* allow-list (copies) */
    size_t npeer_ids; /* its length */
    sk_tls_cert_info info;
    pthread_mutex_t lock; /* guards sessions and cached */
    session_slot sessions[SESSIONS];
    cached_session *cached; /* server: this context's own session cache (CACHED slots), or NULL */
};

/* One connection's state (t->ctx). */
typedef struct tls_conn {
    WOLFSSL *ssl;
    sk_tls_ctx *c;  /* a reference */
    sk_metrics *m;  /* counts the outcome, or NULL */
    int fd;         /* the fd given to wolfSSL, -1 until known */
    int result;     /* enum sk_tls_result once known, -1 before */
    bool started;   /* the first handshake step ran (after the plain-text check) */
    bool failed;    /* the handshake failed: no I/O any more */
    bool saved;     /* a client session was kept for resumption */
    bool got_data;  /* application bytes were read */
    char *identity; /* the peer's SPIFFE ID (t->peer_identity), or NULL */
    char err[128];  /* why the last operation failed */
    struct sockaddr_storage peer;     /* the peer, read when the socket is attached (family 0: unknown) */
    uint16_t rpos, rlen;              /* unread bytes of ahead are ahead[rpos..rlen) */
    unsigned char ahead[READ_AHEAD]; /* read ahead of wolfSSL (it asks for a record's header, then its body) */
} tls_conn;

/* wolfSSL's receive callback: serves the read-ahead bytes, and reads ahead
 * when they are gone, so that a small record costs one recv, not two (the
 * header, then the body). Large asks go straight to the socket. */
static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
    tls_conn *k = arg;
    if (k->rpos == k->rlen) {
        bool direct = sz >= READ_AHEAD;
        ssize_t n = recv(k->fd, direct ? (void *)buf : (void *)k->ahead, direct ? (size_t)sz : READ_AHEAD, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return WOLFSSL_CBIO_ERR_WANT_READ;
            if (errno == EINTR) return WOLFSSL_CBIO_ERR_ISR;
            if (errno == ECONNRESET) return WOLFSSL_CBIO_ERR_CONN_RST;
            return WOLFSSL_CBIO_ERR_GENERAL;
        }
        if (n == 0) return WOLFSSL_CBIO_ERR_CONN_CLOSE;
        if (direct) return (int)n;
        k->rpos = 0;
        k->rlen = (uint16_t)n;
    }
    int take = SK_MIN(sz, (int)(k->rlen - k->rpos));
    memcpy(buf, k->ahead + k->rpos, (size_t)take);
    k->rpos = (uint16_t)(k->rpos + take);
    return take;
}

/* Gives wolfSSL socket fd, read through io_recv. */
static bool peer_of(int fd, struct sockaddr_storage *a);

static int attach_fd(tls_conn *k, int fd)
{
    if (wolfSSL_set_fd(k->ssl, fd) != WOLFSSL_SUCCESS) return -1;
    k->fd = fd;
    peer_of(fd, &k->peer); /* now: a peer that hangs up mid-handshake is still named in the log */
    wolfSSL_SSLSetIORecv(k->ssl, io_recv);
    wolfSSL_SetIOReadCtx(k->ssl, k);
    return 0;
}

static void init_once(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, (void (*)(void))wolfSSL_Init); /* never cleaned up: contexts may outlive each other */
}

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

/* ---- certificates ---- */

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

/* The SPIFFE ID of certificate x by the X509-SVID rules: not a CA, exactly
 * one URI SAN with scheme spiffe, and that one valid. NULL otherwise (the
 * caller frees it). */
static char *svid_id(WOLFSSL_X509 *x)
{
    if (wolfSSL_X509_get_isCA(x)) return NULL;
    WOLF_STACK_OF(WOLFSSL_GENERAL_NAME) *names = wolfSSL_X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int num = names ? wolfSSL_sk_GENERAL_NAME_num(names) : 0, spiffe = 0;
    char *id = NULL;
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
    if (spiffe != 1) {
        free(id);
        return NULL;
    }
    return id;
}

static time_t asn1_time(const WOLFSSL_ASN1_TIME *t)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (!t || wolfSSL_ASN1_TIME_to_tm(t, &tm) != WOLFSSL_SUCCESS) return 0;
    return timegm(&tm);
}

/* Fills info from certificate x. */
static void cert_info(WOLFSSL_X509 *x, sk_tls_cert_info *info)
{
    memset(info, 0, sizeof(*info));
    WOLFSSL_X509_NAME *nm = wolfSSL_X509_get_subject_name(x);
    if (nm) wolfSSL_X509_NAME_oneline(nm, info->subject, (int)sizeof(info->subject));
    char *id = svid_id(x);
    if (id) snprintf(info->spiffe_id, sizeof(info->spiffe_id), "%s", id);
    free(id);
    unsigned char ser[64];
    int sl = (int)sizeof(ser);
    if (wolfSSL_X509_get_serial_number(x, ser, &sl) == WOLFSSL_SUCCESS)
        for (int i = 0; i < sl && (size_t)(2 * i + 2) < sizeof(info->serial); i++)
            sprintf(info->serial + 2 * i, "%02x", ser[i]);
    info->not_before = asn1_time(wolfSSL_X509_get_notBefore(x));
    info->not_after = asn1_time(wolfSSL_X509_get_notAfter(x));
}

/* Does the private key in key_path sign for the leaf certificate x? A test
 * signature verified with the certificate's public key: wolfSSL's own check
 * compares too little for EC keys. 0, or -1 with err. */
static int key_matches(WOLFSSL_X509 *x, const char *key_path, char *err, size_t n)
{
    int rc = -1;
    WOLFSSL_BIO *bio = wolfSSL_BIO_new_file(key_path, "r");
    WOLFSSL_EVP_PKEY *priv = bio ? wolfSSL_PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    WOLFSSL_EVP_PKEY *pub = wolfSSL_X509_get_pubkey(x);
    WOLFSSL_EVP_MD_CTX *md = wolfSSL_EVP_MD_CTX_new();
    unsigned char sig[1024];
    size_t slen = sizeof(sig);
    static const unsigned char probe[] = "sidekick key check";
    if (!priv) {
        snprintf(err, n, "cannot read a private key from '%s'", key_path);
    } else if (!pub || !md) {
        snprintf(err, n, "cannot read the certificate's public key");
    } else if (wolfSSL_EVP_DigestSignInit(md, NULL, wolfSSL_EVP_sha256(), NULL, priv) != WOLFSSL_SUCCESS ||
               wolfSSL_EVP_DigestSignUpdate(md, probe, sizeof(probe)) != WOLFSSL_SUCCESS ||
               wolfSSL_EVP_DigestSignFinal(md, sig, &slen) != WOLFSSL_SUCCESS) {
        snprintf(err, n, "cannot sign with the key in '%s'", key_path);
    } else {
        wolfSSL_EVP_MD_CTX_free(md);
        md = wolfSSL_EVP_MD_CTX_new();
        if (md && wolfSSL_EVP_DigestVerifyInit(md, NULL, wolfSSL_EVP_sha256(), NULL, pub) == WOLFSSL_SUCCESS &&
            wolfSSL_EVP_DigestVerifyUpdate(md, probe, sizeof(probe)) == WOLFSSL_SUCCESS &&
            wolfSSL_EVP_DigestVerifyFinal(md, sig, slen) == WOLFSSL_SUCCESS)
            rc = 0;
        else
            snprintf(err, n, "the key in '%s' does not match the certificate", key_path);
    }
    if (md) wolfSSL_EVP_MD_CTX_free(md);
    if (pub) wolfSSL_EVP_PKEY_free(pub);
    if (priv) wolfSSL_EVP_PKEY_free(priv);
    if (bio) wolfSSL_BIO_free(bio);
    return rc;
}

/* ---- contexts ---- */

static size_t id_slot(const unsigned char *id, unsigned len)
{
    uint32_t h = 2166136261u;
    for (unsigned i = 0; i < len; i++) h = (h ^ id[i]) * 16777619u;
    return h % CACHED;
}

/* wolfSSL's external cache: a new server session (we keep the reference it gives). */
static int cache_new(WOLFSSL *ssl, WOLFSSL_SESSION *sess)
{
    sk_tls_ctx *c = wolfSSL_CTX_get_ex_data(wolfSSL_get_SSL_CTX(ssl), 0);
    unsigned len = 0;
    const unsigned char *id = wolfSSL_SESSION_get_id(sess, &len);
    if (!c || !c->cached || !id || len == 0 || len > 32) return 0;
    cached_session *e = &c->cached[id_slot(id, len)];
    pthread_mutex_lock(&c->lock);
    WOLFSSL_SESSION *old = e->sess;
    memcpy(e->id, id, len);
    e->len = len;
    e->sess = sess;
    pthread_mutex_unlock(&c->lock);
    if (old) wolfSSL_SESSION_free(old);
    return 1;
}

/* A session of this context by id (a reference wolfSSL drops), or NULL. */
static WOLFSSL_SESSION *cache_get(WOLFSSL *ssl, const unsigned char *id, int len, int *copy)
{
    sk_tls_ctx *c = wolfSSL_CTX_get_ex_data(wolfSSL_get_SSL_CTX(ssl), 0);
    *copy = 0;
    if (!c || !c->cached || len <= 0 || len > 32) return NULL;
    cached_session *e = &c->cached[id_slot(id, (unsigned)len)];
    WOLFSSL_SESSION *found = NULL;
    pthread_mutex_lock(&c->lock);
    if (e->sess && e->len == (unsigned)len && memcmp(e->id, id, (size_t)len) == 0 &&
        wolfSSL_SESSION_up_ref(e->sess) == WOLFSSL_SUCCESS)
        found = e->sess;
    pthread_mutex_unlock(&c->lock);
    return found;
}

static void cache_remove(WOLFSSL_CTX *ctx, WOLFSSL_SESSION *sess)
{
    sk_tls_ctx *c = wolfSSL_CTX_get_ex_data(ctx, 0);
    unsigned len = 0;
    const unsigned char *id = wolfSSL_SESSION_get_id(sess, &len);
    if (!c || !c->cached || !id || len == 0 || len > 32) return;
    cached_session *e = &c->cached[id_slot(id, len)];
    WOLFSSL_SESSION *gone = NULL;
    pthread_mutex_lock(&c->lock);
    if (e->sess && e->len == len && memcmp(e->id, id, len) == 0) {
        gone = e->sess;
        e->sess = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (gone) wolfSSL_SESSION_free(gone);
}

static void ctx_free(sk_tls_ctx *c)
{
    if (c->ctx) wolfSSL_CTX_free(c->ctx);
    for (size_t i = 0; i < SESSIONS; i++)
        if (c->sessions[i].sess) wolfSSL_SESSION_free(c->sessions[i].sess);
    for (size_t i = 0; c->cached && i < CACHED; i++)
        if (c->cached[i].sess) wolfSSL_SESSION_free(c->cached[i].sess);
    free(c->cached);
    for (size_t i = 0; i < c->npeer_ids; i++) free(c->peer_ids[i]);
    free(c->peer_ids);
    free(c->alpn);
    free(c->sni);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

#define FAIL(k, ...)                          \
    do {                                      \
        snprintf(err, n, __VA_ARGS__);        \
        if (bad_key) *bad_key = (k);          \
        goto fail;                            \
    } while (0)

/* Makes a context (see tls.h). */
sk_tls_ctx *sk_tls_ctx_new(const sk_tls_opts *o, char *err, size_t n, const char **bad_key)
{
    init_once();
    if (bad_key) *bad_key = NULL;
    WOLFSSL_X509 *leaf = NULL;
    sk_tls_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    c->refcnt = 1;
    pthread_mutex_init(&c->lock, NULL);
    c->server = o->server;
    c->verify = o->verify;
    c->ctx = wolfSSL_CTX_new(o->server ? wolfTLS_server_method() : wolfTLS_client_method());
    if (!c->ctx) FAIL(NULL, "cannot make a TLS context");
    int minv = o->min_version ? o->min_version : 12;
    if (minv != 12 && minv != 13) FAIL("min_version", "min_version must be 1.2 or 1.3");
    if (wolfSSL_CTX_SetMinVersion(c->ctx, minv == 13 ? WOLFSSL_TLSV1_3 : WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS)
        FAIL("min_version", "cannot set the minimum TLS version");
    const char *ciphers = o->ciphers ? o->ciphers : DEFAULT_CIPHERS;
    if (wolfSSL_CTX_set_cipher_list(c->ctx, ciphers) != WOLFSSL_SUCCESS)
        FAIL("ciphers", "bad cipher list '%s' (no suite wolfSSL knows)", ciphers);
    if (o->server && (!o->cert || !o->key)) FAIL(o->cert ? "key" : "cert", "a server needs cert and key");
    if (!o->cert != !o->key) FAIL(o->cert ? "key" : "cert", "cert and key go together");
    if (o->cert) {
        if (access(o->cert, R_OK) != 0) FAIL("cert", "cannot read '%s': %s", o->cert, strerror(errno));
        if (wolfSSL_CTX_use_certificate_chain_file(c->ctx, o->cert) != WOLFSSL_SUCCESS)
            FAIL("cert", "no PEM certificate in '%s'", o->cert);
        if (access(o->key, R_OK) != 0) FAIL("key", "cannot read '%s': %s", o->key, strerror(errno));
        if (wolfSSL_CTX_use_PrivateKey_file(c->ctx, o->key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS)
            FAIL("key", "no PEM private key in '%s' (an encrypted key is not supported)", o->key);
        leaf = wolfSSL_X509_load_certificate_file(o->cert, WOLFSSL_FILETYPE_PEM);
        if (!leaf) FAIL("cert", "no PEM certificate in '%s'", o->cert);
        char kerr[256];
        if (wolfSSL_CTX_check_private_key(c->ctx) != WOLFSSL_SUCCESS || key_matches(leaf, o->key, kerr, sizeof(kerr)) < 0)
            FAIL("key", "the key in '%s' does not match the certificate in '%s'", o->key, o->cert);
        cert_info(leaf, &c->info);
        time_t now = time(NULL);
        if (c->info.not_after && c->info.not_after < now) {
            char when[32];
            struct tm tm;
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&c->info.not_after, &tm));
            FAIL("cert", "the certificate in '%s' expired at %s", o->cert, when);
        }
    }
    if (o->verify != SK_TLS_VERIFY_NONE && !o->ca) FAIL("verify", "verify needs a ca file");
    if (o->ca) {
        if (access(o->ca, R_OK) != 0) FAIL("ca", "cannot read '%s': %s", o->ca, strerror(errno));
        if (wolfSSL_CTX_load_verify_locations(c->ctx, o->ca, NULL) != WOLFSSL_SUCCESS)
            FAIL("ca", "no usable PEM CA certificate in '%s'", o->ca);
    }
    int mode = WOLFSSL_VERIFY_NONE;
    if (o->verify != SK_TLS_VERIFY_NONE) mode = WOLFSSL_VERIFY_PEER;
    if (o->server && o->verify == SK_TLS_VERIFY_REQUIRED) mode |= WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    wolfSSL_CTX_set_verify(c->ctx, mode, NULL);
    /*
     * Resumption on a server. wolfSSL's own session cache is one for the
     * whole process, and 5.5.4 resumes a cached session on any context (the
     * session id context is not enforced): a session made on another
     * listener, or before a CA rotation, would skip this context's checks.
     * So each server context keeps its own cache (wolfSSL's external cache
     * callbacks, the internal one off): TLS 1.2 session IDs and the ids TLS
     * 1.3 tickets carry are looked up only there, and a cached session keeps
     * the peer's certificate chain, so a resumed session keeps its identity.
     * Tickets are encrypted with this context's own key, but a resumed
     * ticket session has no peer certificate unless the client also sends
     * the session's id (OpenSSL does, wolfSSL, sidekick's own client, does
     * not), so a context that verifies client certificates issues no
     * tickets: its TLS 1.2 clients resume by session ID, with their
     * identity; its TLS 1.3 clients make full handshakes.
     */
    if (o->server) {
        c->cached = calloc(CACHED, sizeof(*c->cached));
        if (!c->cached) FAIL(NULL, "out of memory");
        wolfSSL_CTX_set_ex_data(c->ctx, 0, c);
        wolfSSL_CTX_set_session_cache_mode(c->ctx, WOLFSSL_SESS_CACHE_SERVER | WOLFSSL_SESS_CACHE_NO_INTERNAL);
        wolfSSL_CTX_sess_set_new_cb(c->ctx, cache_new);
        wolfSSL_CTX_sess_set_get_cb(c->ctx, cache_get);
        wolfSSL_CTX_sess_set_remove_cb(c->ctx, cache_remove);
        if (o->verify != SK_TLS_VERIFY_NONE) {
            wolfSSL_CTX_NoTicketTLSv12(c->ctx);
            wolfSSL_CTX_no_ticket_TLSv13(c->ctx);
        }
    }
    if (o->server && o->no_tickets) {
        wolfSSL_CTX_NoTicketTLSv12(c->ctx);
        wolfSSL_CTX_no_ticket_TLSv13(c->ctx);
    }
    if (!o->server) wolfSSL_CTX_UseSessionTicket(c->ctx); /* ask for tickets (TLS 1.2) to resume with */
    /* Key exchange: X25519 first. Debian's wolfSSL has generic P-256 code: a
     * full mTLS handshake costs it 782 µs with P-256 and 426 µs with X25519
     * (docs/performance.md, TLS), so a sidecar offers X25519 first. */
    int groups[] = {WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1, WOLFSSL_ECC_SECP384R1};
    if (wolfSSL_CTX_set_groups(c->ctx, groups, (int)SK_ARRAY_LEN(groups)) != WOLFSSL_SUCCESS)
        FAIL(NULL, "cannot set the key exchange groups");
    c->alpn = dup_or_null(o->alpn);
    c->sni = o->server ? NULL : dup_or_null(o->sni);
    if ((o->alpn && *o->alpn && !c->alpn) || (!o->server && o->sni && *o->sni && !c->sni))
        FAIL(NULL, "out of memory");
    if (o->npeer_ids) {
        if (!(c->peer_ids = calloc(o->npeer_ids, sizeof(*c->peer_ids)))) FAIL(NULL, "out of memory");
        for (size_t i = 0; i < o->npeer_ids; i++, c->npeer_ids++)
            if (!(c->peer_ids[i] = strdup(o->peer_ids[i]))) FAIL(NULL, "out of memory");
    }
    if (leaf) wolfSSL_X509_free(leaf);
    return c;
fail:
    if (leaf) wolfSSL_X509_free(leaf);
    ctx_free(c);
    return NULL;
}

void sk_tls_ctx_ref(sk_tls_ctx *c)
{
    if (c) __atomic_add_fetch(&c->refcnt, 1, __ATOMIC_RELAXED);
}

void sk_tls_ctx_unref(sk_tls_ctx *c)
{
    if (c && __atomic_sub_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL) == 0) ctx_free(c);
}

const sk_tls_cert_info *sk_tls_ctx_info(const sk_tls_ctx *c)
{
    return &c->info;
}

/* ---- client sessions (resumption towards upstreams) ---- */

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

static size_t addr_slot(const struct sockaddr_storage *a)
{
    uint32_t h = 2166136261u;
    const unsigned char *p = (const unsigned char *)a;
    size_t len = a->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 16777619u;
    return h % SESSIONS;
}

static bool peer_of(int fd, struct sockaddr_storage *a)
{
    socklen_t len = sizeof(*a);
    memset(a, 0, sizeof(*a));
    if (getpeername(fd, (struct sockaddr *)a, &len) < 0) return false;
    return a->ss_family == AF_INET || a->ss_family == AF_INET6;
}

/* Offers the session kept for this peer, if any. */
static void resume_session(tls_conn *k)
{
    struct sockaddr_storage a = k->peer;
    if (a.ss_family != AF_INET && a.ss_family != AF_INET6) return;
    session_slot *s = &k->c->sessions[addr_slot(&a)];
    pthread_mutex_lock(&k->c->lock);
    if (s->sess && same_addr(&s->addr, &a)) wolfSSL_set_session(k->ssl, s->sess);
    pthread_mutex_unlock(&k->c->lock);
}

/* Keeps the connection's session for the next connection to this peer. */
static void save_session(tls_conn *k)
{
    struct sockaddr_storage a = k->peer;
    if (k->saved || k->c->server || (a.ss_family != AF_INET && a.ss_family != AF_INET6)) return;
    WOLFSSL_SESSION *sess = wolfSSL_get1_session(k->ssl);
    if (!sess) return;
    k->saved = true;
    session_slot *s = &k->c->sessions[addr_slot(&a)];
    pthread_mutex_lock(&k->c->lock);
    WOLFSSL_SESSION *old = s->sess;
    s->sess = sess;
    s->addr = a;
    pthread_mutex_unlock(&k->c->lock);
    if (old) wolfSSL_SESSION_free(old);
}

/* ---- connections ---- */

/* Makes a connection's state (see tls.h). */
void *sk_tls_conn_new(sk_tls_ctx *c, int fd, const char *sni, sk_metrics *m)
{
    tls_conn *k = calloc(1, sizeof(*k));
    if (!k) return NULL;
    sk_tls_ctx_ref(c);
    k->c = c;
    k->m = m;
    k->fd = -1;
    k->result = -1;
    k->ssl = wolfSSL_new(c->ctx);
    if (!k->ssl) goto fail;
    if (fd >= 0 && attach_fd(k, fd) < 0) goto fail;
    if (c->alpn && wolfSSL_UseALPN(k->ssl, c->alpn, (unsigned)strlen(c->alpn),
                                   WOLFSSL_ALPN_CONTINUE_ON_MISMATCH) != WOLFSSL_SUCCESS)
        goto fail;
    const char *name = sni ? sni : c->sni;
    if (!c->server && name &&
        wolfSSL_UseSNI(k->ssl, WOLFSSL_SNI_HOST_NAME, name, (unsigned short)strlen(name)) != WOLFSSL_SUCCESS)
        goto fail;
    /* Without an allow-list, a client checks the name it asked for. */
    if (!c->server && name && c->verify != SK_TLS_VERIFY_NONE && c->npeer_ids == 0 &&
        wolfSSL_check_domain_name(k->ssl, name) != WOLFSSL_SUCCESS)
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
    sk_tls_ctx_unref(k->c);
    free(k->identity);
    free(k);
}

/* Why the last operation failed (see tls.h). */
const char *sk_tls_conn_error(const sk_transport *t)
{
    const tls_conn *k = t->ctx;
    return k && t->ops == &sk_tls_ops ? k->err : "";
}

int sk_tls_conn_result(const sk_transport *t)
{
    const tls_conn *k = t->ctx;
    return k && t->ops == &sk_tls_ops ? k->result : -1;
}

/* Records wolfSSL's reason for error code e. */
static void set_error(tls_conn *k, int e)
{
    char buf[WOLFSSL_MAX_ERROR_SZ];
    wolfSSL_ERR_error_string_n((unsigned long)e, buf, sizeof(buf));
    snprintf(k->err, sizeof(k->err), "%s", buf);
}

/* Counts the handshake's outcome; a failure is logged once, with the peer. */
static void outcome(tls_conn *k, int result)
{
    if (k->result >= 0) return;
    k->result = result;
    if (k->m) SK_INC(k->m->tls_handshakes[k->c->server ? 0 : 1][result]);
    if (result == SK_TLS_OK || result == SK_TLS_RESUMED) return;
    struct sockaddr_storage a = k->peer;
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (a.ss_family == AF_INET || a.ss_family == AF_INET6) {
        if (a.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&a)->sin_addr, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in *)&a)->sin_port);
        } else {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a)->sin6_addr, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
        }
    }
    sk_warn("tls handshake with %s%s%s:%u failed (%s): %s%s%s", a.ss_family == AF_INET6 ? "[" : "", ip,
            a.ss_family == AF_INET6 ? "]" : "", port, k->c->server ? "server" : "client",
            sk_tls_result_names[result], k->err[0] ? ": " : "", k->err);
}

/* The result a failed handshake step with wolfSSL error e stands for. */
static int classify(const tls_conn *k, int e)
{
    switch (e) {
    case ASN_NO_SIGNER_E: return SK_TLS_UNKNOWN_CA;
    case ASN_AFTER_DATE_E: return SK_TLS_EXPIRED;
    case ASN_BEFORE_DATE_E: return SK_TLS_NOT_YET_VALID;
    case NO_PEER_CERT: return k->c->server ? SK_TLS_NO_CLIENT_CERT : SK_TLS_BAD_CERTIFICATE;
    case DOMAIN_NAME_MISMATCH:
    case ASN_SIG_CONFIRM_E:
    case ASN_PARSE_E:
    case ASN_SELF_SIGNED_E: return SK_TLS_BAD_CERTIFICATE;
    case SOCKET_PEER_CLOSED_E:
    case SOCKET_ERROR_E:
    case WOLFSSL_ERROR_SYSCALL:
    case WOLFSSL_ERROR_ZERO_RETURN: return SK_TLS_CLOSED;
    default: return SK_TLS_ERROR;
    }
}

/* Answers a client that speaks plain HTTP to a TLS port in clear text,
 * then lets it go: its request bytes are read away first, so that the
 * close does not reset the answer. */
static void plain_text_answer(int fd)
{
    static const char resp[] = "HTTP/1.1 400 Bad Request\r\n"
                               "content-type: text/plain\r\n"
                               "x-sidekick-reason: bad_request\r\n"
                               "connection: close\r\n"
                               "content-length: 44\r\n"
                               "\r\n"
                               "this port expects TLS: use https:// instead\n";
    _Static_assert(sizeof("this port expects TLS: use https:// instead\n") - 1 == 44, "content-length");
    char sink[4096];
    for (int i = 0; i < 16 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++) continue;
    ssize_t w = send(fd, resp, sizeof(resp) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    shutdown(fd, SHUT_WR);
}

/* What the handshake learned: ALPN and the peer identity, checked against
 * the allow-list (a client refuses the peer; a server's requests get 403). */
static int handshake_done(sk_transport *t, tls_conn *k)
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
    k->identity = NULL;
    if (k->c->verify != SK_TLS_VERIFY_NONE) { /* nothing verified: no identity */
        WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(k->ssl);
        bool resumed = wolfSSL_session_reused(k->ssl);
        if (!x && resumed) { /* the certificate verified when the session was made */
            WOLFSSL_X509_CHAIN *ch = wolfSSL_get_peer_chain(k->ssl);
            if (ch && wolfSSL_get_chain_count(ch) > 0) x = wolfSSL_get_chain_X509(ch, 0);
        }
        if (x && (resumed || wolfSSL_get_verify_result(k->ssl) == X509_V_OK)) k->identity = svid_id(x);
        if (x) wolfSSL_X509_free(x);
    }
    t->peer_identity = k->identity;
    bool allowed = k->c->npeer_ids == 0 || sk_spiffe_allowed(k->c->peer_ids, k->c->npeer_ids, k->identity);
    if (!allowed) {
        snprintf(k->err, sizeof(k->err), "peer identity %s is not in peer_identity",
                 k->identity ? k->identity : "(none)");
        outcome(k, SK_TLS_IDENTITY_MISMATCH);
        if (!k->c->server) {
            k->failed = true;
            errno = EACCES; /* the pool answers 502 upstream_identity_mismatch */
            return -1;
        }
        return 0;
    }
    outcome(k, wolfSSL_session_reused(k->ssl) ? SK_TLS_RESUMED : SK_TLS_OK);
    return 0;
}

static int tls_handshake(sk_transport *t)
{
    tls_conn *k = t->ctx;
    if (k->fd != t->fd && attach_fd(k, t->fd) < 0) { /* a connect: the transport made the socket */
        snprintf(k->err, sizeof(k->err), "cannot attach the socket");
        errno = EPROTO;
        k->failed = true;
        outcome(k, SK_TLS_ERROR);
        return -1;
    }
    if (!k->started) {
        if (k->c->server) { /* a TLS record starts with 0x16 (handshake); anything else is not TLS */
            unsigned char first;
            ssize_t r = recv(t->fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                sk_transport_wait(t, true, false);
                return 1;
            }
            if (r <= 0) {
                snprintf(k->err, sizeof(k->err), "closed before the handshake");
                k->failed = true;
                outcome(k, SK_TLS_CLOSED);
                errno = ECONNRESET;
                return -1;
            }
            if (first != 0x16) {
                snprintf(k->err, sizeof(k->err), "not a TLS client hello (first byte 0x%02x)", first);
                k->failed = true;
                outcome(k, SK_TLS_NOT_TLS);
                if (first >= 'A' && first <= 'Z') plain_text_answer(t->fd);
                errno = EPROTO;
                return -1;
            }
        } else {
            resume_session(k);
        }
        k->started = true;
    }
    int rc = k->c->server ? wolfSSL_accept(k->ssl) : wolfSSL_connect(k->ssl);
    if (rc == WOLFSSL_SUCCESS) return handshake_done(t, k);
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
    k->failed = true;
    int v = (int)wolfSSL_get_verify_result(k->ssl);
    int result = classify(k, e);
    /* the verify result names the certificate problem when the error code is generic */
    if (result == SK_TLS_ERROR && v == ASN_NO_SIGNER_E) result = SK_TLS_UNKNOWN_CA;
    /* the peer refused us with an alert (RFC 8446 §6.2): say what it refused */
    WOLFSSL_ALERT_HISTORY h;
    if (result == SK_TLS_ERROR && e == FATAL_ERROR && wolfSSL_get_alert_history(k->ssl, &h) == WOLFSSL_SUCCESS) {
        int a = h.last_rx.code;
        result = a == 48 ? SK_TLS_UNKNOWN_CA                              /* unknown_ca */
                 : a == 45 ? SK_TLS_EXPIRED                               /* certificate_expired */
                 : a == 116 ? SK_TLS_NO_CLIENT_CERT                       /* certificate_required */
                 : a == 42 || a == 43 || a == 44 || a == 46 ? SK_TLS_BAD_CERTIFICATE
                                                            : SK_TLS_ERROR;
        snprintf(k->err + strlen(k->err), sizeof(k->err) - strlen(k->err), " (alert %d from the peer)", a);
    }
    outcome(k, result);
    errno = result == SK_TLS_CLOSED ? ECONNRESET : EPROTO;
    return -1;
}

/* TLS 1.3: a client's handshake is done before the server has judged its
 * certificate, so a server that refuses it says so with an alert on the
 * first read. That handshake was counted as ok: it is recounted as what
 * the alert says, and logged. */
static void late_refusal(tls_conn *k, int rc)
{
    WOLFSSL_ALERT_HISTORY h;
    if (wolfSSL_get_error(k->ssl, rc) != FATAL_ERROR || wolfSSL_get_alert_history(k->ssl, &h) != WOLFSSL_SUCCESS)
        return;
    int a = h.last_rx.code, result = k->result;
    if (result != SK_TLS_OK && result != SK_TLS_RESUMED) return;
    int now = a == 48 ? SK_TLS_UNKNOWN_CA : a == 45 ? SK_TLS_EXPIRED : a == 116 ? SK_TLS_NO_CLIENT_CERT
              : a == 42 || a == 43 || a == 44 || a == 46 ? SK_TLS_BAD_CERTIFICATE : SK_TLS_ERROR;
    if (k->m) SK_DEC(k->m->tls_handshakes[1][result]);
    snprintf(k->err, sizeof(k->err), "the server refused our certificate (alert %d after the handshake)", a);
    k->result = -1;
    outcome(k, now);
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
    if (reading && (e == WOLFSSL_ERROR_ZERO_RETURN || e == SOCKET_PEER_CLOSED_E || e == WOLFSSL_ERROR_SYSCALL))
        return 0;
    set_error(k, e);
    errno = (e == SOCKET_PEER_CLOSED_E || e == SOCKET_ERROR_E || e == WOLFSSL_ERROR_SYSCALL) ? ECONNRESET : EPROTO;
    return -1;
}

static ssize_t tls_read(sk_transport *t, void *buf, size_t len)
{
    tls_conn *k = t->ctx;
    if (k->failed || k->result < 0) { /* a failed (or never finished) handshake */
        errno = k->failed ? EPROTO : EAGAIN;
        return -1;
    }
    if (len > INT32_MAX) len = INT32_MAX;
    int rc = wolfSSL_read(k->ssl, buf, (int)len);
    if (rc <= 0 && !k->got_data && !k->c->server) late_refusal(k, rc);
    if (rc <= 0) return io_error(k, rc, true);
    k->got_data = true;
    if (!k->saved && !k->c->server) save_session(k); /* TLS 1.3 tickets come after the handshake */
    /* decrypted bytes, or bytes read ahead, that the socket will not announce again */
    if (wolfSSL_pending(k->ssl) > 0 || k->rpos < k->rlen) sk_transport_feed_read(t);
    return rc;
}

/* Writes iov; small pieces are gathered into one record (one syscall), as
 * a response head and its body usually are. A write that must wait keeps
 * its record inside wolfSSL and goes on when called again with the same
 * (or more) bytes, which is what a transport owner does. */
static ssize_t tls_writev(sk_transport *t, const struct iovec *iov, int iovcnt)
{
    tls_conn *k = t->ctx;
    if (k->failed || k->result < 0) {
        errno = EPIPE;
        return -1;
    }
    ssize_t done = 0;
    int i = 0;
    size_t off = 0; /* bytes of iov[i] already written */
    while (i < iovcnt) {
        size_t avail = iov[i].iov_len - off;
        if (avail == 0) {
            i++;
            off = 0;
            continue;
        }
        unsigned char gather[WRITE_CHUNK];
        const unsigned char *p = (const unsigned char *)iov[i].iov_base + off;
        size_t len = avail;
        int ni = i;            /* where the next write starts: iov[ni] at noff */
        size_t noff = off + avail;
        if (avail < WRITE_CHUNK && i + 1 < iovcnt) {
            memcpy(gather, p, avail);
            ni = i + 1;
            noff = 0;
            while (ni < iovcnt && len < WRITE_CHUNK) {
                size_t take = SK_MIN(iov[ni].iov_len, WRITE_CHUNK - len);
                memcpy(gather + len, iov[ni].iov_base, take);
                len += take;
                if (take < iov[ni].iov_len) {
                    noff = take;
                    break;
                }
                ni++;
            }
            p = gather;
        }
        if (len > INT32_MAX) len = INT32_MAX, ni = i, noff = off + len;
        int rc = wolfSSL_write(k->ssl, p, (int)len);
        if (rc <= 0) {
            ssize_t r = io_error(k, rc, false);
            return done > 0 && errno == EAGAIN ? done : r;
        }
        done += rc;
        if ((size_t)rc < len) break;
        i = ni;
        off = noff;
    }
    return done;
}

/* close_notify (one attempt; a full socket drops it), then the TCP half close. */
static void tls_shutdown(sk_transport *t)
{
    tls_conn *k = t->ctx;
    if (t->fd < 0) return;
    if (k && k->fd == t->fd && !k->failed && k->result >= 0) wolfSSL_shutdown(k->ssl);
    shutdown(t->fd, SHUT_WR);
}

static void tls_close(sk_transport *t)
{
    tls_conn *k = t->ctx;
    if (k) {
        if (k->result < 0 && (k->c->server || k->started)) { /* cut while shaking hands: a timeout (or a drain) */
            if (!k->err[0]) snprintf(k->err, sizeof(k->err), "no complete handshake in time");
            outcome(k, SK_TLS_TIMEOUT);
        } else if (!k->failed && !k->c->server) {
            save_session(k);
        }
    }
    sk_tls_conn_free(t->ctx);
    t->ctx = NULL;
    t->peer_identity = NULL;
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
}

void sk_tls_thread_exit(void)
{
#ifdef FP_ECC
    wc_ecc_fp_free();
#endif
}

const sk_transport_ops sk_tls_ops = {
    .read = tls_read,
    .writev = tls_writev,
    .handshake = tls_handshake,
    .shutdown = tls_shutdown,
    .close = tls_close,
};

/* ---- slots: a [tls] section's contexts, swapped on rotation ---- */

/* What a file was when it was read. */
typedef struct stamp {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    bool missing;
} stamp;

struct sk_tls_slot {
    pthread_mutex_t lock; /* guards server, client */
    sk_tls_ctx *server;   /* for listeners (reference), NULL when no listener uses it */
    sk_tls_ctx *client;   /* for clusters (reference), NULL when no cluster uses it */
    const sk_tls *conf;   /* the section (the config owns both) */
    stamp stamps[3];      /* cert, key, ca as read */
    sk_tls_slot_info info;
};

static void take_stamps(const sk_tls *t, stamp st[3])
{
    const char *files[3] = {t->cert, t->key, t->ca};
    memset(st, 0, 3 * sizeof(*st));
    for (int i = 0; i < 3; i++) {
        struct stat sb;
        if (!files[i]) continue;
        if (stat(files[i], &sb) < 0) {
            st[i].missing = true;
            continue;
        }
        st[i].dev = sb.st_dev;
        st[i].ino = sb.st_ino;
        st[i].size = sb.st_size;
        st[i].mtime = sb.st_mtim;
    }
}

static bool stamps_equal(const stamp *a, const stamp *b)
{
    for (int i = 0; i < 3; i++)
        if (a[i].dev != b[i].dev || a[i].ino != b[i].ino || a[i].size != b[i].size ||
            a[i].mtime.tv_sec != b[i].mtime.tv_sec || a[i].mtime.tv_nsec != b[i].mtime.tv_nsec ||
            a[i].missing != b[i].missing)
            return false;
    return true;
}

static void opts_of(const sk_tls *t, bool server, sk_tls_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->server = server;
    o->cert = t->cert;
    o->key = t->key;
    o->ca = t->ca;
    o->verify = (sk_tls_verify)(server ? t->verify_server : t->verify_client);
    o->min_version = t->min_version;
    /* A cluster speaks HTTP/1.1 upstream whatever the section lists: the
     * upstream codec has no HTTP/2 yet, so it must not be offered there. */
    o->alpn = server ? t->alpn : "http/1.1";
    o->sni = server ? NULL : t->sni;
    o->ciphers = t->ciphers;
    o->no_tickets = !t->session_tickets;
    o->peer_ids = t->peer_ids;
    o->npeer_ids = t->npeer_ids;
}

/* The contexts of t's sides: a side no one uses is still made once when
 * nothing uses the section, so that its files are checked at load. */
static int make_contexts(const sk_tls *t, sk_tls_ctx **server, sk_tls_ctx **client, char *err, size_t n,
                         const char **key)
{
    sk_tls_opts o;
    bool want_server = t->server_side || (!t->client_side && t->cert);
    bool want_client = t->client_side || (!t->server_side && !t->cert);
    *server = *client = NULL;
    if (want_server) {
        opts_of(t, true, &o);
        if (!(*server = sk_tls_ctx_new(&o, err, n, key))) return -1;
    }
    if (want_client) {
        opts_of(t, false, &o);
        if (!(*client = sk_tls_ctx_new(&o, err, n, key))) {
            sk_tls_ctx_unref(*server);
            *server = NULL;
            return -1;
        }
    }
    return 0;
}

static void slot_free(struct sk_tls_slot *s)
{
    if (!s) return;
    sk_tls_ctx_unref(s->server);
    sk_tls_ctx_unref(s->client);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static void slot_set_info(sk_tls_slot *s)
{
    sk_tls_ctx *c = s->server ? s->server : s->client;
    s->info.cert = c ? c->info : (sk_tls_cert_info){0};
    s->info.loaded_at = time(NULL);
}

/* Makes t's slot (see tls.h). */
int sk_tls_load(sk_tls *t, char *err, size_t n, const char **key)
{
    sk_tls_slot *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, n, "out of memory");
        return -1;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->conf = t;
    take_stamps(t, s->stamps);
    if (make_contexts(t, &s->server, &s->client, err, n, key) < 0) {
        slot_free(s);
        return -1;
    }
    slot_set_info(s);
    t->state = s;
    t->state_free = slot_free;
    return 0;
}

void *sk_tls_slot_conn(sk_tls_slot *s, bool server, int fd, sk_metrics *m)
{
    pthread_mutex_lock(&s->lock);
    sk_tls_ctx *c = server ? s->server : s->client;
    sk_tls_ctx_ref(c);
    pthread_mutex_unlock(&s->lock);
    if (!c) return NULL;
    void *k = sk_tls_conn_new(c, fd, NULL, m);
    sk_tls_ctx_unref(c);
    return k;
}

void sk_tls_slot_info_get(sk_tls_slot *s, sk_tls_slot_info *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->info;
    pthread_mutex_unlock(&s->lock);
}

/* Re-reads the files when they changed (see tls.h). */
int sk_tls_slot_reload(sk_tls_slot *s, char *err, size_t n)
{
    stamp now[3];
    take_stamps(s->conf, now);
    if (stamps_equal(now, s->stamps)) return 0;
    memcpy(s->stamps, now, sizeof(now)); /* a refused version is not retried until it changes again */
    sk_tls_ctx *server, *client;
    const char *key = NULL;
    char why[200];
    if (make_contexts(s->conf, &server, &client, why, sizeof(why), &key) < 0) {
        pthread_mutex_lock(&s->lock);
        s->info.reloads_failed++;
        snprintf(s->info.last_error, sizeof(s->info.last_error), "%s%s%s", key ? key : "", key ? ": " : "", why);
        pthread_mutex_unlock(&s->lock);
        snprintf(err, n, "%s%s%s", key ? key : "", key ? ": " : "", why);
        return -1;
    }
    pthread_mutex_lock(&s->lock);
    sk_tls_ctx *old_server = s->server, *old_client = s->client;
    s->server = server;
    s->client = client;
    slot_set_info(s);
    s->info.reloads_ok++;
    s->info.last_error[0] = '\0';
    pthread_mutex_unlock(&s->lock);
    sk_tls_ctx_unref(old_server); /* open connections keep theirs */
    sk_tls_ctx_unref(old_client);
    return 1;
}

void sk_tls_slot_files(const sk_tls_slot *s, const char *files[3])
{
    files[0] = s->conf->cert;
    files[1] = s->conf->key;
    files[2] = s->conf->ca;
}
