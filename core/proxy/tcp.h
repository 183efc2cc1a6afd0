/*
 * tcp.h — `protocol = tcp` listeners (tcp.c): each accepted connection is
 * relayed byte for byte to an endpoint of the listener's cluster.
 */
#ifndef SK_TCP_H
#define SK_TCP_H

#include "config.h"
#include "list.h"
#include "wctx.h"

/* What the runtime hears of a relay: its link goes into the owner's list
 * when it starts and comes out when it ends (l: its listener). */
typedef struct sk_tcp_owner {
    void (*opened)(void *owner, sk_link *link);
    void (*closed)(void *owner, sk_link *link, const sk_listener *l);
} sk_tcp_owner;

/* Takes over an accepted socket of tcp listener l (generation cfg) and
 * connects upstream. */
void sk_tcp_accept(sk_wctx *w, const sk_tcp_owner *o, void *owner, sk_config *cfg, const sk_listener *l,
                   int fd, const char *client_addr);
/* Does a relay of this list still run on generation cfg? With `cut`,
 * closes those that do (drain_timeout after a reload). */
bool sk_tcp_uses_generation(sk_link *relays, const sk_config *cfg, bool cut);

#endif
