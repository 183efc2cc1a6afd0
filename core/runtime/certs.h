/*
 * certs.h — the running generation's certificates (certs.c): rotation by
 * watching their files, and their details for the admin endpoint. Main
 * thread.
 */
#ifndef SK_CERTS_H
#define SK_CERTS_H

#include <ev.h>
#include <jansson.h>

#include "config.h"

/* Watches the directories of cfg's [tls] files on loop (called at start
 * and after every reload with the generation in force; holds a reference
 * to it). A change re-reads the sections whose files changed. */
void sk_certs_watch(struct ev_loop *loop, sk_config *cfg);
/* Stops watching and drops the reference. */
void sk_certs_stop(void);

/* The [tls] sections of cfg with their certificates in force, as a JSON
 * array for /config; *ok turns false on allocation failure. */
json_t *sk_certs_json(const sk_config *cfg, bool *ok);
/* sidekick_tls_certificate_expiry_seconds and sidekick_tls_reloads_total. 0 or -1. */
int sk_certs_render_prometheus(sk_buf *out, const sk_config *cfg);

#endif
