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
    /* Each cluster's endpoint objects and first set, before any worker sees it. */
    if (sk_clusters_init(c) < 0) {
        sk_config_unref(c);
        if (err) *err = strdup("out of memory");
        return NULL;
    }
    return c;
}
