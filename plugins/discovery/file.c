/*
 * file.c — source = file of discovery.so.
 *
 * STUB: create fails with "file: not built yet" until the real source lands.
 */
#include "discovery.h"

#include <stdio.h>

static int file_create(dsc_inst *inst, const sk_kv *keys, size_t n, char *err, size_t errsz)
{
    (void)inst, (void)keys, (void)n;
    snprintf(err, errsz, "file: not built yet");
    return -1;
}

static int file_add_cluster(dsc_inst *inst, dsc_cluster *cl, const char *arg, char *err, size_t errsz)
{
    (void)inst, (void)cl, (void)arg;
    snprintf(err, errsz, "file: not built yet");
    return -1;
}

static void file_destroy(dsc_inst *inst)
{
    (void)inst;
}

const dsc_source_ops dsc_file_ops = {
    .name = "file",
    .create = file_create,
    .add_cluster = file_add_cluster,
    .destroy = file_destroy,
};
