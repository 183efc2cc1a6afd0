/*
 * tls.h — the TLS transport kind (wolfSSL).
 *
 * An sk_tls_ctx is one side's configuration (server or client: certificate
 * and key, the CA to verify the peer with, the verify mode, the minimum
 * version, ALPN, SNI, the peer allow-list), read once and shared, reference
 * counted, by every connection made from it on any thread. A connection's
 * state is made by sk_tls_conn_new() and handed to sk_transport_accept() /
 * _connect() with &sk_tls_ops; the transport runs the handshake, and close
 * frees the state. After the handshake t->alpn is the negotiated protocol
 * ("h2", "http/1.1" or NULL) and t->peer_identity the peer's SPIFFE ID when
 * its certificate was verified and is an X509-SVID (else NULL).
 *
 * An sk_tls_slot is the live state of one [tls NAME] section of a
 * generation: its server and client contexts, swapped whole when the files
 * change (sk_tls_slot_reload); connections keep the context they were made
 * from. Each handshake's outcome is counted in the worker's metrics
 * (tls_handshakes[side][result]) and a failure is logged once.
 *
 * Threads: contexts and slots are shared by all workers; a slot is reloaded
 * on the main thread; a connection lives on one loop.
 */
#ifndef SK_TLS_H
#define SK_TLS_H

#include <time.h>

#include "config.h"
#include "metrics.h"
#include "transport.h"

typedef struct sk_tls_ctx sk_tls_ctx;
typedef struct sk_tls_slot sk_tls_slot;

/* How the peer's certificate is checked (the values of config.h's
 * enum sk_verify). A server with NONE asks for no client certificate;
 * OPTIONAL verifies one when sent; REQUIRED fails a handshake without one.
 * A client verifies the server unless NONE. */
typedef enum sk_tls_verify {
    SK_TLS_VERIFY_NONE = SK_VERIFY_NONE,
    SK_TLS_VERIFY_OPTIONAL = SK_VERIFY_OPTIONAL,
    SK_TLS_VERIFY_REQUIRED = SK_VERIFY_REQUIRED
} sk_tls_verify;

/* One side's settings; everything is copied by sk_tls_ctx_new(). */
typedef struct sk_tls_opts {
    bool server;          /* terminate (accept) rather than originate (connect) */
    const char *cert;     /* PEM certificate (chain) file; required on a server, optional on a client */
    const char *key;      /* PEM private key file of cert */
    const char *ca;       /* PEM CA bundle to verify the peer with; NULL: none (then verify must be NONE) */
    sk_tls_verify verify; /* see sk_tls_verify */
    int min_version;      /* 12 (TLS 1.2, the default when 0) or 13 */
    const char *alpn;     /* protocols offered / accepted, comma-separated ("h2,http/1.1"); NULL: no ALPN */
    const char *sni;      /* client: server name sent (and the name the server's certificate must carry
                             when no peer_ids are given); NULL: none */
    const char *ciphers;  /* wolfSSL cipher list; NULL: TLS 1.3 suites and ECDHE AEAD suites only */
    bool no_tickets;      /* server: issue no session tickets */
    char *const *peer_ids; /* allowed peer SPIFFE IDs (config.h patterns); a client refuses another */
    size_t npeer_ids;      /* their number; 0: any verified peer */
} sk_tls_opts;

/* What a context's own certificate says (for /config and the expiry metric). */
typedef struct sk_tls_cert_info {
    char subject[256];   /* the leaf's subject, one line ("" without a certificate) */
    char spiffe_id[256]; /* its SPIFFE ID when it is an X509-SVID, else "" */
    char serial[96];     /* serial number, hex */
    time_t not_before;   /* validity, 0 when unknown */
    time_t not_after;
} sk_tls_cert_info;

/* Handshake outcomes, the `result` label of sidekick_tls_handshakes_total. */
enum sk_tls_result {
    SK_TLS_OK = 0,
    SK_TLS_RESUMED,
    SK_TLS_NO_CLIENT_CERT,
    SK_TLS_UNKNOWN_CA,
    SK_TLS_EXPIRED,
    SK_TLS_NOT_YET_VALID,
    SK_TLS_BAD_CERTIFICATE,
    SK_TLS_IDENTITY_MISMATCH,
    SK_TLS_NOT_TLS,
    SK_TLS_TIMEOUT,
    SK_TLS_CLOSED,
    SK_TLS_ERROR,
};
_Static_assert(SK_TLS_ERROR + 1 == SK_TLS_RESULTS, "metrics.h SK_TLS_RESULTS");

