"""Imports point down the layers (README "Architecture"), and none of our own is hidden in a function.

Static (ast): no mbtasks module is imported, so a broken module cannot skip this check.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "mbtasks"
# module prefix -> layer; the longest matching prefix wins. 0 ground, 1 nn code / data / export,
# 2 Lightning plumbing and the inference base, 3 tasks, 4 modes and the app around them, 5 entry points.
LAYERS = {
    "mbtasks.errors": 0,
    "mbtasks.atomic_files": 0,
    "mbtasks.settings": 0,
    "mbtasks.checkpoint": 0,
    "mbtasks.backbones": 1,
    "mbtasks.models": 1,
    "mbtasks.metrics": 1,
    "mbtasks.data": 1,
    "mbtasks.export": 1,
    "mbtasks.bn_folding": 1,
    "mbtasks.profiling": 1,
    "mbtasks.callbacks": 2,
    "mbtasks.inference": 2,
    "mbtasks.tasks": 3,
    "mbtasks.modes": 4,
    "mbtasks.config": 4,
    "mbtasks.resume": 4,
    "mbtasks.pipeline": 4,
    # the README's names for the tasks' result types and face identification (re-exports)
    "mbtasks.results": 4,
    "mbtasks.pretraining": 4,
    "mbtasks.search": 4,
    "mbtasks.api": 5,
    "mbtasks.__main__": 5,
    "mbtasks": 5,  # "mbtasks": the package's __init__
}
# the same layer, kept apart: nn code and data do not know each other
APART = [
    ("mbtasks.backbones", "mbtasks.data"),
    ("mbtasks.models", "mbtasks.data"),
    ("mbtasks.data", "mbtasks.models"),
    ("mbtasks.data", "mbtasks.backbones"),
]
# the only lazy imports of our own modules, each with its reason
LAZY_OK = {
    # onnx / onnxruntime load only for an ONNX export
    ("mbtasks.export.formats", "mbtasks.export.onnx_pipeline"),
    ("mbtasks.export.formats", "mbtasks.export.torch_pipeline"),
    # python -m mbtasks --help / --version answer without loading torch (the CLI takes seconds to import)
    ("mbtasks.__main__", "mbtasks.cli"),
}


def under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def layer(mod: str) -> int:
    return LAYERS[max((p for p in LAYERS if under(mod, p)), key=len)]


def module_of(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def task_packages() -> set[str]:
    return {p.name for p in (PKG / "tasks").iterdir() if (p / "__init__.py").is_file()}


def is_module(name: str) -> bool:
    path = PKG.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(node: ast.Import | ast.ImportFrom, me: str, is_pkg: bool) -> list[str]:
    """The modules an import statement loads (``from mbtasks import checkpoint`` -> ``mbtasks.checkpoint``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative: resolved against the importing module's package
        parts = me.split(".")
        base = ".".join(
            parts[: len(parts) - node.level + (1 if is_pkg else 0)] + ([node.module] if node.module else [])
        )
    else:
        base = node.module or ""
    return [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]


def top_level_imports(tree: ast.Module) -> set[int]:
    """Imports at module level, including those under a top-level ``if`` / ``try`` (TYPE_CHECKING...)."""
    out, stack = set(), list(tree.body)
    while stack:
        node = stack.pop()
        out.add(id(node))
        if isinstance(node, ast.If | ast.Try):
            stack += node.body + node.orelse + getattr(node, "finalbody", [])
            stack += [s for h in getattr(node, "handlers", []) for s in h.body]
    return out


def violations() -> list[str]:
    bad, tasks = [], task_packages()
    for path in sorted(PKG.rglob("*.py")):
        me, tree = module_of(path), ast.parse(path.read_text())
        top = top_level_imports(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in imported(node, me, path.name == "__init__.py"):
                if not under(target, "mbtasks"):
                    continue
                where = f"{path.relative_to(PKG.parent)}:{node.lineno} imports {target}"
                if layer(target) > layer(me):
                    bad.append(f"{where}: layer {layer(target)} above layer {layer(me)}")
                if any(under(me, a) and under(target, b) for a, b in APART):
                    bad.append(f"{where}: nn code and data are kept apart")
                mine, theirs = me.split(".")[2:3], target.split(".")[2:3]
                if (
                    under(me, "mbtasks.tasks")
                    and under(target, "mbtasks.tasks")
                    and mine
                    and theirs
                    and mine != theirs
                    and {mine[0], theirs[0]} <= tasks
                ):
                    bad.append(f"{where}: one task package imports another")
                if id(node) not in top and (me, target) not in LAZY_OK:
                    bad.append(f"{where}: lazy import")
    return bad


def test_imports_point_down_and_none_is_lazy():
    bad = violations()
    assert not bad, f"{len(bad)} imports break the layers:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_and_a_lazy_import(tmp_path, monkeypatch):
    """The checker itself: a data module importing a task, lazily, is reported twice."""
    pkg = tmp_path / "mbtasks"
    (pkg / "data").mkdir(parents=True)
    (pkg / "tasks").mkdir()
    (pkg / "data" / "bad.py").write_text("def f():\n    from mbtasks.tasks.base import BaseTask\n")
    monkeypatch.setattr(f"{__name__}.PKG", pkg)
    found = violations()
    assert any("layer 3 above layer 1" in b for b in found) and any("lazy import" in b for b in found)
