#!/usr/bin/env python3
"""Import structure of a Rust crate or workspace, from its source text.

The team's checker (shared/tools/layers.py), kept here so that CI runs it on a clean clone.

usage: layers.py [ROOT]   (default: the current directory)

Files are modules (src/a/b.rs and src/a/b/mod.rs are a::b). An edge A -> B is a path that A names
(`crate::x::y`, `super::y`, `self::y`, or another workspace crate's name) whose longest known module
prefix is B. Prints:
  - the top-level module graph's cycles (per crate): modules of one crate that import each other
  - file cycles: strongly connected files, ignoring edges from a file to its own ancestors (a child
    using its parent's items is how Rust nests modules)
Exit 1 when either is non-empty."""
import os, re, sys
from collections import defaultdict

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
crates = {}  # crate name -> src dir
def crate_name(cargo):
    m = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', open(cargo).read(), re.M | re.S)
    return m.group(1).replace("-", "_") if m else None
for dp, dns, fns in os.walk(root):
    dns[:] = [d for d in dns if d not in ("target", ".git", "node_modules", "tests", "benches", "examples", "fuzz")]
    if "Cargo.toml" in fns and os.path.isdir(os.path.join(dp, "src")):
        n = crate_name(os.path.join(dp, "Cargo.toml"))
        if n: crates[n] = os.path.join(dp, "src")

mods = {}  # (crate, modpath tuple) -> file
for cname, src in crates.items():
    for dp, dns, fns in os.walk(src):
        for f in fns:
            if not f.endswith(".rs"): continue
            rel = os.path.relpath(os.path.join(dp, f), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"): rel = rel[:-1]
            if rel and rel[-1] in ("tests",) and False: pass
            mods[(cname, tuple(rel))] = os.path.relpath(os.path.join(dp, f), root)

def strip(text):
    text = re.sub(r'r(#+)".*?"\1', '""', text, flags=re.S)
    text = re.sub(r"b?'(?:\\.|[^'\\])'", "' '", text)
    out, i, n = [], 0, len(text)
    while i < n:  # one pass: comments and strings, so neither can hide the other
        if text.startswith("//", i):
            j = text.find("\n", i); i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2); i = n if j < 0 else j + 2
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"': j += 2 if text[j] == "\\" else 1
            out.append('""'); i = j + 1
        else:
            out.append(text[i]); i += 1
    text = "".join(out)
    # drop #[cfg(test)] mod tests { ... } blocks (approximate: to the end of file when last)
    m = re.search(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', text)
    if m: text = text[:m.start()]
    return text

def resolve(cname, parts):
    for i in range(len(parts), -1, -1):
        if (cname, tuple(parts[:i])) in mods: return (cname, tuple(parts[:i]))
    return None

edges = defaultdict(set)
path_re = re.compile(r'\b((?:crate|super|self|' + "|".join(map(re.escape, crates)) + r')(?:::(?:\{[^}]*\}|\w+))+)')
for (cname, mp), f in mods.items():
    text = strip(open(os.path.join(root, f), encoding="utf-8", errors="replace").read())
    is_modrs = f.endswith(("mod.rs", "lib.rs", "main.rs"))
    # expand `use a::{b, c::d}` one level
    for m in path_re.finditer(text):
        p = m.group(1)
        heads = []
        brace = re.match(r'(.*?)::\{([^}]*)\}', p)
        if brace:
            base = brace.group(1).split("::")
            for item in brace.group(2).split(","):
                item = item.strip().split(" as ")[0].strip()
                if item: heads.append(base + item.split("::"))
        else:
            heads.append(p.split("::"))
        for parts in heads:
            c = cname; cur = list(mp)
            if parts[0] == "crate": base = []; parts = parts[1:]
            elif parts[0] in crates and parts[0] != "self": c = parts[0]; base = []; parts = parts[1:]
            else:
                base = list(cur)
                while parts and parts[0] in ("super", "self"):
                    if parts[0] == "super": base = base[:-1]
                    parts = parts[1:]
            tgt = resolve(c, base + [x for x in parts if x not in ("self",)])
            if tgt and tgt != (cname, mp): edges[(cname, mp)].add(tgt)

def sccs(nodes, adj):
    idx, low, st, on, out, n = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def go(v):
        idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
        for w in adj.get(v, ()):
            if w not in idx: go(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(comp)
    for v in nodes:
        if v not in idx: go(v)
    return out

top = defaultdict(set)
for a, bs in edges.items():
    for b in bs:
        if a[0] == b[0] and a[1][:1] != b[1][:1] and a[1] and b[1]:
            top[(a[0], a[1][0])].add((b[0], b[1][0]))
topc = sccs(sorted({x for k in top for x in [k, *top[k]]}), top)
fe = {a: {b for b in bs if not (a[0] == b[0] and a[1][:len(b[1])] == b[1])} for a, bs in edges.items()}
filec = sccs(sorted(mods), fe)
name = lambda k: mods[k]
for c in topc:
    print("module cycle:", " <-> ".join(sorted(f"{k[0]}::{k[1]}" for k in c)))
for c in filec:
    print(f"file cycle ({len(c)} files):", ", ".join(sorted(name(k) for k in c)))
print(f"layers: {len(crates)} crate(s), {len(mods)} files, {sum(len(v) for v in edges.values())} edges; "
      f"{len(topc)} module cycle(s), {len(filec)} file cycle(s)")
sys.exit(1 if topc or filec else 0)
