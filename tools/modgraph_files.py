"""The file level of tools/modgraph.py (see its docstring): which .rs file uses which, and the
cycles among them. Flow: map each file to its module path; read every path a file names
(`use` trees expanded, inline `crate::`/`super::`/`self::` paths, child-module paths); resolve
each to the longest module prefix that is a file, following `pub use` re-exports to the file
that defines the name; then strongly connected components (Tarjan) and a shortest cycle in
each, printed with the path text behind every step."""
import os
import re
from collections import deque

from fnlen import blank

TEST_FILES = ("testkit.rs", "testutil.rs", "fake.rs")
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def is_test_file(name):
    return name.endswith("tests.rs") or name in TEST_FILES


def module_path(rel):
    """src-relative file -> module path: main.rs -> (), a/mod.rs -> (a,), a/b.rs -> (a, b)."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("main", "lib") and len(parts) == 1:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def is_dir_module(rel):
    """Whether the file's children are declared in it (mod.rs, main.rs)."""
    base = os.path.basename(rel)
    return base in ("mod.rs", "main.rs", "lib.rs")


def composes(parent, child):
    """Whether `child` is a file under the directory module `parent` (a mod.rs or main.rs). A
    module composing its own submodules is not counted as a use: the submodules are its parts,
    and they may use what it defines for all of them. Cycles among siblings, or through a
    file outside the directory, still count."""
    if not is_dir_module(parent):
        return False
    d = os.path.dirname(parent)
    return d == "" or child.startswith(d + os.sep)


