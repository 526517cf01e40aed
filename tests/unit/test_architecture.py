"""The tree keeps its shape: docstrings on every module, no private names across modules.

The layering itself (which layer may import which, no cycles) is checked by the import
contracts in ``pyproject.toml`` (``lint-imports``, run by ``./scripts/test``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cdc", "mappers", "schema_registry")
MODULES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _parse(path: Path) -> ast.Module:
    """``ast.parse`` of ``path``. CPython 3.11 shares the AST builder's recursion counter
    between threads (gh-106905): a parse in another thread of this process (a server a
    test left running) can make this one fail with a spurious SystemError; parse again."""
    source = path.read_text()
    for _ in range(3):
        try:
            return ast.parse(source)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
    return ast.parse(source)


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_every_module_opens_with_a_docstring_saying_its_role(path: Path) -> None:
    tree = _parse(path)
    doc = ast.get_docstring(tree)
    assert doc, f"{_name(path)} has no module docstring"
    assert len(doc.split()) >= 8, f"{_name(path)}: the docstring says too little: {doc!r}"


def test_no_module_imports_a_private_name_of_another() -> None:
    offences: list[str] = []
    for path in MODULES:
        for node in ast.walk(_parse(path)):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    offences.append(f"{_name(path)}: from {node.module} import {alias.name}")
    assert offences == []


def test_every_subpackage_of_cdc_is_described_in_the_architecture_document() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    packages = sorted(
        _name(p.parent) for p in (ROOT / "cdc").rglob("__init__.py") if p.parent != ROOT / "cdc"
    )
    missing = [name for name in packages if f"{name.replace('.', '/')}/" not in text]
    assert missing == []
