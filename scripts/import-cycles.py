#!/usr/bin/env python3
"""Lists file-level import circles in src/: files that, through `use` and paths in code
(`crate::…`, `super::…`, `self::…`), end up depending on themselves.

    scripts/import-cycles.py          (exit 1 and a list of circles when there is one)

Each path is resolved to the file of the deepest module it names; a file's edges to itself are
left out, and so is `mod child;` (declaring a module is not using it). A parent that re-exports a
child's item while the child uses the parent's items is a circle like any other.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> tuple[str, ...]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


files = {module_of(p): p for p in ROOT.rglob("*.rs") if p.name != "main.rs"}


def strip(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    # String literals can hold `crate::` in prose; drop them (raw strings too).
    text = re.sub(r'r#+".*?"#+', '""', text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text, flags=re.S)


def drop_inline_modules(text: str) -> str:
    """Inline `mod name { … }` blocks (unit tests) resolve `super` to their own file: left out."""
    while (match := re.search(r"\bmod\s+\w+\s*\{", text)) is not None:
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += text[end] == "{"
            depth -= text[end] == "}"
            if depth == 0:
                break
        text = text[: match.start()] + text[end + 1 :]
    return text


def expand(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` → ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+", "@", tree))
    if "{" not in tree:
        return [tree]
    head, _, rest = tree.partition("{")
    body = rest[: rest.rfind("}")]
    items, depth, current = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current += ch
    items.append(current)
    return [p for item in items if item for p in expand(head + item)]


def parse_uses(text: str) -> tuple[list[str], dict[str, str]]:
    """Every path a file's `use` declarations name, and what its `pub use` re-exports, by name."""
    paths, reexports = [], {}
    for match in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
        for tree in expand(match.group(2)):
            # `a::B as C` arrives as `a::B@C`: the path names B, the module now calls it C.
            path, _, alias = tree.partition("@")
            paths.append(path)
            if match.group(1):
                reexports[alias or path.split("::")[-1]] = path
    return paths, reexports


def resolve(module: tuple[str, ...], path: str, seen=()):
    segments = [s for s in path.split("::") if s and s != "*"]
    if not segments:
        return None
    base: list[str]
    if segments[0] == "crate":
        base, segments = [], segments[1:]
    elif segments[0] in ("super", "self"):
        base = list(module)
        while segments and segments[0] in ("super", "self"):
            if segments[0] == "super":
                base = base[:-1]
            segments = segments[1:]
    elif tuple(module) + (segments[0],) in files:
        # A path that starts with a child module's name (`use hub::Hub;` in `realtime`).
        base = list(module)
    else:
        return None
    best, rest = tuple(base), segments
    for i in range(len(segments)):
        candidate = tuple(base + segments[: i + 1])
        if candidate in files:
            best, rest = candidate, segments[i + 1 :]
        else:
            break
    if best not in files:
        return None
    # An item the module only re-exports belongs to the file that defines it.
    if rest and rest[0] in exports.get(best, {}) and (best, rest[0]) not in seen:
        target = resolve(best, exports[best][rest[0]], seen + ((best, rest[0]),))
        if target is not None:
            return target
    return best


texts, uses, exports = {}, {}, {}
for module, path in files.items():
    text = strip(path.read_text())
    text = re.sub(r"^\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*;", "", text, flags=re.M)
    text = drop_inline_modules(text)
    # `pub(in crate::a::b)` names where an item is visible, not something the file uses.
    text = re.sub(r"pub\(in\s+[\w:]+\)", "pub", text)
    texts[module] = text
    uses[module], exports[module] = parse_uses(text)

edges: dict[tuple, set] = {m: set() for m in files}
for module, text in texts.items():
    body = re.sub(r"\b(pub(?:\([^)]*\))?\s+)?use\s+[^;]+;", "", text)
    paths = uses[module] + re.findall(r"(?<![:\w])\w+(?:::\w+)+", body)
    for p in paths:
        target = resolve(module, p)
        if target is not None and target != module:
            edges[module].add(target)

# Tarjan's strongly connected components.
index, low, stack, on_stack, sccs = {}, {}, [], set(), []
counter = [0]


def connect(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
        if w not in index:
            connect(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
                break
        if len(component) > 1:
            sccs.append(component)


sys.setrecursionlimit(10000)
for v in sorted(files):
    if v not in index:
        connect(v)


def name(m):
    return str(files[m].relative_to(ROOT.parent))


if not sccs:
    print(f"import-cycles: no circle among {len(files)} files in src/")
    sys.exit(0)
for component in sccs:
    members = sorted(component)
    print(f"circle of {len(members)} files:")
    for m in members:
        inside = sorted(name(t) for t in edges[m] if t in component)
        print(f"  {name(m)} -> {', '.join(inside)}")
sys.exit(1)
