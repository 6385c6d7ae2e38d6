"""The book's exercises as nbgrader assignments: cell metadata from the book's own tags, and a course.

Every exercise is a Markdown prompt (``**Exercise N ...**``), an answer cell tagged
``solution`` (collapsed on the website by ``hide-cell``) whose worked answer sits
between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, and a check cell
``assert chN.check_...(answer, measured data)``. From that layout,
``python -m servelab.grading annotate chapters/01_latency.ipynb`` writes nbgrader's
metadata: the answer cell becomes an autograded answer, the check cell an autograder
test with points, a Markdown ``solution`` cell a written answer graded by hand, and
code cells between the prompt and the answer (the exercise's givens) read-only.
``python -m servelab.grading course chapters _build/nbgrader`` (``make assignment``)
then lays out an nbgrader course and runs ``nbgrader generate_assignment`` on it.
The checks compare answers with the data the student's own run measured, so autograding
executes the notebook on the grading machine. Taught in: teachers.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from servelab import student

EXERCISE_PROMPT = re.compile(r"\*\*Exercise (\d+)\b")
CHECK_ASSERTION = re.compile(r"^assert \w+\.check_\w+\(", re.MULTILINE)
SECTION_HEADING = re.compile(r"^## ", re.MULTILINE)
EXERCISES_HEADING = re.compile(r"^## Exercises\b", re.MULTILINE)
SCHEMA_VERSION = 3  # nbgrader 0.9's cell metadata
POINTS_PER_CHECK = 1
POINTS_PER_WRITTEN_ANSWER = 1
#: What nbgrader leaves in an answer cell for the student. Without nbgrader's default
#: ``raise NotImplementedError()`` the placeholder (``answer = None``) stays in force and
#: the check says "not answered yet", as it does in the student edition.
CODE_STUB = "# YOUR CODE HERE"
COURSE_CONFIG = f'''\
# nbgrader configuration of the course written by servelab.grading (make assignment).
c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.course_id = "serving-models-in-practice"
c.ClearSolutions.code_stub = {{"python": {CODE_STUB!r}}}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# Autograding executes the whole chapter: it starts servers and measures, and some cells take minutes.
c.Execute.timeout = 600
'''


@dataclass
class Exercise:
    """Where one exercise's cells are, by index in the notebook."""

    number: int
    given: list[int] = field(default_factory=list)  # code cells between the prompt and the answer: read-only
    answer: int | None = None
    checks: list[int] = field(default_factory=list)
    written: list[int] = field(default_factory=list)  # Markdown answers, graded by hand


def tags(cell: nbformat.NotebookNode) -> set[str]:
    """The cell's tags."""
    return set(cell.get("metadata", {}).get("tags", []))


def is_check(cell: nbformat.NotebookNode) -> bool:
    """A code cell that asserts a ``check_*`` function: it raises when the answer is wrong."""
    return cell.cell_type == "code" and bool(CHECK_ASSERTION.search(cell.source))


def find_exercises(notebook: nbformat.NotebookNode) -> list[Exercise]:
    """The exercises of ``notebook``, in order. Raises ValueError if one breaks the layout above."""
    found: list[Exercise] = []
    for index, cell in enumerate(notebook.cells):
        prompt = EXERCISE_PROMPT.search(cell.source) if cell.cell_type == "markdown" else None
        if prompt and student.SOLUTION_TAG not in tags(cell):
            found.append(Exercise(int(prompt.group(1))))
            continue
        if not found:
            continue
        current = found[-1]
        if student.is_solution(cell) and cell.cell_type == "markdown":
            current.written.append(index)
        elif student.is_solution(cell):
            if current.answer is not None:
                raise ValueError(f"exercise {current.number} has two answer cells ({current.answer} and {index})")
            if not student.has_solution_region(cell.source):
                raise ValueError(f"exercise {current.number}: answer cell {index} has no "
                                 f"{student.BEGIN_SOLUTION} ... {student.END_SOLUTION} region")
            current.answer = index
        elif is_check(cell):
            current.checks.append(index)
        elif cell.cell_type == "code" and current.answer is None:
            current.given.append(index)
    for exercise in found:
        if exercise.answer is None or not exercise.checks:
            raise ValueError(f"exercise {exercise.number} needs an answer cell tagged 'solution' and a check cell "
                             "that asserts (assert chN.check_...(...))")
    return found


def cell_metadata(grade_id: str, *, solution: bool, grade: bool, points: float = 0) -> dict:
    """nbgrader's metadata for one cell: answers are editable; tests and read-only cells (neither) locked."""
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution,
            "schema_version": SCHEMA_VERSION, "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def numbered(role: str, k: int, count: int) -> str:
    """``check`` for an exercise's only check cell; ``check1``, ``check2``, ... when it has several."""
    return f"{role}{k + 1}" if count > 1 else role


def exercise_cells(exercise: Exercise) -> list[tuple[int, str, dict]]:
    """(cell index, role, nbgrader kind) for every cell of ``exercise`` that nbgrader tracks."""
    kinds = {"given": dict(solution=False, grade=False), "answer": dict(solution=True, grade=False),
             "check": dict(solution=False, grade=True, points=POINTS_PER_CHECK),
             "written": dict(solution=True, grade=True, points=POINTS_PER_WRITTEN_ANSWER)}
    cells_by_role = {"given": exercise.given, "answer": [exercise.answer], "check": exercise.checks,
                     "written": exercise.written}
    return [(index, numbered(role, k, len(indices)), kinds[role])
            for role, indices in cells_by_role.items() for k, index in enumerate(indices)]


