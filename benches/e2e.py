#!/usr/bin/env python3
"""End-to-end throughput: redis-benchmark against Redis directly, through
twemproxy (nutcracker), and through cutover in old-only and dual-write, in one
run, interleaved, medians of several rounds. "cutover dual-write cluster" is
dual-write with new a three-primary Redis Cluster (`cluster = true`), against
the standalone -> standalone "cutover dual-write" of the same rounds; "...
cluster shared" the same with shared connections on both caches.
"... shared" are old-only and dual-write with `connections = "shared"` on
both caches (session threads: one per core, the default); "... shared 1
thread" the same with `listen.workers = 1`, twemproxy's one thread.

Usage: benches/e2e.py [--rounds 5] [--requests 200000] [--clients 50]
                      [--pipelines 16,1] [--only REGEX] [--per-node 2]
                      [--before PATH-TO-OTHER-CUTOVER-BINARY]
(builds cutover in release mode; installs redis-server/nutcracker if missing)

With --before, a second cutover binary (e.g. a release build of the commit
before a restructuring: `git worktree add /tmp/base HEAD~1 && cargo build
--release --manifest-path /tmp/base/Cargo.toml`) runs beside this one in the
same rounds, interleaved, as "before old-only" and "before dual-write", so
a change's cost shows as a ratio measured under the same load.

--only keeps the cutover targets whose name matches REGEX (redis and
twemproxy always run).

Prints, per pipeline depth and test (SET, GET): requests/s, p50 latency, the
proxy process's CPU seconds per million requests (utime+stime from /proc), and
ratios to direct Redis and to twemproxy. All processes share this machine, so
numbers move with its load: compare ratios from the same run, not absolutes.
"""
import argparse
import csv
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("%s did not come up on port %d" % (what, port))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[11], fields[12] are utime and stime (stat fields 14 and 15).
    return (int(fields[11]) + int(fields[12])) / TICK


def free_cluster_port():
    """A free port whose cluster bus port (+10000) is free and valid too."""
    import random
    while True:
        port = random.randint(20000, 50000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


def start_cluster(start, tmp, primaries):
    """A Redis Cluster of `primaries` nodes on free ports: slots split
    evenly, nodes met, cluster_state:ok. Returns the ports."""
    ports = [free_cluster_port() for _ in range(primaries)]
    for i, port in enumerate(ports):
        d = os.path.join(tmp, "cluster-%d" % i)
        os.makedirs(d)
        start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", d, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
              port, "cluster-%d" % i)
    per = 16384 // primaries
    cli = lambda port, *args: subprocess.run(["redis-cli", "-p", str(port)] + [str(a) for a in args],
                                             capture_output=True, text=True, check=True).stdout
    for i, port in enumerate(ports):
        end = 16383 if i == primaries - 1 else (i + 1) * per - 1
        cli(port, "CLUSTER", "ADDSLOTSRANGE", i * per, end)
    for port in ports[1:]:
        cli(ports[0], "CLUSTER", "MEET", "127.0.0.1", port)
    deadline = time.time() + 30
    while not all("cluster_state:ok" in cli(p, "CLUSTER", "INFO")
                  and "cluster_known_nodes:%d" % primaries in cli(p, "CLUSTER", "INFO") for p in ports):
        if time.time() > deadline:
            sys.exit("the benchmark cluster never formed")
        time.sleep(0.1)
    return ports


