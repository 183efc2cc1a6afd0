/*
 * tls.h — the TLS transport kind (wolfSSL).
 *
 * An sk_tls_ctx is one side's configuration (server or client: certificate
 * and key, the CA to verify the peer with, the verify mode, the minimum
 * version, ALPN and, for clients, SNI), read once and shared by every
 * connection made from it on one loop. A connection's state is made by
 * sk_tls_conn_new() and handed to sk_transport_accept() / _connect() with
 * &sk_tls_ops; the transport runs the handshake, and close frees the state.
 * After the handshake t->alpn is the negotiated protocol ("h2", "http/1.1"
 * or NULL) and t->peer_identity the peer's SPIFFE ID when its certificate
 * was verified and carries exactly one spiffe:// URI SAN (else NULL).
 *
 * Threads: a context may be shared by connections of one loop; it is not
 * yet made for several workers at once (nothing in listeners or clusters
 * uses it yet).
 */
#ifndef SK_TLS_H
#define SK_TLS_H

#include "transport.h"

typedef struct sk_tls_ctx sk_tls_ctx;

/* How the peer's certificate is checked. A server with NONE asks for no
 * client certificate; OPTIONAL verifies one when sent; REQUIRED fails a
 * handshake without one. A client verifies the server unless NONE. */
typedef enum sk_tls_verify {
    SK_TLS_VERIFY_NONE,
    SK_TLS_VERIFY_OPTIONAL,
    SK_TLS_VERIFY_REQUIRED
} sk_tls_verify;

/* One side's settings; strings are borrowed for sk_tls_ctx_new() only. */
typedef struct sk_tls_opts {
    bool server;          /* terminate (accept) rather than originate (connect) */
    const char *cert;     /* PEM certificate (chain) file; required on a server, optional on a client */
    const char *key;      /* PEM private key file of cert */
    const char *ca;       /* PEM CA bundle to verify the peer with; NULL: none (then verify must be NONE) */
    sk_tls_verify verify; /* see sk_tls_verify */
    int min_version;      /* 12 (TLS 1.2, the default when 0) or 13 */
    const char *alpn;     /* protocols offered / accepted, comma-separated ("h2,http/1.1"); NULL: no ALPN */
    const char *sni;      /* client: server name sent when sk_tls_conn_new() gets none; NULL: none */
    const char *ciphers;  /* wolfSSL cipher list; NULL: TLS 1.3 suites and ECDHE AEAD suites only */
} sk_tls_opts;

/*
 * Makes a context from o: loads the certificate, key and CA files and sets
 * the verify mode, versions, suites and ALPN. Returns it (the caller owns
 * it; sk_tls_ctx_free), or NULL with a reason in err[n].
 */
sk_tls_ctx *sk_tls_ctx_new(const sk_tls_opts *o, char *err, size_t n);

/* Frees a context; connections made from it must be closed first. NULL is fine. */
void sk_tls_ctx_free(sk_tls_ctx *c);

/*
 * Makes the TLS state of one connection on socket fd from context c: the
 * ctx argument for sk_transport_accept/_connect with &sk_tls_ops. For a
 * connect pass fd = -1: sk_transport_connect() makes the socket, and the
 * handshake takes t->fd. sni (client side; NULL: the context's) is sent as
 * the server name. Returns NULL when out of memory (the caller then still
 * owns fd). The transport owns the state from then on: its close frees it
 * and closes fd. Only when sk_transport_connect() fails before it has a
 * socket (t->ops NULL) does the caller free it, with sk_tls_conn_free().
 */
void *sk_tls_conn_new(sk_tls_ctx *c, int fd, const char *sni);

/* Frees a state that never reached a transport (see above). NULL is fine. */
void sk_tls_conn_free(void *state);

/* A short reason why the last handshake or I/O on t failed ("" when none). */
const char *sk_tls_conn_error(const sk_transport *t);

/* The TLS transport kind (state: sk_tls_conn_new). */
extern const sk_transport_ops sk_tls_ops;

#endif
