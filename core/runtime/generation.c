/*
 * generation.c — a configuration generation is the config layer's parse
 * plus the extension layer's plugins and scripts, and the upstream layer's
 * endpoint objects of every cluster; the runtime, above all three, puts
 * them together.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "generation.h"
#include "loader.h"
#include "tls.h"

/* Loads a generation (see generation.h). */
sk_config *sk_config_load(const char *path, char **err)
{
    /* the extension layer's loaders, and the net layer's for [tls] sections */
    static sk_config_ext ops;
    if (!ops.instance_new) {
        ops = sk_ext_config_ops;
        ops.tls_load = sk_tls_load;
    }
    sk_config *c = sk_config_parse(path, &ops, err);
    if (!c) return NULL;
    /* A cluster that checks its upstream's chain and nothing else accepts any
     * certificate that ca signed: worth a word, not an error. */
    for (size_t i = 0; i < c->nclusters; i++) {
        const sk_tls *t = c->clusters[i]->tls;
        if (t && t->verify_client != SK_VERIFY_NONE && t->npeer_ids == 0 && !t->sni)
            sk_warn("%s: [cluster %s] checks its upstream's certificate against ca only: any certificate ca "
                    "signed is accepted (set peer_identity or sni in [tls %s])",
                    c->file, c->clusters[i]->name, t->name);
    }
    /* Each cluster's endpoint objects and first set, before any worker sees it. */
    if (sk_clusters_init(c) < 0) {
        sk_config_unref(c);
        if (err) *err = strdup("out of memory");
        return NULL;
    }
    return c;
}
