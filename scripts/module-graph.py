#!/usr/bin/env python3
"""The crate's module import graph, from the code's own `crate::` paths, and
its loops.

Usage: scripts/module-graph.py [--edges] [--dot]

A node is a top-level module (`src/session/` and `src/session.rs` are both
`session`); an edge a -> b means some file of a names `crate::b` (in a `use`
line or inline). Test modules (`#[cfg(test)] mod tests`) are left out: they
may reach anywhere. Exits 1 when the graph has a loop, printing each one, so
CI keeps the layering (see README, Development). `main.rs` is the binary's
entry and may import anything, so it is not a node.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
CRATE = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def module_of(path):
    rel = os.path.relpath(path, ROOT)
    top = rel.split(os.sep)[0]
    return top[:-3] if top.endswith(".rs") else top


def code_without_tests(text):
    # Everything from the first `#[cfg(test)]` on is test code by this
    # crate's habit (test modules come last in a file).
    i = text.find("#[cfg(test)]")
    text = text if i < 0 else text[:i]
    # Comments name modules without depending on them.
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


def graph():
    edges = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            mod = module_of(path)
            if mod in ("main", "lib"):
                continue
            with open(path) as fh:
                text = code_without_tests(fh.read())
            # `use crate::{a, b::c}` groups name several modules.
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                for name in re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group):
                    edges.setdefault(mod, set()).add(name)
            for name in CRATE.findall(text):
                edges.setdefault(mod, set()).add(name)
    for mod in list(edges):
        edges[mod].discard(mod)
    return edges


def loops(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    nodes = set(edges) | {w for ws in edges.values() for w in ws}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph()
    if "--dot" in sys.argv:
        print("digraph cutover {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print('  "%s" -> "%s";' % (a, b))
        print("}")
        return 0
    if "--edges" in sys.argv:
        for a in sorted(edges):
            print("%-10s -> %s" % (a, ", ".join(sorted(edges[a]))))
    found = loops(edges)
    for comp in found:
        print("loop: " + " <-> ".join(comp))
        for a in comp:
            print("  %s -> %s" % (a, ", ".join(sorted(b for b in edges.get(a, ()) if b in comp))))
    if found:
        return 1
    print("module graph: %d modules, no import loops" % len(edges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