def annotate(notebook: nbformat.NotebookNode, assignment: str) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with nbgrader metadata on every exercise's cells (ids start with ``assignment``).

    Metadata on any other cell is removed, so the result depends on the layout alone.
    """
    annotated = copy.deepcopy(notebook)
    for cell in annotated.cells:
        cell.metadata.pop("nbgrader", None)
    for exercise in find_exercises(annotated):
        for index, role, kind in exercise_cells(exercise):
            grade_id = f"{assignment}-ex{exercise.number}-{role}"
            annotated.cells[index].metadata["nbgrader"] = cell_metadata(grade_id, **kind)
    return annotated


def max_points(notebook: nbformat.NotebookNode) -> float:
    """The points an annotated notebook is worth, written answers included."""
    return float(sum(c.metadata.get("nbgrader", {}).get("points", 0) for c in notebook.cells))


def exercises_only(notebook: nbformat.NotebookNode, setup_source: str) -> nbformat.NotebookNode:
    """A short assignment: ``setup_source`` as its first cell, then the chapter's exercise section.

    The section runs from the ``## Exercises`` heading (which may sit inside a longer Markdown
    cell) to the next ``##`` heading; its Markdown and its graded cells are kept, the other
    code cells (which use the chapter's servers) are dropped. ``setup_source`` must define
    what the kept cells use, e.g. the chapter's measurements, measured cheaply.
    """
    start = next((i for i, c in enumerate(notebook.cells)
                  if c.cell_type == "markdown" and EXERCISES_HEADING.search(c.source)), None)
    if start is None:
        raise ValueError("the notebook has no '## Exercises' section")
    heading = copy.deepcopy(notebook.cells[start])
    heading.source = heading.source[EXERCISES_HEADING.search(heading.source).start():]
    cells = [nbformat.v4.new_code_cell(setup_source), heading]
    for cell in notebook.cells[start + 1:]:
        if cell.cell_type == "markdown" and SECTION_HEADING.search(cell.source):
            break
        if cell.cell_type == "markdown" or "nbgrader" in cell.metadata:
            cells.append(copy.deepcopy(cell))
    assignment = nbformat.v4.new_notebook(metadata=copy.deepcopy(notebook.metadata))
    assignment.cells = cells
    return assignment


def write_assignment_source(notebook: nbformat.NotebookNode, source_dir: Path, course_dir: Path,
                            assignment: str) -> Path:
    """Write ``notebook`` as ``course_dir/source/ASSIGNMENT/ASSIGNMENT.ipynb`` with the files it links.

    ``source_dir`` is the folder the notebook's ``../images/...`` links are relative to.
    """
    target = Path(course_dir) / "source" / assignment
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    notebook = copy.deepcopy(notebook)
    student.copy_linked_files(notebook, Path(source_dir), target)
    path = target / f"{assignment}.ipynb"
    nbformat.write(notebook, path)
    return path


def write_course_config(course_dir: Path) -> Path:
    """Write ``nbgrader_config.py`` (:data:`COURSE_CONFIG`) into ``course_dir``."""
    course_dir = Path(course_dir)
    course_dir.mkdir(parents=True, exist_ok=True)
    path = course_dir / "nbgrader_config.py"
    path.write_text(COURSE_CONFIG)
    return path


def nbgrader(course_dir: Path, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one nbgrader command (``generate_assignment``, ``autograde``, ...) in ``course_dir``.

    Raises RuntimeError with nbgrader's log if it fails.
    """
    # nbgrader runs the `alembic` command of its environment: put that environment's bin/ first on PATH,
    # as activating it would (make calls .venv/bin/python without activating).
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course_dir, capture_output=True,
                          text=True, timeout=timeout_s, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def graded_chapters(chapters_dir: Path) -> list[Path]:
    """The chapter notebooks in ``chapters_dir`` that carry nbgrader metadata."""
    return [p for p in sorted(Path(chapters_dir).glob("*.ipynb"))
            if any("nbgrader" in c.metadata for c in nbformat.read(p, as_version=4).cells)]


def write_course(chapters_dir: Path, course_dir: Path) -> list[Path]:
    """An nbgrader course in ``course_dir``: one assignment per graded chapter, released for students.

    Returns the student versions written under ``course_dir/release``.
    """
    write_course_config(course_dir)
    chapters = graded_chapters(chapters_dir)
    for chapter in chapters:
        write_assignment_source(nbformat.read(chapter, as_version=4), chapter.parent, course_dir, chapter.stem)
    nbgrader(course_dir, "generate_assignment", "*", "--force")  # one call for all: nbgrader starts slowly
    return [Path(course_dir) / "release" / chapter.stem / chapter.name for chapter in chapters]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``annotate NOTEBOOK...`` (in place) or ``course CHAPTERS_DIR COURSE_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    annotate_cmd = commands.add_parser("annotate", help="write nbgrader metadata into chapter notebooks, in place")
    annotate_cmd.add_argument("notebooks", type=Path, nargs="+")
    course_cmd = commands.add_parser("course", help="write an nbgrader course and generate its assignments")
    course_cmd.add_argument("chapters", type=Path, help="folder of annotated chapters, e.g. chapters")
    course_cmd.add_argument("course", type=Path, help="course folder to write, e.g. _build/nbgrader")
    args = parser.parse_args(argv)
    if args.command == "annotate":
        for path in args.notebooks:
            notebook = annotate(nbformat.read(path, as_version=4), path.stem)
            nbformat.write(notebook, path)
            print(f"annotated {path}: {len(find_exercises(notebook))} exercises, {max_points(notebook):g} points")
    else:
        for path in write_course(args.chapters, args.course):
            print(f"released {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
