#!/usr/bin/env python3
"""Which top-level modules of src/ use which (from `crate::X` paths, tests excluded), the
cycles among them, and any use that goes upward in the rings:
cli > ops > host > plan > error > config > {image, crontab} > util. (`error` maps the
config and image errors to exit codes, so it sits above them; `image` is the image store,
a bottom layer that knows nothing of shim's definitions.)

With --files it also checks the FILE level: each .rs file is a node, and a file uses another
when it names an item the other defines (`crate::a::b::C`, `super::`, `self::`, a child
module, `use` trees with braces; a name a `mod.rs` re-exports with `pub use` is followed to
the file that defines it, and the re-export itself is not a use). Test code is excluded as
at the top level. Every file-level cycle is printed as its strongly connected component and
one shortest cycle through it, each step with the path that makes it.
Usage: python3 tools/modgraph.py [--files] [src]"""
import os, re, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fnlen import blank  # noqa: E402  (comments and string literals blanked out)

args = [a for a in sys.argv[1:] if a != "--files"]
FILES = "--files" in sys.argv[1:]
root = args[0] if args else "src"
TEST_FILES = ("testkit.rs", "testutil.rs", "fake.rs")
RANK = {"main": 9, "cli": 8, "ops": 7, "host": 6, "plan": 5, "error": 4, "config": 3,
        "image": 2, "crontab": 2, "util": 1, "timefmt": 1}

def strip_tests(text):
    out, skip, depth = [], False, 0
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]":
            # skip the next item (a mod block, an impl, a fn, or a one-line item)
            j = i + 1
            d, started = 0, False
            while j < len(lines):
                d += lines[j].count("{") - lines[j].count("}")
                started = started or "{" in lines[j]
                if (started and d <= 0) or (not started and lines[j].rstrip().endswith(";")):
                    break
                j += 1
            i = j + 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)

edges = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs") or f.endswith("tests.rs") or f in TEST_FILES:
            continue
        p = os.path.join(dp, f)
        rel = os.path.relpath(p, root)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        text = strip_tests(open(p).read())
        for m in re.finditer(r"crate::([a-z_]+)", text):
            dep = m.group(1)
            if dep != top:
                edges.setdefault(top, {}).setdefault(dep, set()).add(rel)
        for m in re.finditer(r"use crate::\{([^}]*)\}", text):
            for dep in re.findall(r"\b([a-z_]+)::", m.group(1)):
                if dep != top:
                    edges.setdefault(top, {}).setdefault(dep, set()).add(rel)

bad = 0
for a in sorted(edges):
    print(f"{a:8} -> {', '.join(sorted(edges[a]))}")
def reach(a):
    seen, todo = set(), [a]
    while todo:
        for b in edges.get(todo.pop(), {}):
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen
for a in sorted(edges):
    if a in reach(a):
        print(f"CYCLE through {a}")
        bad += 1
for a in edges:
    for b, files in edges[a].items():
        if RANK.get(b, 0) > RANK.get(a, 0):
            print(f"UPWARD {a} -> {b}: {sorted(files)}")
            bad += 1
if FILES:
    from modgraph_files import file_cycles  # noqa: E402
    bad += file_cycles(root, strip_tests)
what = "no cycle (modules and files)" if FILES else "no cycle"
print(f"ok: {what}, nothing imports upward" if bad == 0 else f"{bad} problem(s)")
sys.exit(1 if bad else 0)
