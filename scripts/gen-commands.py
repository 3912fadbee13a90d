#!/usr/bin/env python3
"""Generate src/commands/table.rs from a real Redis 7 server's own metadata.

Usage: scripts/gen-commands.py [--redis-server PATH] [--out src/commands/table.rs]

Starts a throwaway redis-server on a free loopback port, reads COMMAND INFO
(flags, ACL categories, tips, key specs, subcommands) and COMMAND DOCS (group),
and writes a Rust table. The output is committed; rerun the script against a
newer Redis to pick up new commands. Standard library only.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Resp:
    """Just enough of a RESP2 client to read COMMAND INFO / DOCS."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self.read()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError("unexpected reply %r" % line)


def pairs(flat):
    return {flat[i]: flat[i + 1] for i in range(0, len(flat or []), 2)}


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def const_name(prefix, s):
    return prefix + s.upper().replace("-", "_").replace(":", "_").replace("@", "")


class Gen:
    def __init__(self, info, docs):
        self.info = info
        self.docs = docs
        self.flags = set()
        self.acl = set()
        self.groups = set()
        self.ks_flags = set()
        self.collect(info.values())

    def collect(self, entries):
        for e in entries:
            self.flags.update(e[2])
            self.acl.update(e[6])
            for spec in e[8] or []:
                self.ks_flags.update(pairs(spec)["flags"])
            self.collect(e[9] or [])
        for d in self.docs.values():
            self.groups.add(d.get("group", "generic"))
            for sd in (d.get("subcommands") or {}).values():
                self.groups.add(sd.get("group", "generic"))

    def key_spec(self, spec):
        spec = pairs(spec)
        bs, fk = pairs(spec["begin_search"]), pairs(spec["find_keys"])
        flags = " | ".join(const_name("KS_", f) for f in sorted(spec["flags"])) or "0"
        if bs["type"] == "index":
            begin = "BeginSearch::Index(%d)" % pairs(bs["spec"])["index"]
        elif bs["type"] == "keyword":
            s = pairs(bs["spec"])
            begin = "BeginSearch::Keyword { keyword: %s, start_from: %d }" % (rust_str(s["keyword"]), s["startfrom"])
        else:
            begin = "BeginSearch::Unknown"
        if fk["type"] == "range":
            s = pairs(fk["spec"])
            find = "FindKeys::Range { last_key: %d, step: %d, limit: %d }" % (s["lastkey"], s["keystep"], s["limit"])
        elif fk["type"] == "keynum":
            s = pairs(fk["spec"])
            find = "FindKeys::KeyNum { keynum_idx: %d, first_key: %d, step: %d }" % (
                s["keynumidx"], s["firstkey"], s["keystep"])
        else:
            find = "FindKeys::Unknown"
        return "KeySpec { flags: %s, begin: %s, find: %s }" % (flags, begin, find)

    def entry(self, e, doc, indent):
        pad = " " * indent
        name, arity, flags, acl, tips, specs, subs = e[0], e[1], e[2], e[6], e[7], e[8] or [], e[9] or []
        tip_bits = []
        for t in tips:
            if t == "nondeterministic_output":
                tip_bits.append("TIP_NONDETERMINISTIC_OUTPUT")
            elif t == "nondeterministic_output_order":
                tip_bits.append("TIP_NONDETERMINISTIC_OUTPUT_ORDER")
        sub_docs = (doc or {}).get("subcommands") or {}
        out = [pad + "CommandSpec {"]
        out.append(pad + "    name: %s," % rust_str(name.lower()))
        out.append(pad + "    arity: %d," % arity)
        out.append(pad + "    flags: %s," % (" | ".join(const_name("F_", f) for f in sorted(flags)) or "0"))
        out.append(pad + "    acl: %s," % (" | ".join(const_name("ACL_", a) for a in sorted(acl)) or "0"))
        out.append(pad + "    group: Group::%s," % camel((doc or {}).get("group", "generic")))
        out.append(pad + "    tips: %s," % (" | ".join(tip_bits) or "0"))
        if specs:
            out.append(pad + "    key_specs: &[")
            for s in specs:
                out.append(pad + "        " + self.key_spec(s) + ",")
            out.append(pad + "    ],")
        else:
            out.append(pad + "    key_specs: &[],")
        if subs:
            out.append(pad + "    subcommands: &[")
            for s in sorted(subs, key=lambda s: s[0]):
                out.extend(self.entry(s, sub_docs.get(s[0]), indent + 8))
            out.append(pad + "    ],")
        else:
            out.append(pad + "    subcommands: &[],")
        out.append(pad + "},")
        return out

    def render(self, version):
        lines = [
            "// @generated by scripts/gen-commands.py from redis-server %s. Do not edit." % version,
            "//",
            "// Flags, ACL categories, key specs and tips as COMMAND INFO reports them;",
            "// groups from COMMAND DOCS.",
            "",
            "use super::spec::*;",
            "",
            "pub(crate) const REDIS_VERSION: &str = %s;" % rust_str(version),
            "",
        ]
        for i, f in enumerate(sorted(self.flags)):
            lines.append("pub(crate) const %s: u64 = 1 << %d;" % (const_name("F_", f), i))
        lines.append("")
        for i, a in enumerate(sorted(self.acl)):
            lines.append("pub(crate) const %s: u64 = 1 << %d;" % (const_name("ACL_", a), i))
        lines.append("")
        for i, k in enumerate(sorted(self.ks_flags)):
            lines.append("pub(crate) const %s: u32 = 1 << %d;" % (const_name("KS_", k), i))
        lines.append("")
        lines.append("#[derive(Clone, Copy, Debug, PartialEq, Eq)]")
        lines.append("pub enum Group {")
        for g in sorted(self.groups):
            lines.append("    %s," % camel(g))
        lines.append("}")
        lines.append("")
        lines.append("pub(crate) static COMMANDS: &[CommandSpec] = &[")
        for name in sorted(self.info):
            lines.extend(self.entry(self.info[name], self.docs.get(name), 4))
        lines.append("];")
        return "\n".join(lines) + "\n"


def camel(s):
    return "".join(p.capitalize() for p in s.replace("_", "-").split("-"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "src", "commands", "table.rs"))
    args = ap.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [args.redis_server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    conn = Resp(port)
                    conn.call("PING")
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                sys.exit("redis-server did not start on port %d" % port)
            info = conn.call("INFO", "server")
            version = next(l.split(":", 1)[1] for l in info.splitlines() if l.startswith("redis_version:"))
            if not version.startswith("7."):
                sys.exit("need Redis 7.x for key specs and tips, got %s" % version)
            entries = {e[0]: e for e in conn.call("COMMAND", "INFO")}
            raw_docs = conn.call("COMMAND", "DOCS")
            docs = {}
            for i in range(0, len(raw_docs), 2):
                d = pairs(raw_docs[i + 1])
                if d.get("subcommands"):
                    d["subcommands"] = {k: pairs(v) for k, v in pairs(d["subcommands"]).items()}
                docs[raw_docs[i]] = d
        finally:
            proc.terminate()
            proc.wait()

    text = Gen(entries, docs).render(version)
    with open(args.out, "w") as f:
        f.write(text)
    print("wrote %s: %d commands from redis %s" % (args.out, len(entries), version))


if __name__ == "__main__":
    main()
