"""No servelab module uses another module's private (leading underscore) names.

A private name is free to change with its own module; a module that reaches into another's
privates breaks when it does, and hides a helper that should be public in one place.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "code" / "servelab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_uses(path: Path) -> list[str]:
    """``module._name`` attribute uses and ``from servelab... import _name`` in one file."""
    tree = ast.parse(path.read_text())
    imported_modules: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("servelab"):
            for alias in node.names:
                if alias.name.startswith("_") or any(p.startswith("_") for p in node.module.split(".")):
                    found.append(f"from {node.module} import {alias.name}")
                imported_modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("servelab"):
                    imported_modules.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in imported_modules):
            found.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    return found


def test_no_module_uses_another_modules_private_names():
    offenders = {module_name(p): uses for p in sorted(PACKAGE.rglob("*.py")) if (uses := private_uses(p))}
    assert not offenders, f"private names used across modules (make them public where they belong): {offenders}"