/*
 * Makes a context from o: loads the certificate, key and CA files, checks
 * that the key signs for the certificate and that the certificate has not
 * expired, and sets the verify mode, versions, suites and ALPN. Returns it
 * with one reference (sk_tls_ctx_unref), or NULL with a reason in err[n]
 * and, when bad_key is not NULL, the option to blame ("cert", "key", "ca",
 * "ciphers", "min_version"; NULL for none) in *bad_key.
 */
sk_tls_ctx *sk_tls_ctx_new(const sk_tls_opts *o, char *err, size_t n, const char **bad_key);
/* Takes / drops a reference (thread-safe); the last one frees it. NULL is fine. */
void sk_tls_ctx_ref(sk_tls_ctx *c);
void sk_tls_ctx_unref(sk_tls_ctx *c);
/* The context's own certificate. */
const sk_tls_cert_info *sk_tls_ctx_info(const sk_tls_ctx *c);

/*
 * Makes the TLS state of one connection on socket fd from context c (which
 * it references): the ctx argument for sk_transport_accept/_connect with
 * &sk_tls_ops. For a connect pass fd = -1: sk_transport_connect() makes the
 * socket, and the handshake takes t->fd. sni (client side; NULL: the
 * context's) is sent as the server name. m (may be NULL) counts the
 * handshake's outcome. Returns NULL when out of memory (the caller then still
 * owns fd). The transport owns the state from then on: its close frees it
 * and closes fd. Only when sk_transport_connect() fails before it has a
 * socket (t->ops NULL) does the caller free it, with sk_tls_conn_free().
 */
void *sk_tls_conn_new(sk_tls_ctx *c, int fd, const char *sni, sk_metrics *m);

/* Frees a state that never reached a transport (see above). NULL is fine. */
void sk_tls_conn_free(void *state);

/* A short reason why the last handshake or I/O on t failed ("" when none). */
const char *sk_tls_conn_error(const sk_transport *t);
/* The outcome of t's handshake (enum sk_tls_result), -1 while it runs or
 * when t is not TLS. */
int sk_tls_conn_result(const sk_transport *t);

/* Frees what wolfSSL keeps per thread (its ECC fixed-point cache, about
 * 3 MB once a thread has done ECDSA): at the end of every thread that
 * made connections or contexts. */
void sk_tls_thread_exit(void);

/* The TLS transport kind (state: sk_tls_conn_new). */
extern const sk_transport_ops sk_tls_ops;

/* ---- [tls NAME] sections ---- */

/* The live state of a [tls] section (see above); sk_config_ext.tls_load:
 * makes t->state from t's keys and files. 0, or -1 with err and *key. */
int sk_tls_load(sk_tls *t, char *err, size_t n, const char **key);

/* A connection's state from the slot's context of one side (server: a
 * listener's, else a cluster's), as sk_tls_conn_new; NULL on OOM. */
void *sk_tls_slot_conn(sk_tls_slot *s, bool server, int fd, sk_metrics *m);

/* What the admin endpoint shows of a slot (main thread). */
typedef struct sk_tls_slot_info {
    sk_tls_cert_info cert;   /* the certificate in force */
    time_t loaded_at;        /* when the files in force were read */
    uint64_t reloads_ok;     /* rotations that took effect */
    uint64_t reloads_failed; /* rotations refused (the old files stayed) */
    char last_error[256];    /* why the last refused one was refused, "" if none */
} sk_tls_slot_info;
void sk_tls_slot_info_get(sk_tls_slot *s, sk_tls_slot_info *out);

/*
 * Re-reads the section's files when they changed since they were read
 * (device, inode, size or mtime; symlinks followed). Returns 0 when nothing
 * changed, 1 when new contexts took over (new handshakes use them), -1 when
 * the new files were refused (err; the contexts in force stay). Main thread.
 */
int sk_tls_slot_reload(sk_tls_slot *s, char *err, size_t n);

/* The files a slot reads (for watching): up to 3 absolute paths, NULL-padded. */
void sk_tls_slot_files(const sk_tls_slot *s, const char *files[3]);

#endif
