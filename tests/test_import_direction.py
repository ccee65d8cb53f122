"""Dependencies point one way (the design card's rule), checked on every import statement
of the package, including the ones inside functions:

- ``convert/``, ``runtime/``, ``bench/`` and ``devices/`` never import a trainer;
- ``binarizers/`` and ``models/`` never import ``convert/``, ``runtime/``, ``bench/`` or
  ``devices/`` (nor a trainer);
- nothing imports the CLI modules except the CLI itself.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnn_export"

TRAINERS = (
    "bnn_export.train_torch",
    "bnn_export.train_larq",
    "bnn_export.run",
    "bnn_export.sweep",
    "bnn_export.distributed",
    "bnn_export.resume",
    "bnn_export.optim_torch",
)
CLI = ("bnn_export.cli", "bnn_export.convert_cli", "bnn_export.bench_cli", "bnn_export.__main__")
EXPORT_SIDE = ("bnn_export.convert", "bnn_export.runtime", "bnn_export.bench", "bnn_export.devices")
MODEL_SIDE = ("bnn_export.binarizers", "bnn_export.models")

#: (importers, what they must not import)
RULES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (EXPORT_SIDE, TRAINERS),
    (MODEL_SIDE, EXPORT_SIDE + TRAINERS),
]


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, list[str]]]:
    """(line, absolute modules) for every import statement in the file, wherever it
    stands; ``from X import y`` names both X and X.y (y may be a submodule)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, [base, *(f"{base}.{a.name}" for a in node.names)]))
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import statement in the package under ``root`` that breaks a rule."""
    bad: list[str] = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        for line, targets in imported_modules(path, root):
            where = f"{path.relative_to(root.parent)}:{line}: {me} imports {targets[-1]}"
            if not _within(me, CLI) and any(_within(t, CLI) for t in targets):
                bad.append(where + " (nothing imports the CLI)")
            for importers, forbidden in RULES:
                if _within(me, importers) and any(_within(t, forbidden) for t in targets):
                    bad.append(where)
    return bad


def test_the_package_keeps_its_import_direction() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("convert/source.py", "from bnn_export.train_torch import train"),
        ("runtime/runners.py", "    from bnn_export import train_larq"),
        ("bench/report.py", "import bnn_export.run"),
        ("devices/base.py", "from .. import sweep"),
        ("models/layers.py", "from bnn_export.convert.graph import graph_from_torch"),
        ("binarizers/exports.py", "from ..runtime import native"),
        ("checkpoint.py", "from bnn_export.convert_cli import run_convert"),
        ("models/evaluation.py", "from bnn_export import bench_cli"),
    ],
)
def test_a_forbidden_import_is_found(tmp_path: Path, module: str, line: str) -> None:
    copy = tmp_path / "bnn_export"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "_lib", "*.so"))
    target = copy / module
    body = target.read_text()
    if line.startswith(" "):  # an import inside a function, where lazy imports live
        body += f"\n\ndef _added() -> None:\n{line}\n"
    else:
        body += f"\n{line}\n"
    target.write_text(body)
    found = violations(copy)
    assert len(found) == 1 and module in found[0], found
