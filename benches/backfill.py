#!/usr/bin/env python3
"""Backfill throughput: 1M small keys copied from one redis-server to
another by `cutover backfill` (standalone), by the in-proxy backfill
(`POST /routes/default/backfill` on a serving `cutover serve`), and by a
naive one-key-at-a-time loop (DUMP, PTTL, RESTORE per key, redis-py), in
one run on this machine.

Usage: benches/backfill.py [--keys 1000000] [--rounds 3] [--naive-keys N]
(builds cutover in release mode; installs redis-server if missing; the
naive loop uses the redis-py venv of scripts/python-client.sh)

Old is filled with DEBUG POPULATE (string keys, 16-byte values); new is
flushed before each run. Prints keys/s and MB/s (DUMP payload bytes) per
method, medians over rounds for cutover, and the ratio to the naive loop.
The caches, the copier and this script share 2 cores: compare ratios from
one run, not absolutes across machines.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cli(port, *args):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def start_redis(tmp, name):
    port = free_port()
    d = os.path.join(tmp, name)
    os.makedirs(d)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", d, "--enable-debug-command", "yes"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            if redis_cli(port, "PING") == "PONG":
                return proc, port
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.05)
    sys.exit(f"redis-server {name} did not start")


def write_config(tmp, old, new, admin):
    path = os.path.join(tmp, "cutover.toml")
    with open(path, "w") as f:
        f.write(
            f"""[listen]
address = "127.0.0.1:{free_port()}"

[upstreams.old]
address = "127.0.0.1:{old}"

[upstreams.new]
address = "127.0.0.1:{new}"

[[routes]]
name = "default"
phase = "dual-write"

[admin]
address = "127.0.0.1:{admin}"
"""
        )
    return path


def standalone(binary, config, tmp):
    cursor = os.path.join(tmp, "cursor.json")
    t = time.perf_counter()
    out = subprocess.run(
        [binary, "backfill", "--config", config, "--json", "--cursor-file", cursor],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t
    counts = json.loads(out.stdout)["counts"]
    return seconds, counts["copied"], counts["bytes"]


def admin(port, method, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def in_proxy(admin_port):
    t = time.perf_counter()
    admin(admin_port, "POST", "/routes/default/backfill")
    while True:
        time.sleep(0.05)
        job = next(r for r in admin(admin_port, "GET", "/status")["routes"] if r["name"] == "default")["backfill"]
        if job["state"] != "running":
            break
    seconds = time.perf_counter() - t
    if job["state"] != "done":
        sys.exit(f"in-proxy backfill ended {job}")
    return seconds, job["copied"], job["bytes"]


NAIVE = r"""
import sys, time, redis
old = redis.Redis(port=int(sys.argv[1]))
new = redis.Redis(port=int(sys.argv[2]))
limit = int(sys.argv[3])
copied = nbytes = 0
t = time.perf_counter()
for key in old.scan_iter(count=1000):
    if copied >= limit:
        break
    payload = old.dump(key)
    if payload is None:
        continue
    ttl = old.pttl(key)
    new.restore(key, max(ttl, 0), payload, replace=True)
    copied += 1
    nbytes += len(payload)
print(time.perf_counter() - t, copied, nbytes)
"""


def naive(python, old, new, limit):
    out = subprocess.run([python, "-c", NAIVE, str(old), str(new), str(limit)], check=True, capture_output=True, text=True)
    seconds, copied, nbytes = out.stdout.split()
    return float(seconds), int(copied), int(nbytes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--naive-keys", type=int, default=None, help="keys the naive loop copies (default: all)")
    args = ap.parse_args()
    subprocess.run([os.path.join(ROOT, "scripts/ensure-deps.sh")], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target/release/cutover")
    python = subprocess.run(
        [os.path.join(ROOT, "scripts/python-client.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old_p, old = start_redis(tmp, "old")
        new_p, new = start_redis(tmp, "new")
        admin_port = free_port()
        config = write_config(tmp, old, new, admin_port)
        serve = None
        try:
            redis_cli(old, "DEBUG", "POPULATE", args.keys, "key", 16)
            print(f"old: {redis_cli(old, 'DBSIZE')} keys (DEBUG POPULATE, 16-byte strings)")
            results = {"standalone": [], "in-proxy": []}
            serve = subprocess.Popen([binary, "serve", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                try:
                    admin(admin_port, "GET", "/status")
                    break
                except OSError:
                    time.sleep(0.1)
            for r in range(args.rounds):
                for method in ("standalone", "in-proxy"):
                    redis_cli(new, "FLUSHALL")
                    s, copied, nbytes = standalone(binary, config, tmp) if method == "standalone" else in_proxy(admin_port)
                    assert copied == args.keys, (method, copied)
                    results[method].append((s, copied, nbytes))
                    print(f"round {r + 1} {method:10}: {copied / s:>9,.0f} keys/s  {nbytes / s / 1e6:6.1f} MB/s  ({s:.2f} s)")
            redis_cli(new, "FLUSHALL")
            limit = args.naive_keys or args.keys
            s, copied, nbytes = naive(python, old, new, limit)
            print(f"naive loop      : {copied / s:>9,.0f} keys/s  {nbytes / s / 1e6:6.1f} MB/s  ({s:.2f} s for {copied} keys)")
            naive_rate = copied / s
            print("\nmedians:")
            for method, runs in results.items():
                rate = statistics.median(c / s for s, c, _ in runs)
                mb = statistics.median(b / s / 1e6 for s, _, b in runs)
                print(f"  {method:10} {rate:>9,.0f} keys/s  {mb:6.1f} MB/s  {rate / naive_rate:5.1f}x the naive loop")
            print(f"  {'naive':10} {naive_rate:>9,.0f} keys/s  {nbytes / s / 1e6:6.1f} MB/s")
        finally:
            if serve:
                serve.terminate()
                serve.wait()
            for p in (old_p, new_p):
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
