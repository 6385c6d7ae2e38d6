"""Small helpers for the chapters' notebooks: glue a chapter's numbers in one call.

myst-nb's ``glue`` stores a value in the executed notebook so that the prose can show it
(``{glue:text}`name:.2f```); a chapter computes its numbers into one dict and glues them
together, instead of a line of ``glue(...)`` per number. Taught in: every chapter.
"""

from __future__ import annotations

from typing import Mapping, Sequence


def glue_all(values: Mapping[str, object]) -> None:
    """Glue every ``name: value`` for the prose, without showing it in the cell's output."""
    from myst_nb import glue  # imported here: the unit tests of other modules need not load myst-nb

    for name, value in values.items():
        glue(name, value, display=False)


def markdown_table(rows: Sequence[Mapping[str, object]], *, digits: int = 2) -> str:
    """A Markdown table from dicts; floats shown with ``digits`` decimals, None and missing keys as blank.

    The columns are every key of every row, in the order first seen (rows may differ: a gunicorn
    row has no "Ray system" CPU).

    The book's one table helper: every chapter and module that shows a table calls it.
    """
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def cell(value: object) -> str:
        text = "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
