#!/usr/bin/env python3
"""Lengths of production Rust functions, longest first.

Usage: python3 tools/fnlen.py [DIR] [--max N]   (default: src; TOP=N shows N functions,
default 15; with --max, exits 1 if any function is longer than N lines: CI runs it with 120)

Counts the lines of each `fn` from its signature to its closing brace, skipping items under
`#[cfg(test)]` and the test-only files (*_tests.rs, tests.rs, testutil.rs, fake.rs). Before
counting braces the text is blanked out inside comments, string literals (including raw and
multi-line ones), byte strings and char literals, so braces in them do not fool it; newlines
are kept, so line numbers stay right. Ends with a summary: how many functions, how many are
over 80 and over 120 lines.
"""
import os
import re
import sys

SKIP_FILES = ("tests.rs", "testutil.rs", "fake.rs")


def blank(text):
    """`text` with comments and literal contents replaced by spaces (newlines kept)."""
    out = []
    i, n = 0, len(text)

    def keep_newlines(s):
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(keep_newlines(text[i:j]))
            i = j
        elif re.match(r'(br|r)#*"', text[i:i + 260]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'(br|r)(#*)"', text[i:])
            close = '"' + m.group(2)
            j = text.find(close, i + m.end())
            j = n if j < 0 else j + len(close)
            out.append(keep_newlines(text[i:j]))
            i = j
        elif c == '"' or (c == "b" and text.startswith('b"', i) and not (i and text[i - 1].isalnum())):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append('""' + keep_newlines(text[i + 2:j]) if j - i >= 2 else text[i:j])
            i = j
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}', '{'), not a lifetime ('a).
            m = re.match(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'\n])'", text[i:])
            if m:
                out.append("''" + " " * (m.end() - 2))
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


FN = re.compile(r"\s*(pub(\([a-z:]+\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def item_end(lines, i):
    """Index of the line where the item starting at line `i` ends (its closing brace, or a `;`
    before any brace), and whether it has a body."""
    depth, started = 0, False
    for j in range(i, len(lines)):
        t = lines[j]
        if not started and t.rstrip().endswith(";") and "{" not in t:
            return j, False
        depth += t.count("{") - t.count("}")
        if "{" in t:
            started = True
        if started and depth <= 0:
            return j, True
    return len(lines) - 1, started


def functions(path):
    with open(path) as f:
        lines = blank(f.read()).split("\n")
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("#[cfg(test)]"):
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("#["):
                j += 1
            i = item_end(lines, j)[0] + 1
            continue
        m = FN.match(lines[i])
        if m:
            j, body = item_end(lines, i)
            if body:
                yield j - i + 1, i + 1, m.group(7)
        i += 1


def main():
    args = sys.argv[1:]
    limit = None
    if "--max" in args:
        k = args.index("--max")
        limit = int(args[k + 1])
        del args[k : k + 2]
    root = args[0] if args else "src"
    res = []
    for dp, _, fs in os.walk(root):
        for f in fs:
            if not f.endswith(".rs") or f.endswith("_tests.rs") or f in SKIP_FILES:
                continue
            p = os.path.join(dp, f)
            res.extend((n, p, line, name) for n, line, name in functions(p))
    res.sort(reverse=True)
    for n, p, line, name in res[: int(os.environ.get("TOP", "15"))]:
        print(f"{n:5} {p}:{line} {name}")
    over80 = sum(1 for r in res if r[0] > 80)
    over120 = sum(1 for r in res if r[0] > 120)
    print(f"functions: {len(res)}, over 80: {over80}, over 120: {over120}")
    if limit is not None:
        long = [r for r in res if r[0] > limit]
        for n, p, line, name in long:
            print(f"over {limit} lines: {p}:{line} {name} ({n})")
        if long:
            sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        pass
