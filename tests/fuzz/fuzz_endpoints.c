/*
 * fuzz_endpoints.c — libFuzzer target for the parsers of discovery.so that
 * read untrusted text (plugins/discovery/parse.c): the endpoint file format
 * of source = file (dsc_parse_endpoints), then each line of the same bytes
 * as a HOST:PORT list and as a duration (config values).
 *
 * Aborts on: a parsed endpoint whose address does not parse back to itself
 * (canonical IPv4:PORT / [IPv6]:PORT), a weight outside 1..10000, more than
 * DSC_MAX_ENDPOINTS entries, or a refusal without a line number and a
 * message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include "discovery.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_list(const char *text, size_t len)
{
    dsc_eplist l;
    int line = -1;
    char err[200] = "";
    if (dsc_parse_endpoints(text, len, &l, &line, err, sizeof err) == 0) {
        if (l.n > DSC_MAX_ENDPOINTS || line != 0) abort();
        for (size_t i = 0; i < l.n; i++) {
            const char *a = l.eps[i].address;
            if (l.eps[i].weight < 1 || l.eps[i].weight > DSC_MAX_WEIGHT) abort();
            dsc_hostport hp;
            if (dsc_parse_hostport(a, strlen(a), 0, &hp) < 0 || !hp.family) abort();
            unsigned char bin[16];
            char back[DSC_ADDR_LEN];
            if (inet_pton(hp.family, hp.host, bin) != 1) abort();
            dsc_format_addr(hp.family, bin, hp.port, back);
            if (strcmp(back, a) != 0) abort();
        }
        dsc_eplist_free(&l);
    } else {
        size_t lines = 1;
        for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
        if (line < 1 || (size_t)line > lines || !err[0] || l.n != 0 || l.eps) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    check_list(text, size);
    /* each line (up to 512 bytes) as config values */
    for (size_t i = 0; i < size;) {
        const uint8_t *nl = memchr(data + i, '\n', size - i);
        size_t n = (nl ? (size_t)(nl - data) : size) - i;
        char v[513];
        size_t m = n < 512 ? n : 512;
        memcpy(v, data + i, m);
        v[m] = 0;
        if (!memchr(v, 0, m)) {
            dsc_hostport hp[8];
            size_t k;
            char err[200];
            if (dsc_parse_hostports(v, 1, hp, 8, &k, err, sizeof err) == 0) {
                if (k < 1 || k > 8) abort();
                for (size_t j = 0; j < k; j++)
                    if (hp[j].port < 1 || !hp[j].host[0]) abort();
            } else if (!err[0]) {
                abort();
            }
            uint64_t ms = 0;
            if (dsc_parse_duration(v, 1, 43200000, &ms) == 0 && (ms < 1 || ms > 43200000)) abort();
        }
        i += n + 1;
    }
    return 0;
}
