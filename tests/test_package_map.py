"""code/servelab/README.md is a true map: it names every module and subpackage of servelab, and nothing else."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "code" / "servelab"
README = PACKAGE / "README.md"


def modules() -> set[str]:
    """Dotted names of every module and subpackage under code/servelab (the package itself excluded)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 1:
            names.add(".".join(parts))
    return names


def listed() -> set[str]:
    return set(re.findall(r"`(servelab(?:\.\w+)+)`", README.read_text()))


def test_every_module_is_on_the_map():
    missing = sorted(modules() - listed())
    assert not missing, f"add these modules to code/servelab/README.md, one line each: {missing}"


def test_the_map_names_no_module_that_does_not_exist():
    stale = sorted(listed() - modules())
    assert not stale, f"code/servelab/README.md names modules that do not exist: {stale}"


def test_each_module_is_listed_once():
    rows = re.findall(r"^\| `(servelab(?:\.\w+)+)` \|", README.read_text(), flags=re.M)
    twice = sorted({name for name in rows if rows.count(name) > 1})
    assert not twice, f"listed more than once: {twice}"
    assert set(rows) == modules(), "every module gets exactly one table row"
