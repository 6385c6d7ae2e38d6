"""Sphinx extension: fill the page ``claims.md`` with the claims ledger of this build.

The chapters' check cells write their records while the build executes them (or while nbval
did, when the build reuses those runs), so the page must be read after every chapter and on
every build, even when ``claims.md`` itself did not change.

Taught in: claims.md (What held on this machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import claims

PAGE = "claims"
MARKER = "<!-- claims-table -->"


def _always_reread(app: Any, env: Any, added: set, changed: set, removed: set) -> list[str]:
    return [PAGE] if PAGE in env.found_docs else []


def _read_last(app: Any, env: Any, docnames: list[str]) -> None:
    if PAGE in docnames:  # the chapters run first, so their records exist when the page is read
        docnames.remove(PAGE)
        docnames.append(PAGE)


def page_markdown(records: list[dict]) -> str:
    """The generated part of the page: tally, hardware per chapter, and the table of claims."""
    if not records:
        return "No chapter has recorded its claims in this build yet."
    rows = "\n".join(f"| {r['chapter']} | {r['hardware']} | {r['cores']} | {r['when']} |"
                     + (f" {r['condition']} |" if r.get("condition") else " – |") for r in records)
    return "\n\n".join([
        f"**{claims.tally_line(claims.claims_of(records))}**",
        "| chapter | measured on | usable cores | when | condition |\n|---|---|---|---|---|\n" + rows,
        claims.markdown_table(records),
    ])


def book_records(records: list[dict], chapters_dir: Path) -> list[dict]:
    """The records of chapters that are in the book: a renamed or split notebook leaves its old record behind."""
    in_book = {p.stem for p in chapters_dir.glob("*.ipynb")}
    return [r for r in records if r["chapter"] in in_book]


def _fill(app: Any, docname: str, source: list[str]) -> None:
    if docname == PAGE:
        records = book_records(claims.load_records(), Path(app.srcdir) / "chapters")
        source[0] = source[0].replace(MARKER, page_markdown(records))


def setup(app: Any) -> dict:
    app.connect("env-get-outdated", _always_reread)
    app.connect("env-before-read-docs", _read_last)
    app.connect("source-read", _fill)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