def bench(port, pipeline, requests, clients):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(requests), "-c", str(clients),
         "-P", str(pipeline), "--csv"],
        capture_output=True, text=True, check=True).stdout
    rows = {}
    for row in csv.DictReader(io.StringIO(out)):
        rows[row["test"]] = (float(row["rps"]), float(row["p50_latency_ms"]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--pipelines", default="16,1")
    ap.add_argument("--before", help="another cutover binary to run beside this one")
    ap.add_argument("--only", help="run only the cutover targets matching this regex")
    ap.add_argument("--per-node", type=int, default=2, help="shared_per_node of the shared targets")
    args = ap.parse_args()

    subprocess.run([os.path.join(ROOT, "scripts", "ensure-deps.sh"), "nutcracker"], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "cutover"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "cutover")

    procs = []
    tmp = tempfile.mkdtemp(prefix="cutover-bench-")
    try:
        def start(cmd, port, what):
            log = open(os.path.join(tmp, what + ".log"), "w")
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            procs.append(p)
            wait_port(port, what)
            return p

        old, new, twem, c_old, c_dual, b_old, b_dual, c_clu, c_clus, s_old, s_dual, w_old, w_dual = (
            free_port() for _ in range(13))
        for port, name in ((old, "old"), (new, "new")):
            start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", tmp], port, "redis-" + name)
        import re
        wanted = lambda name: not args.only or re.search(args.only, name)
        cluster = None

        with open(os.path.join(tmp, "nutcracker.yml"), "w") as f:
            f.write("bench:\n  listen: 127.0.0.1:%d\n  hash: fnv1a_64\n  distribution: ketama\n"
                    "  redis: true\n  server_connections: 1\n  servers:\n   - 127.0.0.1:%d:1\n" % (twem, old))
        twem_p = start(["nutcracker", "-c", os.path.join(tmp, "nutcracker.yml"), "-o",
                        os.path.join(tmp, "nutcracker.out")], twem, "twemproxy")

        def cutover(port, phase, name, binary=binary, new=new, new_cluster=False, shared=False, workers=None):
            path = os.path.join(tmp, name.replace(" ", "-") + ".toml")
            conns = 'connections = "shared"\nshared_per_node = %d\n' % args.per_node if shared else ''
            threads = 'workers = %d\n' % workers if workers else ''
            with open(path, "w") as f:
                f.write('[listen]\naddress = "127.0.0.1:%d"\n%s[upstreams.old]\naddress = "127.0.0.1:%d"\n%s'
                        '[upstreams.new]\naddress = "127.0.0.1:%d"\ncluster = %s\n%s'
                        '[[routes]]\nname = "default"\nphase = "%s"\n'
                        '[admin]\nenabled = false\n'
                        % (port, threads, old, conns, new, "true" if new_cluster else "false", conns, phase))
            return (name, port, start([binary, "serve", "--config", path, "--log", "warn"], port, name))

        candidates = [
            ("cutover old-only", c_old, "old-only", {}),
            ("cutover dual-write", c_dual, "dual-write", {}),
            ("cutover dual-write cluster", c_clu, "dual-write", {"new_cluster": True}),
            ("cutover dual-write cluster shared", c_clus, "dual-write", {"new_cluster": True, "shared": True}),
            ("cutover old-only shared", s_old, "old-only", {"shared": True}),
            ("cutover dual-write shared", s_dual, "dual-write", {"shared": True}),
            ("cutover old-only shared 1 thread", w_old, "old-only", {"shared": True, "workers": 1}),
            ("cutover dual-write shared 1 thread", w_dual, "dual-write", {"shared": True, "workers": 1}),
        ]
        targets = [("redis", old, None), ("twemproxy", twem, twem_p)]
        for name, port, phase, kw in candidates:
            if wanted(name):
                if kw.get("new_cluster"):
                    cluster = cluster or start_cluster(start, tmp, 3)
                    kw["new"] = cluster[0]
                targets.append(cutover(port, phase, name, **kw))
        if args.before:
            targets += [cutover(b_old, "old-only", "before old-only", args.before),
                        cutover(b_dual, "dual-write", "before dual-write", args.before)]
        pipelines = [int(p) for p in args.pipelines.split(",")]
        # results[(target, P, test)] = list of (rps, p50, cpu_per_million)
        results = {}
        print("machine: %d cores; %d rounds x %d requests, %d clients" % (
            os.cpu_count(), args.rounds, args.requests, args.clients), file=sys.stderr)
        for rnd in range(args.rounds):
            for pipe in pipelines:
                # Rotate the order each round so no target always runs first.
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for name, port, proc in order:
                    before = cpu_seconds(proc.pid) if proc else 0.0
                    rows = bench(port, pipe, args.requests, args.clients)
                    cpu = (cpu_seconds(proc.pid) - before) if proc else 0.0
                    per_million = cpu / (2 * args.requests) * 1e6
                    for test, (rps, p50) in rows.items():
                        results.setdefault((name, pipe, test), []).append((rps, p50, per_million))
                    print("  round %d P=%-2d %-20s %s" % (rnd + 1, pipe, name, "  ".join(
                        "%s %.0f/s" % (t, r[0]) for t, r in rows.items())), file=sys.stderr)

        med = lambda xs: statistics.median(xs)
        print()
        print("| -P | test | target | req/s (median) | p50 ms | proxy CPU s / 1M req | vs redis | vs twemproxy |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for pipe in pipelines:
            for test in ("SET", "GET"):
                base = med([r[0] for r in results[("redis", pipe, test)]])
                twm = med([r[0] for r in results[("twemproxy", pipe, test)]])
                for name, _, proc in targets:
                    rs = results[(name, pipe, test)]
                    rps = med([r[0] for r in rs])
                    cpu = "%.2f" % med([r[2] for r in rs]) if proc else "-"
                    print("| %d | %s | %s | %.0f | %.3f | %s | %.2fx | %.2fx |" % (
                        pipe, test, name, rps, med([r[1] for r in rs]), cpu, rps / base, rps / twm))
        if args.before:
            print()
            print("| -P | test | phase | req/s now / before | CPU per request now / before |")
            print("| --- | --- | --- | ---: | ---: |")
            for pipe in pipelines:
                for test in ("SET", "GET"):
                    for phase in ("old-only", "dual-write"):
                        if ("cutover " + phase, pipe, test) not in results:
                            continue
                        now = results[("cutover " + phase, pipe, test)]
                        was = results[("before " + phase, pipe, test)]
                        print("| %d | %s | %s | %.3f | %.3f |" % (
                            pipe, test, phase, med([r[0] for r in now]) / med([r[0] for r in was]),
                            med([r[2] for r in now]) / med([r[2] for r in was])))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
