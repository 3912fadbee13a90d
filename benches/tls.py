#!/usr/bin/env python3
"""TLS cost: redis-benchmark against Redis directly (plain and TLS) and
through cutover (old-only) with a TLS upstream, from a plain client and from
a TLS client, in one run, interleaved, medians of several rounds.

Usage: benches/tls.py [--rounds 3] [--requests 100000] [--clients 50]
(builds cutover in release mode; needs redis-server built with TLS, as
Debian's is, and openssl for the throwaway certificates)

The ratio that matters is "cutover TLS -> TLS" against "redis TLS": what the
proxy costs on a TLS-only managed cache; "cutover plain -> plain" is the
same proxy without TLS, for what TLS adds inside it. All processes share this machine:
compare ratios from the same run, not absolutes.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import ROOT, cpu_seconds, free_port  # noqa: E402


def wait_tcp(port, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("%s did not come up on port %d" % (what, port))


def certificates(tmp):
    """A CA and a server certificate for 127.0.0.1/localhost (EC P-256)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", "/CN=cutover bench CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(tmp, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return tuple(os.path.join(tmp, n) for n in ("ca.pem", "server.pem", "server.key"))


def bench(port, tls, ca, pipeline, requests, clients):
    cmd = ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(requests), "-c", str(clients),
           "-P", str(pipeline), "--csv"]
    if tls:
        cmd += ["--tls", "--cacert", ca]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {row["test"]: (float(row["rps"]), float(row["p50_latency_ms"]))
            for row in csv.DictReader(io.StringIO(out))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--pipelines", default="16,1")
    args = ap.parse_args()

    subprocess.run([os.path.join(ROOT, "scripts", "ensure-deps.sh")], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "cutover"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "cutover")

    procs = []
    tmp = tempfile.mkdtemp(prefix="cutover-tls-bench-")
    try:
        ca, cert, key = certificates(tmp)

        def start(cmd, port, what):
            log = open(os.path.join(tmp, what + ".log"), "w")
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            procs.append(p)
            wait_tcp(port, what)
            return p

        plain, tls, c_base, c_plain, c_tls = (free_port() for _ in range(5))
        start(["redis-server", "--port", str(plain), "--tls-port", str(tls), "--bind", "127.0.0.1",
               "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
               "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", tmp], plain, "redis")

        def cutover(port, listen_tls, name, upstream_tls=True):
            path = os.path.join(tmp, name + ".toml")
            listen = '[listen]\naddress = "127.0.0.1:%d"\n' % port
            if listen_tls:
                listen += 'tls_cert_file = "%s"\ntls_key_file = "%s"\n' % (cert, key)
            old = '[upstreams.old]\naddress = "127.0.0.1:%d"\n' % plain
            if upstream_tls:
                old = '[upstreams.old]\naddress = "127.0.0.1:%d"\ntls = true\nca_file = "%s"\n' % (tls, ca)
            with open(path, "w") as f:
                f.write(listen + old + '[upstreams.new]\naddress = "127.0.0.1:%d"\n[[routes]]\nname = "default"\n'
                        'phase = "old-only"\n[admin]\nenabled = false\n' % plain)
            return start([binary, "serve", "--config", path, "--log", "warn"], port, name)

        targets = [
            ("redis plain", plain, False, None),
            ("redis TLS", tls, True, None),
            ("cutover plain -> plain", c_base, False, cutover(c_base, False, "cutover-base", upstream_tls=False)),
            ("cutover plain -> TLS", c_plain, False, cutover(c_plain, False, "cutover-plain")),
            ("cutover TLS -> TLS", c_tls, True, cutover(c_tls, True, "cutover-tls")),
        ]
        pipelines = [int(p) for p in args.pipelines.split(",")]
        results = {}
        print("machine: %d cores; %d rounds x %d requests, %d clients" % (
            os.cpu_count(), args.rounds, args.requests, args.clients), file=sys.stderr)
        for rnd in range(args.rounds):
            for pipe in pipelines:
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for name, port, use_tls, proc in order:
                    before = cpu_seconds(proc.pid) if proc else 0.0
                    rows = bench(port, use_tls, ca, pipe, args.requests, args.clients)
                    cpu = (cpu_seconds(proc.pid) - before) if proc else 0.0
                    per_million = cpu / (2 * args.requests) * 1e6
                    for test, (rps, p50) in rows.items():
                        results.setdefault((name, pipe, test), []).append((rps, p50, per_million))
                    print("  round %d P=%-2d %-22s %s" % (rnd + 1, pipe, name, "  ".join(
                        "%s %.0f/s" % (t, r[0]) for t, r in rows.items())), file=sys.stderr)

        med = statistics.median
        print()
        print("| -P | test | target | req/s (median) | p50 ms | proxy CPU s / 1M req | vs redis plain | vs redis TLS |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for pipe in pipelines:
            for test in ("SET", "GET"):
                base = med([r[0] for r in results[("redis plain", pipe, test)]])
                base_tls = med([r[0] for r in results[("redis TLS", pipe, test)]])
                for name, _, _, proc in targets:
                    rs = results[(name, pipe, test)]
                    rps = med([r[0] for r in rs])
                    cpu = "%.2f" % med([r[2] for r in rs]) if proc else "-"
                    print("| %d | %s | %s | %.0f | %.3f | %s | %.2fx | %.2fx |" % (
                        pipe, test, name, rps, med([r[1] for r in rs]), cpu, rps / base, rps / base_tls))
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
