/*
 * fuzz_http1.c — libFuzzer target for the downstream HTTP/1 codec (http1.c)
 * and what it drives (proxy.c, upstream.c, accesslog.c).
 *
 * The input is the byte stream a client sends on one connection. The real
 * code path is used: a config is loaded from a file with sk_config_load(),
 * a worker is assembled by hand on the fuzzer's thread (no worker threads,
 * no listening socket), and each input gets one socketpair whose server end
 * goes through sk_conn_accept() exactly as an accepted TCP socket would.
 *
 * The routes make every part of the request path reachable without a real
 * upstream:
 *   GET /ok          → `respond = 200 ok` (local reply)
 *   /up/...          → cluster "dead" at 127.0.0.1:1 (refused: 502, retried once)
 *   /h... with Host *.example.com, X-Fuzz: yes, GET or POST → `respond = 204`
 *   anything else    → 404 no_route
 * and the listener has small limits (4k head, 20 headers, 1k body) so the
 * limit paths are reached with short inputs.
 *
 * Per input: the first byte chooses where the rest is cut into writes
 * (so the parser sees chunk boundaries everywhere; see fuzz_write_sliced);
 * after each write the loop runs until nothing moves; then the client
 * half-closes, timeouts fire, the client closes and everything is freed
 * (fuzz_finish in harness.h).
 */
#include "harness.h"

static const char config_text[] =
    "[sidekick]\n"
    "workers = 1\n"
    "admin = off\n"
    "log_level = error\n"
    "access_log = off\n"
    "\n"
    "[listener fuzz]\n"
    "address = 127.0.0.1:39999\n"
    "max_header_bytes = 4k\n"
    "max_headers = 20\n"
    "max_body_bytes = 1k\n"
    "\n"
    "[route ok]\n"
    "listener = fuzz\n"
    "path = /ok\n"
    "respond = 200 ok\n"
    "\n"
    "[route refused]\n"
    "listener = fuzz\n"
    "prefix = /up\n"
    "rewrite_prefix = /\n"
    "cluster = dead\n"
    "timeout = 5s\n"
    "retries = 1\n"
    "\n"
    "[route hdr]\n"
    "listener = fuzz\n"
    "prefix = /h\n"
    "header = x-fuzz: yes\n"
    "method = GET, POST\n"
    "host = *.example.com\n"
    "respond = 204\n"
    "\n"
    "[cluster dead]\n"
    "endpoints = 127.0.0.1:1\n"
    "connect_timeout = 1s\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static bool done;
    if (!done) fuzz_setup(config_text);
    done = true;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    LLVMFuzzerInitialize(NULL, NULL);
    int client = fuzz_connect_client();
    if (size > 0) fuzz_write_sliced(client, data[0], data + 1, size - 1);
    fuzz_spin();
    fuzz_finish(client);
    return 0;
}
