"""The layering, checked by a test (docs/architecture.md, "Packages and layers").

Imports flow one way: the domain (``marketdata``) at the bottom; the shared packages
(``lake``, ``redisstore``, then ``serving``) above it; the two layers (``streaming``
and ``batch``) above those, never importing each other; ``orchestration`` and
``cryptopipe`` on top. Every import counts, also one inside a function. And no module
imports itself back through others (no import cycle anywhere).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import marketdata

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "marketdata",
    "lake",
    "redisstore",
    "serving",
    "streaming",
    "batch",
    "orchestration",
    "cryptopipe",
)
#: What each package may import of the project (itself always).
ALLOWED = {
    "marketdata": set(),
    "lake": {"marketdata"},
    "redisstore": {"marketdata"},
    "serving": {"marketdata", "lake", "redisstore"},
    "streaming": {"marketdata", "lake", "redisstore"},
    "batch": {"marketdata", "lake", "redisstore", "serving"},
    "orchestration": {"marketdata", "lake", "redisstore", "serving", "streaming", "batch"},
    "cryptopipe": {
        "marketdata",
        "lake",
        "redisstore",
        "serving",
        "streaming",
        "batch",
        "orchestration",
    },
}
FRAMEWORKS = ("dagster", "pyspark", "bytewax", "redis")


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The project modules a file imports (the module itself for ``from pkg import mod``)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            # the longest project module the name starts with
            parts = name.split(".")
            for k in range(len(parts), 0, -1):
                candidate = ".".join(parts[:k])
                if candidate in modules:
                    found.add(candidate)
                    break
    found.discard(me)
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    files = [f for p in packages for f in sorted((root / p).rglob("*.py"))]
    modules = {module_name(f, root) for f in files}
    return {module_name(f, root): project_imports(f, modules, root) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        top = mod.split(".")[0]
        for dep in sorted(deps):
            other = dep.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                bad.append(f"{mod} imports {dep}")
    return bad


def test_packages_import_only_downwards() -> None:
    graph = import_graph()
    assert len(graph) > 60
    assert violations(graph) == []


def test_no_import_cycle_anywhere() -> None:
    assert cycles(import_graph()) == []


def test_streaming_and_batch_never_import_each_other() -> None:
    graph = import_graph()
    across = [
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if {m.split(".")[0], d.split(".")[0]} == {"streaming", "batch"}
    ]
    assert across == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_would_notice_a_crossing_and_a_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "streaming/__init__.py": "",
            "streaming/a.py": "def f():\n    from batch.b import g\n",
            "batch/__init__.py": "",
            "batch/b.py": "from . import c\n",
            "batch/c.py": "from batch import b\n",
            "lake/__init__.py": "",
            "lake/x.py": "import serving.y\n",
            "serving/__init__.py": "",
            "serving/y.py": "from lake.x import z\n",
        },
    )
    graph = import_graph(tmp_path, ("streaming", "batch", "lake", "serving"))
    assert violations(graph) == ["lake.x imports serving.y", "streaming.a imports batch.b"]
    assert cycles(graph) == [["batch.b", "batch.c"], ["lake.x", "serving.y"]]


def test_domain_imports_no_framework() -> None:
    modules = [f"marketdata.{m.name}" for m in pkgutil.iter_modules(marketdata.__path__)]
    assert len(modules) >= 8
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_check_would_notice_a_framework() -> None:
    code = "import sys, redis\nprint('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


KEYS_MODULE = ROOT / "redisstore" / "keys.py"


def redis_key_literals(path: Path) -> list[str]:
    """Strings (also parts of f-strings) in ``path`` that start a Redis key (``md:``).

    Docstrings do not count: they may show a key to the reader.
    """
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(("md:", "{md:"))
        and id(node) not in docstrings
    ]


def test_redis_key_names_live_in_one_module() -> None:
    files = [f for p in (*PACKAGES, "bench") for f in sorted((ROOT / p).rglob("*.py"))]
    found = [hit for f in files if f != KEYS_MODULE for hit in redis_key_literals(f)]
    assert found == [], "use redisstore.keys instead:\n" + "\n".join(found)
    assert redis_key_literals(KEYS_MODULE), "the check would find nothing: it is broken"
