/*
 * fuzz_http2.c — libFuzzer target for the downstream HTTP/2 codec
 * (h2_server.c on nghttp2) and what it drives (proxy.c, local replies,
 * limits, timeouts, the upstream exchange and responses streamed back
 * under flow control).
 *
 * The input is what a client sends on one connection after the connection
 * preface and an empty SETTINGS frame, which the target writes first (so
 * that every input reaches the frame layer; fuzz_http1 covers the bytes
 * before a protocol is chosen). The real code path is used, as in
 * fuzz_http1.c: a config loaded from text, a worker assembled by hand, one
 * socketpair per input through sk_conn_accept().
 *
 * Routes:
 *   /ok            → `respond = 200 ok` (local reply)
 *   /up/...        → cluster "live": a fake upstream on 127.0.0.1 that
 *                    answers every connection at once with a 70000-byte
 *                    body (more than the client's default window: DATA
 *                    waits for WINDOW_UPDATE), or, for /up/c..., a chunked
 *                    body with a trailer
 *   /dead/...      → cluster "dead" at 127.0.0.1:1 (refused: 502, retried once)
 *   /h... with authority *.example.com, x-fuzz: yes, GET or POST → `respond = 204`
 *   anything else  → 404 no_route
 * and the listener has small limits (4k head, 20 headers, 1k body, 8
 * concurrent streams, 4k stream windows) so the limit and flow-control
 * paths are reached with short inputs.
 *
 * Per input: byte 0 chooses where the rest is cut into writes (see
 * fuzz_write_sliced in harness.h); then timeouts fire, the client
 * half-closes and closes, everything is freed (fuzz_finish).
 */
#include <arpa/inet.h>

#include "harness.h"

static int up_listen = -1;

/* A canned answer to every upstream connection: the request line decides
 * nothing (it is drained), the first bytes of the connection do. */
static char big_answer[70100];
static size_t big_answer_len;
static const char chunked_answer[] = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: c\r\n\r\n"
                                     "5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";

/* After each loop pass: accept the proxy's upstream connections and answer. */
static bool accept_upstreams(void)
{
    bool did = false;
    int fd;
    while ((fd = accept4(up_listen, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        did = true;
        char req[4096];
        ssize_t n = recv(fd, req, sizeof(req) - 1, 0); /* usually there by now; the path picks the answer */
        bool chunked = n > 8 && memmem(req, (size_t)n, " /c", 3) != NULL;
        fuzz_add_peer(fd);
        if (chunked)
            fuzz_write(fd, (const uint8_t *)chunked_answer, sizeof(chunked_answer) - 1);
        else
            fuzz_write(fd, (const uint8_t *)big_answer, big_answer_len);
    }
    return did;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static bool done;
    if (done) return 0;
    done = true;
    up_listen = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x7f000001);
    socklen_t alen = sizeof(a);
    if (up_listen < 0 || bind(up_listen, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(up_listen, 64) < 0 ||
        getsockname(up_listen, (struct sockaddr *)&a, &alen) < 0)
        fuzz_die("upstream listener", NULL);
    int k = snprintf(big_answer, sizeof(big_answer), "HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n");
    memset(big_answer + k, 'b', 70000);
    big_answer_len = (size_t)k + 70000;
    char cfg[2048];
    snprintf(
        cfg, sizeof(cfg),
        "[sidekick]\nworkers = 1\nadmin = off\nlog_level = error\naccess_log = off\n\n"
        "[listener fuzz]\naddress = 127.0.0.1:39997\nmax_header_bytes = 4k\nmax_headers = 20\n"
        "max_body_bytes = 1k\nmax_concurrent_streams = 8\nhttp2_initial_window_size = 4k\n"
        "http2_connection_window_size = 64k\n\n"
        "[route ok]\nlistener = fuzz\npath = /ok\nrespond = 200 ok\n\n"
        "[route up]\nlistener = fuzz\nprefix = /up/\nrewrite_prefix = /\ncluster = live\ntimeout = 5s\n\n"
        "[route dead]\nlistener = fuzz\nprefix = /dead\ncluster = dead\ntimeout = 5s\nretries = 1\n\n"
        "[route hdr]\nlistener = fuzz\nprefix = /h\nheader = x-fuzz: yes\nmethod = GET, POST\n"
        "host = *.example.com\nrespond = 204\n\n"
        "[cluster live]\nendpoints = 127.0.0.1:%u\nconnect_timeout = 1s\n\n"
        "[cluster dead]\nendpoints = 127.0.0.1:1\nconnect_timeout = 1s\n",
        (unsigned)ntohs(a.sin_port));
    fuzz_setup(cfg);
    fuzz_on_pass = accept_upstreams;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t start[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                   "\x00\x00\x00\x04\x00\x00\x00\x00\x00"; /* an empty SETTINGS frame */
    LLVMFuzzerInitialize(NULL, NULL);
    int client = fuzz_connect_client();
    fuzz_write(client, start, sizeof(start) - 1);
    fuzz_spin();
    if (size > 0) fuzz_write_sliced(client, data[0], data + 1, size - 1);
    fuzz_spin();
    fuzz_finish(client);
    accept_upstreams(); /* connections made after the end: refuse them */
    for (int i = 0; i < FUZZ_PEERS; i++)
        if (fuzz_peers[i] >= 0) fuzz_close_peer(fuzz_peers[i]);
    fuzz_spin();
    sk_worker_close_idle_upstreams(&fuzz_worker);
    return 0;
}
