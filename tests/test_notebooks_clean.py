"""Every chapter notebook is committed clean and follows the book's conventions.

Clean: no outputs or execution counts (the website and CI execute them), kernel ``python3``,
listed in ``_toc.yml``, one hidden check cell that asserts, and solutions collapsed on the site.
"""

from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
HIDDEN_CHECK_TAGS = {"remove-cell", "remove-input"}
COLLAPSED_TAGS = {"hide-cell", "hide-input"}


def toc_files(node: object) -> set[str]:
    """Every ``file:`` entry (and the root) in a parsed _toc.yml, without extension."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                found.add(str(Path(node[key]).with_suffix("")))
        for value in node.values():
            found |= toc_files(value)
    elif isinstance(node, list):
        for item in node:
            found |= toc_files(item)
    return found


TOC = toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))


def tags(cell: nbformat.NotebookNode) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def test_there_are_chapters():
    assert CHAPTERS, "no notebooks in chapters/"


def test_every_toc_entry_exists():
    missing = [f for f in sorted(TOC) if not any((ROOT / f).with_suffix(s).is_file() for s in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


@pytest.fixture(params=CHAPTERS, ids=[p.name for p in CHAPTERS])
def chapter(request) -> tuple[Path, nbformat.NotebookNode]:
    path = request.param
    return path, nbformat.read(path, as_version=4)


def test_committed_without_outputs(chapter):
    path, nb = chapter
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or execution counts; strip them with "
        f"`jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}`"
    )


def test_kernel_is_python3(chapter):
    path, nb = chapter
    name = nb.metadata.get("kernelspec", {}).get("name")
    assert name == "python3", f"{path.name}: kernelspec name is {name!r}, must be 'python3'"


def test_listed_in_toc(chapter):
    path, _ = chapter
    entry = str(path.relative_to(ROOT).with_suffix(""))
    assert entry in TOC, f"{path.name} is not in _toc.yml (add `- file: {entry}`); the website would skip it"


def test_has_hidden_check_cell_that_asserts(chapter):
    path, nb = chapter
    # It asserts directly, or through the claims ledger, whose finish() fails the cell on a failed claim.
    checks = [c for c in nb.cells if c.cell_type == "code" and tags(c) & HIDDEN_CHECK_TAGS
              and ("assert" in c.source or "ledger.finish()" in c.source)]
    assert checks, f"{path.name}: needs a check cell tagged 'remove-cell' that asserts the chapter's claims"


def test_solutions_are_collapsed(chapter):
    path, nb = chapter
    bare = [i for i, c in enumerate(nb.cells) if "solution" in tags(c) and not tags(c) & COLLAPSED_TAGS]
    assert not bare, f"{path.name}: solution cells {bare} must also be tagged 'hide-cell' (collapsed on the website)"


MAX_CELL_LINES = 25  # the website shows every code cell: longer logic belongs in servelab


def test_code_cells_are_short(chapter):
    path, nb = chapter
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and not tags(c) & HIDDEN_CHECK_TAGS and len(c.source.splitlines()) > MAX_CELL_LINES]
    assert not long, f"{path.name}: code cells (index, lines) {long} are over {MAX_CELL_LINES} lines; move the logic into servelab"
