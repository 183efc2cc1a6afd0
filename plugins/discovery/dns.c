/*
 * dns.c — source = dns of discovery.so.
 *
 * STUB: create fails with "dns: not built yet" until the real source lands.
 */
#include "discovery.h"

#include <stdio.h>

static int dns_create(dsc_inst *inst, const sk_kv *keys, size_t n, char *err, size_t errsz)
{
    (void)inst, (void)keys, (void)n;
    snprintf(err, errsz, "dns: not built yet");
    return -1;
}

static int dns_add_cluster(dsc_inst *inst, dsc_cluster *cl, const char *arg, char *err, size_t errsz)
{
    (void)inst, (void)cl, (void)arg;
    snprintf(err, errsz, "dns: not built yet");
    return -1;
}

static void dns_destroy(dsc_inst *inst)
{
    (void)inst;
}

const dsc_source_ops dsc_dns_ops = {
    .name = "dns",
    .create = dns_create,
    .add_cluster = dns_add_cluster,
    .destroy = dns_destroy,
};