def expand_use(tree):
    """`crate::{a::b, c::{d, e}}` -> ["crate::a::b", "crate::c::d", "crate::c::e"] (renames
    already stripped by `strip_as`)."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        depth, start, items = 0, 0, []
        for i, c in enumerate(s):
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == "," and depth == 0:
                items.append(s[start:i])
                start = i + 1
        items.append(s[start:])
        for it in items:
            if not it:
                continue
            k = it.find("{")
            if k >= 0:
                walk(prefix + it[:k], it[k + 1:it.rfind("}")])
            else:
                out.append(prefix + it)

    walk("", tree)
    return out


def strip_as(tree):
    return re.sub(r"\s+as\s+" + IDENT, "", tree)


class Files:
    def __init__(self, root, strip_tests):
        self.root = root
        self.by_mod = {}  # module path -> rel file
        self.text = {}  # rel -> production text (tests stripped, comments/strings blanked)
        self.children = {}  # rel -> declared child module names
        for dp, _, fs in os.walk(root):
            for f in fs:
                if not f.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(dp, f), root)
                self.by_mod[module_path(rel)] = rel
                if is_test_file(f):
                    continue
                with open(os.path.join(dp, f)) as fh:
                    self.text[rel] = strip_tests(blank(fh.read()))
        for rel, text in self.text.items():
            self.children[rel] = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(" + IDENT + r")\s*;", text, re.M))
        self.reexports = {rel: self._reexports(rel) for rel in self.text}

    def uses(self, rel):
        """(path, is_reexport) for every path the file names."""
        text = self.text[rel]
        out = []
        spans = []
        for m in re.finditer(r"\b(pub(?:\([a-z]+\))?\s+)?use\s+([^;]+);", text):
            spans.append((m.start(), m.end()))
            for p in expand_use(strip_as(m.group(2))):
                out.append((p, bool(m.group(1))))
        rest = list(text)
        for a, b in spans:
            rest[a:b] = " " * (b - a)
        rest = "".join(rest)
        for m in re.finditer(r"(?<![A-Za-z0-9_:])(" + IDENT + r")((?:::" + IDENT + r")+)", rest):
            out.append((m.group(0), False))
        return out

    def absolute(self, rel, path):
        """A path as named in `rel` -> absolute segments, or None (external crate, local)."""
        segs = [s for s in path.split("::") if s]
        if not segs:
            return None
        here = list(module_path(rel))
        if segs[0] == "crate":
            base, segs = [], segs[1:]
        elif segs[0] in ("super", "self"):
            base = here
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
        elif segs[0] in self.children.get(rel, ()):
            base = here
        else:
            return None
        return base + segs

    def resolve(self, abs_path, depth=0):
        """Absolute segments -> the file defining the named item, following re-exports."""
        for k in range(len(abs_path), -1, -1):
            rel = self.by_mod.get(tuple(abs_path[:k]))
            if rel is None:
                continue
            rest = abs_path[k:]
            if rest and rest[0] == "self":
                rest = rest[1:]
            if rest and depth < 8 and rest[0] in self.reexports.get(rel, {}):
                return self.resolve(self.reexports[rel][rest[0]] + rest[1:], depth + 1)
            return rel
        return None

    def _reexports(self, rel):
        out = {}
        for p, pub in self.uses(rel):
            if not pub:
                continue
            a = self.absolute(rel, p)
            if a and a[-1] not in ("*", "self"):
                out[a[-1]] = a
        return out

    def edges(self):
        """file -> {file: first path text that makes the edge}."""
        edges = {}
        for rel in self.text:
            for p, pub in self.uses(rel):
                if pub:
                    continue  # a re-export: its users are sent to the defining file
                a = self.absolute(rel, p)
                if not a:
                    continue
                dep = self.resolve(a)
                if dep and dep != rel and dep in self.text and not composes(rel, dep):
                    edges.setdefault(rel, {}).setdefault(dep, p)
        return edges


def sccs(edges):
    index, low, on, stack, out, n = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(edges, comp):
    best = None
    for s in comp:
        prev, q = {s: None}, deque([s])
        while q:
            v = q.popleft()
            for w in sorted(edges.get(v, {})):
                if w not in comp:
                    continue
                if w == s:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    cyc = path[::-1] + [s]
                    if best is None or len(cyc) < len(best):
                        best = cyc
                    q.clear()
                    break
                if w not in prev:
                    prev[w] = v
                    q.append(w)
    return best


def file_cycles(root, strip_tests, show=False):
    """Print the file-level cycles; returns how many there are."""
    edges = Files(root, strip_tests).edges()
    if show:
        for a in sorted(edges):
            print(f"{a} -> {', '.join(sorted(edges[a]))}")
    comps = sccs(edges)
    for comp in comps:
        print(f"FILE CYCLE among {', '.join(comp)}")
        cyc = shortest_cycle(edges, set(comp))
        for a, b in zip(cyc, cyc[1:]):
            print(f"    {a} -> {b}  ({edges[a][b]})")
    return len(comps)


def selftest():
    """Checks the resolver on a small tree: a cycle through `super::`, one hidden behind a
    `pub use` re-export, a `use` tree with braces, a parent composing its children (no
    cycle), and test code (ignored). Run: python3 tools/modgraph_files.py"""
    import tempfile

    def strip_tests(text):
        return text.split("#[cfg(test)]")[0]

    files = {
        "main.rs": "mod a;\nmod b;\n",
        "a/mod.rs": "mod x;\nmod y;\npub use x::Thing;\npub fn shared() {}\nfn f() { y::g(); }\n",
        "a/x.rs": "pub struct Thing;\nfn f() { super::y::g(); super::shared(); }\n",
        "a/y.rs": "use crate::a::{Thing, x::Thing as T};\npub fn g() {}\n",
        "b.rs": "// crate::a::x::Thing in a comment\nfn f() { let _ = \"crate::a::y\"; }\n"
        "#[cfg(test)]\nmod tests { use crate::a::y; }\n",
    }
    with tempfile.TemporaryDirectory() as root:
        for rel, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
        edges = Files(root, strip_tests).edges()
    x, y = os.path.join("a", "x.rs"), os.path.join("a", "y.rs")
    m = os.path.join("a", "mod.rs")
    assert set(edges.get(x, {})) == {y, m}, edges  # super::y, super::shared
    assert set(edges.get(y, {})) == {x}, edges  # the re-export followed to x.rs
    assert m not in edges, edges  # it composes its children: not a use
    assert "b.rs" not in edges, edges  # comments, strings and tests do not count
    assert sccs(edges) == [sorted([x, y])], sccs(edges)
    print("ok: modgraph_files selftest")


if __name__ == "__main__":
    selftest()
