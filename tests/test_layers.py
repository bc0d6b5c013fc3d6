"""Imports run one way: model -> inference -> io -> apps (cli, widgets, demo); src_train above the
library. Checked on the source (every import statement, top-level or inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "napari_imedsam"
GUI = ("napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")
# What each part of the library may import from napari_imedsam (besides itself).
ALLOWED = {
    "errors": set(),
    "_atomic": set(),
    "_lazy_imports": set(),
    "model": {"errors", "_atomic"},
    "inference": {"errors", "_atomic", "model"},
    "io": {"errors", "_atomic", "inference", "model"},
}
# src_train may be imported by the apps only where training starts: these modules, lazily.
TRAINING_ENTRY_POINTS = {"cli.py", "cli_stages.py", "widgets/finetune.py"}


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(absolute module name, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, id(node) in top_level))
    return found


def part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "napari_imedsam" and len(parts) > 1 else None


def test_library_layers_import_only_downwards_and_never_qt():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        part = relative.parts[0].removesuffix(".py")
        if part not in ALLOWED:
            continue
        for module, _ in imports_of(path):
            if module.split(".")[0] in GUI:
                wrong.append(f"{relative}: imports {module} (no Qt or napari below the apps)")
            if module.split(".")[0] == "src_train":
                wrong.append(f"{relative}: imports {module} (the library never imports the training package)")
            target = part_of(module)
            if target and target != part and target not in ALLOWED[part]:
                wrong.append(f"{relative}: imports {module} ({part} may import {sorted(ALLOWED[part])})")
    assert not wrong, "\n".join(wrong)


def test_apps_import_training_only_at_its_entry_points_and_lazily():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        relative = str(path.relative_to(PACKAGE))
        for module, top in imports_of(path):
            if module.split(".")[0] != "src_train":
                continue
            if relative not in TRAINING_ENTRY_POINTS or top:
                wrong.append(f"{relative}: imports {module}{' at module level' if top else ''}")
    assert not wrong, "\n".join(wrong)


def test_training_package_never_imports_the_apps():
    wrong = [f"{path.name}: imports {module}" for path in (ROOT / "src_train").rglob("*.py")
             for module, _ in imports_of(path)
             if part_of(module) in ("widgets", "cli", "demo") or module.split(".")[0] in GUI]
    assert not wrong, "\n".join(wrong)


def test_every_training_module_imports():
    """Recipes are run by hand, not by the tests: a stale import there shows up only here."""
    import importlib

    for path in sorted((ROOT / "src_train").glob("*.py")):
        importlib.import_module(f"src_train.{path.stem}")
