"""Write the student edition of the book's notebooks: solutions removed, outputs cleared.

Run ``python -m servelab.student chapters _build/student`` (or ``make student``).
A code cell tagged ``solution`` loses its solution region (the lines between
``### BEGIN SOLUTION`` and ``### END SOLUTION``, nbgrader's markers), and keeps the
rest, e.g. the ``answer = None`` placeholder; a solution cell without a region becomes
an empty answer cell, a Markdown one an empty written answer. Exercise prompts, check
calls and everything else stay. nbgrader's ``generate_assignment`` reads the same tags
and markers (servelab.grading). Taught in: intro.md and teachers.md (the book in a classroom).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import nbformat

SOLUTION_TAG = "solution"
PLACEHOLDER = "# Your solution here"
WRITTEN_PLACEHOLDER = "*Your answer here.*"
#: nbgrader's solution delimiters, each alone on its line.
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
# A relative link out of the chapters folder, e.g. ../images/gil.png in a figure directive.
_PARENT_LINK = re.compile(r"(?<![\w/.])\.\./([\w.-]+(?:/[\w.-]+)*)")


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """Whether ``cell`` holds a worked solution (tagged ``solution``)."""
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def blank_answer_cell() -> nbformat.NotebookNode:
    """An empty code cell inviting the learner to answer."""
    return nbformat.v4.new_code_cell(PLACEHOLDER)


def has_solution_region(source: str) -> bool:
    """Whether ``source`` holds a ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region."""
    lines = [line.strip() for line in source.splitlines()]
    return BEGIN_SOLUTION in lines and END_SOLUTION in lines


def without_solution(source: str, stub: str = PLACEHOLDER) -> str:
    """``source`` with each solution region replaced by ``stub`` (indented like its marker)."""
    kept, inside = [], False
    for line in source.splitlines():
        marker = line.strip()
        if marker == BEGIN_SOLUTION:
            inside = True
            kept.append(line[: len(line) - len(line.lstrip())] + stub)
        elif marker == END_SOLUTION:
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def without_markers(source: str) -> str:
    """``source`` with the solution markers removed and the solution kept: the worked answer."""
    return "\n".join(line for line in source.splitlines() if line.strip() not in (BEGIN_SOLUTION, END_SOLUTION))


def student_answer_cell(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The learner's cell for a ``solution`` cell: its region replaced, or a blank answer cell."""
    if solution.cell_type == "markdown":
        return nbformat.v4.new_markdown_cell(WRITTEN_PLACEHOLDER)
    if has_solution_region(solution.source):
        return nbformat.v4.new_code_cell(without_solution(solution.source))
    return blank_answer_cell()


def clear_outputs(cell: nbformat.NotebookNode) -> None:
    """Remove a code cell's outputs and execution count, in place."""
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with solutions replaced by answer cells (:func:`student_answer_cell`), outputs cleared."""
    student = nbformat.from_dict(notebook)  # deep copy: leave the teacher's notebook alone
    cells = []
    for cell in student.cells:
        if is_solution(cell):
            cells.append(student_answer_cell(cell))
            continue
        clear_outputs(cell)
        cells.append(cell)
    student.cells = cells
    return student


def copy_linked_files(notebook: nbformat.NotebookNode, source_dir: Path, target_dir: Path) -> None:
    """Make ``../path`` links in markdown cells work from ``target_dir``, in place.

    Each linked file (e.g. ``../images/gil.png``) is copied to ``target_dir/images/gil.png``
    and the link becomes ``images/gil.png``, so the edition is one self-contained folder.
    Links to files that do not exist are left alone.
    """

    def localize(match: re.Match[str]) -> str:
        relative = match.group(1)
        linked = source_dir.parent / relative
        if not linked.is_file():
            return match.group(0)
        copy = target_dir / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(linked, copy)
        return relative

    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = _PARENT_LINK.sub(localize, cell.source)


def write_student_edition(source_dir: Path, target_dir: Path) -> list[Path]:
    """Write the student edition of every ``*.ipynb`` in ``source_dir`` to ``target_dir``.

    Returns the notebooks written, in name order.
    """
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    notebooks = sorted(p for p in source_dir.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not notebooks:
        raise FileNotFoundError(f"no notebooks in {source_dir}")
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        student = student_notebook(nbformat.read(path, as_version=4))
        copy_linked_files(student, source_dir, target_dir)
        out = target_dir / path.name
        nbformat.write(student, out)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m servelab.student SOURCE_DIR TARGET_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the teacher's notebooks, e.g. chapters")
    parser.add_argument("target", type=Path, help="folder for the student edition, e.g. _build/student")
    args = parser.parse_args(argv)
    written = write_student_edition(args.source, args.target)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
