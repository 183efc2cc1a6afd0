#!/usr/bin/python3
"""Helpers for tests/bench/run (standard library only).

  bench.py freeports N                 print N distinct free TCP ports on 127.0.0.1
  bench.py pct LOGFILE                 p50 p99 p99.9 (µs) of an h2load --log-file,
                                       first 10% of the rows skipped
  bench.py conns PORT N READYFILE      open N idle keep-alive connections, then hold them
  bench.py cpu PID...                  utime+stime (clock ticks) summed over the PIDs
  bench.py rss PID...                  VmRSS and Pss (KiB) summed over the PIDs
  bench.py table RAW OUT.md INFO.md    build the markdown results table
  bench.py jwt HS|RS KEYFILE           a JWT (sub "bench", exp in 7 days) signed HS256 with
                                       the secret in KEYFILE or RS256 with the PEM private key
"""
import os
import selectors
import signal
import socket
import statistics
import sys
import time


def freeports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))


def pct(path):
    vals = []
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                vals.append(int(parts[2]))
    # Rows are in end-of-response order: drop the first 10% (connection set-up,
    # cold caches) so that every run measures its steady state.
    vals = vals[len(vals) // 10:]
    if not vals:
        sys.exit("no samples in " + path)
    vals.sort()

    def q(p):  # nearest rank
        k = max(0, min(len(vals) - 1, int(-(-p * len(vals) // 100)) - 1))
        return vals[k]

    print(q(50), q(99), q(99.9))


def conns(port, n, ready, window=32, hold=300):
    """Open n connections, each sends one keep-alive GET and reads the whole response.
    At most `window` requests are in flight, so the proxy needs only a few upstream
    connections. Then hold every connection open until SIGTERM (or `hold` seconds)."""
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    sel = selectors.DefaultSelector()
    req = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n"
    done, started, inflight, opened = 0, 0, 0, []
    deadline = time.monotonic() + 60

    def start():
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        opened.append(s)
        sel.register(s, selectors.EVENT_WRITE, {"buf": b"", "sent": False})

    while done < n:
        while started < n and inflight < window:
            start()
            started += 1
            inflight += 1
        if time.monotonic() > deadline:
            sys.exit("conns: timed out with %d/%d connections ready" % (done, n))
        for key, ev in sel.select(timeout=1):
            s, st = key.fileobj, key.data
            if not st["sent"]:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sys.exit("conns: connect failed: " + os.strerror(err))
                s.send(req)
                st["sent"] = True
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("conns: connection closed by the server")
            st["buf"] += chunk
            head, sep, body = st["buf"].partition(b"\r\n\r\n")
            if not sep:
                continue
            status = head.split(b" ", 2)[1]
            if not status.startswith(b"2"):
                sys.exit("conns: status " + status.decode())
            clen = 0
            for h in head.split(b"\r\n")[1:]:
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    clen = int(v)
            if len(body) >= clen:
                sel.unregister(s)
                done += 1
                inflight -= 1
    with open(ready + ".tmp", "w") as f:
        f.write("%d\n" % len(opened))
    os.rename(ready + ".tmp", ready)
    time.sleep(hold)


def cpu(pids):
    tot = 0
    for p in pids:
        with open("/proc/%s/stat" % p) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): utime = field 14, stime = field 15
        tot += int(fields[11]) + int(fields[12])
    print(tot, os.sysconf("SC_CLK_TCK"))


def rss(pids):
    r = p = 0
    for pid in pids:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    r += int(line.split()[1])
        try:
            with open("/proc/%s/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        p += int(line.split()[1])
        except OSError:
            pass
    print(r, p)


# --------------------------------------------------------------------------- table

# Column order; a target is shown when the raw file has it (sidekick-before only with
# SIDEKICK_BEFORE in tests/bench/run).
ALL_TARGETS = ["direct", "sidekick", "sidekick-before", "sidekick-aesni", "nginx", "haproxy"]
# ratio columns: (heading, numerator, denominator), shown when both targets are present
RATIOS = [
    ("sidekick/nginx", "sidekick", "nginx"),
    ("sidekick/HAProxy", "sidekick", "haproxy"),
    ("sidekick/sidekick-before", "sidekick", "sidekick-before"),
    ("sidekick-aesni/nginx", "sidekick-aesni", "nginx"),
    ("sidekick-aesni/sidekick", "sidekick-aesni", "sidekick"),
]

# metric key -> (label, unit/format, kind); kind "lat" = shown as proxy minus direct,
# kind ("diff", A, B) = metric A minus metric B of the same round, scenario and target
METRICS = [
    ("rps", "requests/s (wrk -c50)", "%.0f", "abs"),
    ("cpu_us", "proxy CPU µs/request", "%.2f", "abs"),
    ("cpu_user_us", "  of which user space", "%.2f", "abs"),
    ("wrk_errors", "wrk socket errors", "%.0f", "abs"),
    # scenarios with a paired baseline (SC_BASE in tests/bench/run): the same request
    # headers on the baseline path, run back to back with each scenario run
    ("base_rps", "requests/s, paired baseline", "%.0f", "abs"),
    ("base_cpu_us", "proxy CPU µs/request, paired baseline", "%.2f", "abs"),
    ("base_cpu_user_us", "  of which user space", "%.2f", "abs"),
    ("base_wrk_errors", "wrk socket errors, paired baseline", "%.0f", "abs"),
    ("cost_cpu_us", "added CPU µs/request (scenario − baseline)", "%.2f",
     ("diff", "cpu_us", "base_cpu_us")),
    ("cost_cpu_user_us", "  of which user space", "%.2f",
     ("diff", "cpu_user_us", "base_cpu_user_us")),
    ("redis_timeout_share_pct", "% of decisions past redis_timeout (allowed), whole run", "%.4f", "abs"),
]

# the `fixed` part: one offered load for every target
FIXED_METRICS = [
    ("fx_rps", "requests/s achieved at the fixed rate", "%.0f", "abs"),
    ("fx_cpu_us", "proxy CPU µs/request at the fixed rate", "%.2f", "abs"),
    ("fx_cpu_user_us", "  of which user space", "%.2f", "abs"),
    ("fx_rss_kib", "RSS KiB during the fixed-rate run", "%.0f", "abs"),
]


# the `h2c` part: HTTP/2 with prior knowledge from h2load, HTTP/1.1 upstream
H2C_METRICS = [
    ("h2c_c1m10_rps", "h2c requests/s (h2load -c1 -m10)", "%.0f", "abs"),
    ("h2c_c1m10_cpu_us", "proxy CPU µs/request, h2c -c1 -m10", "%.2f", "abs"),
    ("h2c_c1m10_cpu_user_us", "  of which user space", "%.2f", "abs"),
    ("h2c_c10m100_rps", "h2c requests/s (h2load -c10 -m100)", "%.0f", "abs"),
    ("h2c_c10m100_cpu_us", "proxy CPU µs/request, h2c -c10 -m100", "%.2f", "abs"),
    ("h2c_c10m100_cpu_user_us", "  of which user space", "%.2f", "abs"),
    ("h2c_fx_rps", "h2c requests/s achieved at the fixed rate (-c10 -m10)", "%.0f", "abs"),
    ("h2c_fx_cpu_us", "proxy CPU µs/request at the h2c fixed rate", "%.2f", "abs"),
    ("h2c_fx_cpu_user_us", "  of which user space", "%.2f", "abs"),
    ("h2c_fx_p50", "h2c p50 latency µs at the fixed rate", "%.0f", "lat"),
    ("h2c_fx_p99", "h2c p99 latency µs at the fixed rate", "%.0f", "lat"),
    ("h2c_fx_p999", "h2c p99.9 latency µs at the fixed rate", "%.0f", "lat"),
]


# the `tls` part (tests/bench/tls/bench-tls): bulk, handshakes, absolute latency, wolfCrypt
TLS_METRICS = [
    ("bulk_mbps", "MB/s, 1 MiB responses (wrk -c4)", "%.0f", "abs"),
    ("bulk_cpu_us_mb", "proxy CPU µs per MB", "%.0f", "abs"),
    ("bulk_cpu_user_us_mb", "  of which user space", "%.0f", "abs"),
    ("hs_rate", "full mTLS handshakes/s (new connection per request)", "%.0f", "abs"),
    ("hs_cpu_us", "proxy CPU µs per handshake (+ its request)", "%.1f", "abs"),
    ("hs_cpu_user_us", "  of which user space", "%.1f", "abs"),
    ("hs_capacity", "handshakes per proxy CPU second (1e6 / CPU µs per handshake)", "%.0f", "abs"),
    ("hs_util_pct", "proxy CPU use during the handshake runs, % of one CPU", "%.0f", "abs"),
    ("hs_client_cpu_us", "load generator (hsload) CPU µs per handshake", "%.0f", "abs"),
]
TLS_LAT_METRICS = [
    ("alat_p50", "p50 latency µs at the fixed rate", "%.0f", "abs"),
    ("alat_p99", "p99 latency µs at the fixed rate", "%.0f", "abs"),
]
CRYPTO_METRICS = [
    ("aes-128-gcm", "AES-128-GCM MB/s, 16 KiB records", "%.0f", "abs"),
    ("aes-256-gcm", "AES-256-GCM MB/s, 16 KiB records", "%.0f", "abs"),
    ("chacha20-poly1305", "ChaCha20-Poly1305 MB/s, 16 KiB records", "%.0f", "abs"),
    ("ecdhe-p256 (keygen+derive)", "ECDHE P-256 ops/s", "%.0f", "abs"),
    ("ecdsa-p256 sign", "ECDSA P-256 sign/s", "%.0f", "abs"),
    ("ecdsa-p256 verify", "ECDSA P-256 verify/s", "%.0f", "abs"),
    ("x25519 (keygen+derive)", "X25519 ops/s", "%.0f", "abs"),
]


def lat_metrics(keys):
    """Latency rows for every rate found among the metric keys (lat_RATE_pXX)."""
    rates = sorted({int(k.split("_")[1]) for k in keys if k.startswith("lat_")})
    out = []
    for rate in rates:
        for p, pl in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
            out.append(("lat_%d_%s" % (rate, p),
                        "added %s latency µs @ %s req/s" % (pl, "{:,}".format(rate)),
                        "%.0f", "lat"))
    return out

MEM_METRICS = [
    ("rss_idle_kib", "idle RSS KiB (all processes)", "%.0f", "abs"),
    ("pss_idle_kib", "idle PSS KiB (all processes)", "%.0f", "abs"),
    ("rss_per_conn_b", "RSS bytes per idle keep-alive conn (3,000)", "%.0f", "abs"),
    ("rss_after_kib", "RSS KiB after all load runs", "%.0f", "abs"),
]
STRACE_METRICS = [
    ("syscalls_per_req", "syscalls/request (strace -c, 3 s wrk)", "%.2f", "abs"),
]


def fmt_cell(vals, f):
    if not vals:
        return "—"
    m = statistics.median(vals)
    if len(vals) == 1:
        return f % m
    return "%s (%s–%s)" % (f % m, f % min(vals), f % max(vals))


def table(raw, out, info):
    data = {}  # (scenario, metric, target) -> {round: value}
    scen_order = []
    with open(raw) as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            rnd, scen, metric, target, value = line.rstrip("\n").split("\t")
            if scen not in scen_order:
                scen_order.append(scen)
            data.setdefault((scen, metric, target), {})[rnd] = float(value)

    present = {t for (_, _, t) in data}
    targets = [t for t in ALL_TARGETS if t in present]
    ratios = [r for r in RATIOS if r[1] in present and r[2] in present]
    lat = lat_metrics({m for (_, m, _) in data})
    rows = ["| metric | scenario | " + " | ".join(targets) + " | " +
            " | ".join(r[0] for r in ratios) + " |",
            "|---|---|" + "---:|" * (len(targets) + len(ratios))]

    def emit(scen, key, label, f, kind):
        cells, med = {}, {}
        for t in targets:
            vals_by_round = data.get((scen, key, t), {})
            if isinstance(kind, tuple):
                a = data.get((scen, kind[1], t), {})
                b = data.get((scen, kind[2], t), {})
                vals = [v - b[r] for r, v in a.items() if r in b]
            elif kind == "lat" and t != "direct":
                base = data.get((scen, key, "direct"), {})
                vals = [v - base[r] for r, v in vals_by_round.items() if r in base]
            else:
                vals = list(vals_by_round.values())
            cells[t] = fmt_cell(vals, f)
            med[t] = statistics.median(vals) if vals else None
        if all(med[t] is None for t in targets):
            return

        def ratio(a, b):
            if med[a] is None or med[b] is None or med[b] <= 0 or med[a] < 0:
                return "—"
            return "%.2f" % (med[a] / med[b])

        rows.append("| %s | %s | %s | %s |" % (
            label.strip(), scen, " | ".join(cells[t] for t in targets),
            " | ".join(ratio(a, b) for _, a, b in ratios)))

    for scen in scen_order:
        if scen in ("memory", "strace", "fixed", "h2c"):
            continue
        if scen == "crypto":
            for key, label, f, kind in CRYPTO_METRICS:
                emit(scen, key, label, f, kind)
            continue
        for key, label, f, kind in METRICS + TLS_METRICS + FIXED_METRICS + TLS_LAT_METRICS + lat:
            emit(scen, key, label, f, kind)
    if "fixed" in scen_order:
        for key, label, f, kind in FIXED_METRICS + lat:
            emit("fixed", key, label, f, kind)
    if "h2c" in scen_order:
        for key, label, f, kind in H2C_METRICS:
            emit("h2c", key, label, f, kind)
    if "memory" in scen_order:
        for key, label, f, kind in MEM_METRICS:
            emit("memory", key, label, f, kind)
    if "strace" in scen_order:
        for key, label, f, kind in STRACE_METRICS:
            emit("strace", key, label, f, kind)

    with open(info) as fh:
        head = fh.read()
    text = head + "\n" + "\n".join(rows) + "\n"
    with open(out, "w") as fh:
        fh.write(text)
    sys.stdout.write("\n".join(rows) + "\n")


def jwt(kind, keyfile):
    import base64, hashlib, hmac, json, subprocess

    def b64u(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    alg = {"HS": "HS256", "RS": "RS256"}[kind]
    head = b64u(json.dumps({"alg": alg, "typ": "JWT", "kid": "bench-" + kind.lower()}).encode())
    body = b64u(json.dumps({"sub": "bench", "iat": int(time.time()),
                            "exp": int(time.time()) + 7 * 86400}).encode())
    msg = (head + "." + body).encode()
    if kind == "HS":
        with open(keyfile, "rb") as fh:
            sig = hmac.new(fh.read().rstrip(b"\n"), msg, hashlib.sha256).digest()
    else:
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", keyfile], input=msg,
                             capture_output=True, check=True, timeout=60).stdout
    print(head + "." + body + "." + b64u(sig))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "freeports":
        freeports(int(args[0]))
    elif cmd == "pct":
        pct(args[0])
    elif cmd == "conns":
        conns(int(args[0]), int(args[1]), args[2])
    elif cmd == "cpu":
        cpu(args)
    elif cmd == "rss":
        rss(args)
    elif cmd == "jwt":
        jwt(args[0], args[1])
    elif cmd == "table":
        table(args[0], args[1], args[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
