/*
 * etcd.c — source = etcd of discovery.so.
 *
 * STUB: create fails with "etcd: not built yet" until the real source lands.
 */
#include "discovery.h"

#include <stdio.h>

static int etcd_create(dsc_inst *inst, const sk_kv *keys, size_t n, char *err, size_t errsz)
{
    (void)inst, (void)keys, (void)n;
    snprintf(err, errsz, "etcd: not built yet");
    return -1;
}

static int etcd_add_cluster(dsc_inst *inst, dsc_cluster *cl, const char *arg, char *err, size_t errsz)
{
    (void)inst, (void)cl, (void)arg;
    snprintf(err, errsz, "etcd: not built yet");
    return -1;
}

static void etcd_destroy(dsc_inst *inst)
{
    (void)inst;
}

const dsc_source_ops dsc_etcd_ops = {
    .name = "etcd",
    .create = etcd_create,
    .add_cluster = etcd_add_cluster,
    .destroy = etcd_destroy,
};
