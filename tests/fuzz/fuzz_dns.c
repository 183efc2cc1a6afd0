/*
 * fuzz_dns.c — libFuzzer target for what discovery.so's source = dns reads
 * of a DNS answer (plugins/discovery/parse.c): dsc_dns_min_ttl (the TTL of
 * SRV answers, which c-ares 1.18 does not report), then the answer through
 * the c-ares parsers dns.c uses, and dsc_srv_weight on the SRV records.
 *
 * Aborts on: a TTL with its top bit set, a count below -1, a TTL without a
 * record, a weight outside 1..10000 or one that shrinks as the SRV weight
 * grows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>

#include "discovery.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t ttl = 12345;
    int n = dsc_dns_min_ttl(data, size, &ttl);
    if (n < -1) abort();
    if (n == 0 && ttl != 0) abort();
    if (n > 0 && (ttl & 0x80000000u)) abort();
    if (size > 65535) return 0;

    struct ares_srv_reply *srv = NULL;
    if (ares_parse_srv_reply(data, (int)size, &srv) == ARES_SUCCESS) {
        unsigned wmax = 0;
        for (struct ares_srv_reply *r = srv; r; r = r->next)
            if (r->weight > wmax) wmax = r->weight;
        for (struct ares_srv_reply *r = srv; r; r = r->next) {
            for (size_t k = 1; k <= 3; k++) {
                uint32_t w = dsc_srv_weight(r->weight, wmax, k);
                if (w < 1 || w > DSC_MAX_WEIGHT) abort();
                if (r->weight < wmax && dsc_srv_weight(r->weight + 1u, wmax, k) < w) abort();
            }
        }
        ares_free_data(srv);
    }
    struct ares_addrttl a[16];
    int na = 16;
    if (ares_parse_a_reply(data, (int)size, NULL, a, &na) == ARES_SUCCESS && (na < 0 || na > 16)) abort();
    struct ares_addr6ttl a6[16];
    int na6 = 16;
    if (ares_parse_aaaa_reply(data, (int)size, NULL, a6, &na6) == ARES_SUCCESS && (na6 < 0 || na6 > 16)) abort();
    return 0;
}
