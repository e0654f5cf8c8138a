#!/usr/bin/env python3
"""Fails if the top-level modules of a crate import each other in a cycle.

A module's edges are the `crate::<module>` paths written anywhere in its files (src/<m>.rs or
src/<m>/**.rs), `use` or inline. Each crate is checked on its own: between crates Cargo
already forbids cycles. docs/DESIGN.md §Layering lists the layers this check keeps honest.

Usage: scripts/check-layers.py [--graph]   (--graph prints every module's imports)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = {
    "tollgate": ROOT / "src",
    "tollgate-admin-api": ROOT / "admin-api" / "src",
    "tollgate-cli": ROOT / "cli" / "src",
    "tollgate-testkit": ROOT / "testkit" / "src",
}
PATH = re.compile(r"\bcrate::(?:\{([^}]*)\}|([a-z_][a-z0-9_]*))")
COMMENT = re.compile(r"//.*$", re.M)


def modules(src):
    found = {}
    for entry in sorted(src.iterdir()):
        if entry.name in ("lib.rs", "main.rs"):
            continue
        if entry.suffix == ".rs":
            found[entry.stem] = [entry]
        elif entry.is_dir():
            found[entry.name] = sorted(entry.rglob("*.rs"))
    return found


def edges(files, names):
    out = set()
    for f in files:
        text = COMMENT.sub("", f.read_text())
        for group, single in PATH.findall(text):
            for part in ([p.strip().split("::")[0] for p in group.split(",")] if group else [single]):
                if part in names:
                    out.add(part)
    return out


def cycles(graph):
    """Tarjan's strongly connected components larger than one module."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    failed = False
    for crate, src in CRATES.items():
        mods = modules(src)
        graph = {m: edges(files, mods) - {m} for m, files in mods.items()}
        if "--graph" in sys.argv:
            for m in sorted(graph):
                print(f"{crate}::{m} -> {', '.join(sorted(graph[m])) or '-'}")
        for comp in cycles(graph):
            failed = True
            inner = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
            print(f"{crate}: import cycle among {', '.join(comp)}:\n  " + "\n  ".join(inner))
    if not failed:
        print("check-layers: no import cycles between modules")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
