/*
 * fuzz_upstream.c — libFuzzer target for the upstream side: the response
 * parser and pool of upstream.c and the response path of proxy.c (re-framing
 * towards the client, retries, EOF-delimited bodies, keep-alive reuse).
 *
 * A listening socket on 127.0.0.1 (ephemeral port) is the cluster's only
 * endpoint. Per input, a client sends one of a few fixed requests to a
 * proxied route, the fake upstream accepts the proxy's connection and
 * answers with the input; then it closes. A retried attempt (retries = 1)
 * gets the same answer again.
 *
 * Input: byte 0 = slicing of the answer (as in fuzz_http1: see
 * fuzz_write_sliced in harness.h), byte 1 = which request the client sends
 * (see requests[] below), the rest = the upstream's bytes.
 */
#include <arpa/inet.h>

#include "harness.h"

static const char *const requests[] = {
    "GET /up/a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "HEAD /up/a HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /up/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "GET /up/a HTTP/1.0\r\n\r\n",
    "POST /up/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    /* pipelined: the second may reuse the pooled connection */
    "GET /up/a HTTP/1.1\r\nHost: x\r\n\r\nGET /up/b HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /up/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "PUT /up/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    "GET /up/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "DELETE /up/a HTTP/1.1\r\nHost: x\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n",
};

static int up_listen = -1;
static int up_fds[4];     /* accepted upstream connections of this input */
static int nup;           /* how many */
static const uint8_t *answer;
static size_t answer_len;
static uint8_t answer_mode;

/* After each loop pass: accept the proxy's connections; every one after
 * the first (a retry, or a new connection for a pipelined request) gets
 * the answer at once. */
static bool accept_upstreams(void)
{
    bool did = false;
    int fd;
    while ((fd = accept4(up_listen, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        did = true;
        if (nup == (int)SK_ARRAY_LEN(up_fds)) {
            close(fd);
            continue;
        }
        up_fds[nup++] = fd;
        fuzz_add_peer(fd);
        if (nup > 1) {
            fuzz_write(fd, answer, answer_len);
            shutdown(fd, SHUT_WR);
        }
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
    if (up_listen < 0 || bind(up_listen, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        listen(up_listen, 64) < 0 || getsockname(up_listen, (struct sockaddr *)&a, &alen) < 0)
        fuzz_die("upstream listener", NULL);
    char cfg[1024];
    snprintf(cfg, sizeof(cfg),
             "[sidekick]\nadmin = off\naccess_log = off\n\n"
             "[listener fuzz]\naddress = 127.0.0.1:39998\nmax_body_bytes = 64k\n\n"
             "[route up]\nlistener = fuzz\nprefix = /up/\nrewrite_prefix = /\ncluster = live\n"
             "timeout = 5s\nretries = 1\nper_try_timeout = 2s\n"
             "retry_on = connect-failure, reset, 502, 503, 504, retriable-4xx\n\n"
             "[cluster live]\nendpoints = 127.0.0.1:%u\nconnect_timeout = 1s\n",
             (unsigned)ntohs(a.sin_port));
    fuzz_setup(cfg);
    fuzz_on_pass = accept_upstreams;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    LLVMFuzzerInitialize(NULL, NULL);
    if (size < 2) return 0;
    answer_mode = data[0];
    const char *req = requests[data[1] % SK_ARRAY_LEN(requests)];
    answer = data + 2;
    answer_len = size - 2;
    nup = 0;

    int client = fuzz_connect_client();
    fuzz_write(client, (const uint8_t *)req, strlen(req));
    fuzz_spin();
    if (nup > 0) {
        fuzz_write_sliced(up_fds[0], answer_mode, answer, answer_len);
        fuzz_spin();
        shutdown(up_fds[0], SHUT_WR); /* EOF: ends an EOF-delimited body */
        fuzz_spin();
    }
    fuzz_finish(client); /* closes the upstream peers too */
    accept_upstreams();  /* connections made after the end: refuse them */
    for (int i = 0; i < FUZZ_PEERS; i++)
        if (fuzz_peers[i] >= 0) fuzz_close_peer(fuzz_peers[i]);
    fuzz_spin();
    sk_worker_close_idle_upstreams(&fuzz_worker);
    return 0;
}
