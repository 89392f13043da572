#!/usr/bin/env python3
"""Fails when modules of one crate import each other in a circle.

For every directory of every crate's `src/` (the crate root, `runtime/`, `api/`, ...), the
modules in it (`x.rs` or `x/`) are the nodes; module `a` has an edge to its sibling `b` when
any file of `a` (outside comments) names `b` through `crate::…::b`, `super::b` (from a file
directly in the directory) or a `use` group that contains `b`. A child using its parent's
items (`super::Problem` from `api/sse.rs`) is not an edge between siblings and is allowed.

    ./scripts/check-module-cycles.py            # every crate of the workspace
    ./scripts/check-module-cycles.py engine     # one crate

Prints each circle as `engine: operations -> api -> operations` and exits 1 if there is one.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["events", "engine", "workers", "testkit", "loadtest", "cli", "config", "localnats"]

COMMENT = re.compile(r"//.*?$", re.MULTILINE)
STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def modules(directory: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """The modules of `directory` and the files of each."""
    found: dict[str, list[pathlib.Path]] = {}
    for entry in sorted(directory.iterdir()):
        if entry.is_file() and entry.suffix == ".rs" and entry.stem not in ("mod", "lib", "main"):
            found.setdefault(entry.stem, []).append(entry)
        elif entry.is_dir():
            found.setdefault(entry.name, []).extend(sorted(entry.rglob("*.rs")))
    return found


def paths_named(text: str) -> list[list[str]]:
    """Every path in `text` that starts with `crate` or `super`, expanded from use groups."""
    out: list[list[str]] = []

    def expand(prefix: list[str], tree: str) -> None:
        tree = tree.strip()
        if not tree:
            return
        head, brace, rest = tree.partition("{")
        parts = [p for p in head.replace(" ", "").split("::") if p]
        if brace:
            body = rest[: rest.rfind("}")]
            depth, start = 0, 0
            for i, ch in enumerate(body):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                elif ch == "," and depth == 0:
                    expand(prefix + parts, body[start:i])
                    start = i + 1
            expand(prefix + parts, body[start:])
        else:
            out.append(prefix + [p.split(" as ")[0] for p in parts])

    for use in re.finditer(r"\buse\s+((?:crate|super)\b[^;]*);", text, re.DOTALL):
        expand([], use.group(1))
    for path in re.finditer(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        out.append(path.group(1).split("::"))
    return out


def edges(crate_src: pathlib.Path, directory: pathlib.Path) -> dict[str, set[str]]:
    siblings = modules(directory)
    level = list(directory.relative_to(crate_src).parts)
    graph: dict[str, set[str]] = {name: set() for name in siblings}
    for name, files in siblings.items():
        for file in files:
            text = STRING.sub('""', COMMENT.sub("", file.read_text()))
            direct = file.parent == directory
            for path in paths_named(text):
                target = None
                if path[0] == "crate" and path[1 : 1 + len(level)] == level and len(path) > len(level) + 1:
                    target = path[1 + len(level)]
                elif path[0] == "super" and direct and len(path) > 1 and path[1] != "super":
                    target = path[1]
                if target in siblings and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    crates = sys.argv[1:] or CRATES
    failed = False
    checked = 0
    for crate in crates:
        src = ROOT / crate / "src"
        if not src.is_dir():
            continue
        for directory in [src, *sorted(p for p in src.rglob("*") if p.is_dir())]:
            graph = edges(src, directory)
            checked += len(graph)
            for component in circles(graph):
                failed = True
                where = "/".join(directory.relative_to(src).parts) or "crate root"
                ring = " <-> ".join(component)
                detail = "; ".join(
                    f"{a} uses {', '.join(sorted(graph[a] & set(component)))}" for a in component
                )
                print(f"{crate} ({where}): import circle {ring} ({detail})")
    if not failed:
        print(f"no import circles among {checked} modules")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
