#!/usr/bin/env python3
"""Soak: a mixed workload through cutover in dual-write for N minutes, with
the mirror cache killed (SIGKILL) and restarted periodically and the route
flipped dual-write -> read-new -> dual-write, then a wait for the journal to
drain and `cutover verify`: old and new must be identical.

Usage: scripts/soak.py [--minutes 10] [--clients 8] [--keys 20000]
(builds cutover in release mode; installs redis-server if missing)

Prints per minute: requests/s, p50/p99 latency, client errors, the proxy's
resident memory; then totals (route counters, peak RSS) and the verify
result. Exit status: 0 when verify found the caches identical and no client
saw an error, 1 otherwise. Not a CI test: it runs for minutes.

The caches run with appendfsync always, so a killed cache keeps what it
acknowledged (a cache that loses acknowledged writes on restart diverges by
design; verify --repair is the answer to that, not this script).
"""
import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """A minimal RESP client: one command at a time, replies parsed enough
    to know where they end and whether they are errors."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.buf = b""

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind in b"+:":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode(errors="replace"))
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self.buf += data
            value, self.buf = self.buf[:n], self.buf[n + 2:]
            return value
        if kind == b"*":
            n = int(rest)
            return [self.reply() for _ in range(max(n, 0))]
        raise RuntimeError("unexpected reply %r" % line)

    def call(self, *args):
        if self.sock is None:
            self.connect()
        try:
            self.sock.sendall(encode(*args))
            return self.reply()
        except (OSError, ConnectionError):
            self.sock = None
            raise


def operation(rnd, keys, client, clients):
    # Each client has its own keys: two clients writing one key at the same
    # moment may be applied in different orders by old and new (a
    # documented limit), which is not what this measures.
    k = rnd.randrange(max(keys // clients, 1))
    p = "%d:" % client
    r = rnd.random()
    if r < 0.35:
        return ("GET", p + "s:%d" % k)
    if r < 0.55:
        return ("SET", p + "s:%d" % k, "v%d-%d" % (k, rnd.randrange(1 << 30)), "EX", 3600)
    if r < 0.65:
        return ("INCR", p + "c:%d" % (k % 250))
    if r < 0.75:
        return ("HSET", p + "h:%d" % (k % 600), "f%d" % rnd.randrange(8), rnd.randrange(1000))
    if r < 0.82:
        return ("HGETALL", p + "h:%d" % (k % 600))
    if r < 0.88:
        return ("RPUSH", p + "l:%d" % (k % 125), rnd.randrange(1000))
    if r < 0.91:
        return ("LTRIM", p + "l:%d" % (k % 125), -20, -1)
    if r < 0.95:
        return ("SADD", p + "set:%d" % (k % 125), rnd.randrange(100))
    return ("DEL", p + "s:%d" % k)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = []
        self.errors = 0
        self.error_samples = []

    def take(self):
        with self.lock:
            lat, errs = self.latencies, self.errors
            self.latencies, self.errors = [], 0
            return lat, errs


def worker(port, keys, client, clients, stats, stop):
    rnd = random.Random(client)
    conn = Conn(port)
    while not stop.is_set():
        op = operation(rnd, keys, client, clients)
        started = time.perf_counter()
        try:
            conn.call(*op)
            took = time.perf_counter() - started
            with stats.lock:
                stats.latencies.append(took)
        except Exception as e:  # noqa: BLE001 - counted and shown
            with stats.lock:
                stats.errors += 1
                if len(stats.error_samples) < 5:
                    stats.error_samples.append("%s: %s" % (op[0], e))
            time.sleep(0.01)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--kill-every", type=float, default=45, help="seconds between mirror kills")
    ap.add_argument("--flip-every", type=float, default=100, help="seconds between phase flips")
    args = ap.parse_args()

    subprocess.run([os.path.join(ROOT, "scripts", "ensure-deps.sh")], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "cutover"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "cutover")
    tmp = tempfile.mkdtemp(prefix="cutover-soak-")
    ports = {"old": free_port(), "new": free_port()}
    proxy_port, admin_port = free_port(), free_port()
    caches = {}

    def start_cache(name):
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        caches[name] = subprocess.Popen(
            ["redis-server", "--port", str(ports[name]), "--bind", "127.0.0.1", "--dir", d, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--logfile", os.path.join(d, "redis.log")])
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if Conn(ports[name]).call("PING") == b"PONG":
                    return
            except Exception:  # noqa: BLE001 - still loading
                time.sleep(0.05)
        sys.exit("%s did not come up" % name)

    for name in ("old", "new"):
        start_cache(name)
    config = os.path.join(tmp, "cutover.toml")
    with open(config, "w") as f:
        f.write('[listen]\naddress = "127.0.0.1:%d"\n[upstreams.old]\naddress = "127.0.0.1:%d"\n'
                '[upstreams.new]\naddress = "127.0.0.1:%d"\n[[routes]]\nname = "default"\nphase = "dual-write"\n'
                '[admin]\naddress = "127.0.0.1:%d"\n' % (proxy_port, ports["old"], ports["new"], admin_port))
    proxy = subprocess.Popen([binary, "serve", "--config", config, "--log", "warn"],
                             stderr=open(os.path.join(tmp, "cutover.log"), "w"))
    deadline = time.time() + 10
    while True:
        try:
            Conn(proxy_port).call("PING")
            break
        except Exception:  # noqa: BLE001
            if time.time() > deadline:
                sys.exit("cutover did not come up")
            time.sleep(0.05)

    def admin(method, path, body=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (admin_port, path), method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    stats, stop = Stats(), threading.Event()
    threads = [threading.Thread(target=worker, args=(proxy_port, args.keys, i, args.clients, stats, stop),
                                daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()

    phase = "dual-write"
    events = []
    started = time.time()
    next_kill, next_flip = started + args.kill_every, started + args.flip_every
    minute_start, peak_rss = started, 0
    rows, total_requests = [], 0
    print("minute | req/s | p50 ms | p99 ms | client errors | proxy RSS MiB | events", flush=True)
    try:
        while time.time() - started < args.minutes * 60:
            time.sleep(0.5)
            now = time.time()
            peak_rss = max(peak_rss, rss_kib(proxy.pid))
            if now >= next_kill:
                mirror = "new" if phase == "dual-write" else "old"
                caches[mirror].send_signal(signal.SIGKILL)
                caches[mirror].wait()
                time.sleep(3)
                start_cache(mirror)
                events.append("killed %s for 3 s" % mirror)
                next_kill = now + args.kill_every
            if now >= next_flip:
                phase = "read-new" if phase == "dual-write" else "dual-write"
                admin("PUT", "/routes/default/phase", {"phase": phase})
                events.append("flip to %s" % phase)
                next_flip = now + args.flip_every
            if now - minute_start >= 60 or now - started >= args.minutes * 60:
                lat, errs = stats.take()
                lat.sort()
                q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0
                row = (len(rows) + 1, len(lat) / (now - minute_start), q(0.5), q(0.99), errs,
                       rss_kib(proxy.pid) / 1024, "; ".join(events))
                rows.append(row)
                total_requests += len(lat)
                print("%6d | %5.0f | %6.2f | %6.2f | %13d | %13.1f | %s" % row, flush=True)
                events, minute_start = [], now
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)

    if phase != "dual-write":
        admin("PUT", "/routes/default/phase", {"phase": "dual-write"})
    deadline = time.time() + 120
    while time.time() < deadline:
        status = admin("GET", "/status")
        if all(r["journal_keys"] == 0 for r in status["routes"]):
            break
        time.sleep(0.5)
    counts = admin("GET", "/status")["routes"][0]["counts"]
    verify = subprocess.run([binary, "verify", "--config", config], capture_output=True, text=True)
    proxy.send_signal(signal.SIGTERM)
    proxy.wait(timeout=30)
    for p in caches.values():
        p.terminate()

    total_errors = sum(r[4] for r in rows)
    print()
    print("requests: %d over %.1f min; client errors: %d%s" % (
        total_requests, args.minutes, total_errors,
        " (e.g. %s)" % "; ".join(stats.error_samples) if stats.error_samples else ""))
    print("peak proxy RSS: %.1f MiB" % (peak_rss / 1024))
    print("median of per-minute p99: %.2f ms" % statistics.median(r[3] for r in rows))
    print("counters: " + ", ".join("%s=%d" % (k, counts[k]) for k in (
        "writes", "reads", "mirrored", "mirror_failed", "mirror_shed", "mismatches", "repaired",
        "journalled", "upstream_failed")))
    print("verify (exit %d): %s" % (verify.returncode, (verify.stdout + verify.stderr).strip()))
    print("work dir (logs): %s" % tmp)
    sys.exit(0 if verify.returncode == 0 and total_errors == 0 else 1)


if __name__ == "__main__":
    main()
