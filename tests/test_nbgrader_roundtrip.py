"""nbgrader round trip on chapter 1's exercises: generate, answer (right, wrong, not at all), autograde.

Autograding a whole chapter means executing it (a minute or more: servers and sweeps), so the
assignment is chapter 1's real exercise cells (prompts, answer cells, check cells, with their
nbgrader metadata) behind one set-up cell that measures cheap stand-ins for the chapter's
measurements: ``lone`` is the latencies of a small in-process call, timed while the student's
notebook runs. The checks grade the answers against those, so a right answer is right for the
numbers the student's own run produced. About 20-40 s: nbgrader starts slowly and runs one kernel
per submission.
"""

from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from servelab import grading, student

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "01_latency.ipynb"
ASSIGNMENT = "ch1_exercises"
SETUP = '''\
# Stand-ins for chapter 1's measurements, measured now, in this kernel: the latencies of a
# small call made one at a time (the chapter's `lone`), and a last sweep point from them.
import time
from types import SimpleNamespace

import numpy as np

from servelab.exercises import ch1


def timed_call() -> float:
    start = time.perf_counter()
    np.linalg.svd(np.random.rand(48, 48))
    return time.perf_counter() - start


lone = [timed_call() for _ in range(300)]
sweep = [SimpleNamespace(concurrency=16, p99_s=16 * float(np.percentile(lone, 99)))]  # 16 queued on one worker
'''
#: Two of the usual mistakes, each named by a hint of its check.
WRONG_ANSWERS = {
    "01_latency-ex1-answer": "p99_answer = float(np.mean(lone))  # the mean, not the tail",
    "01_latency-ex4-answer": "smartphone_loss_answer = 0.071 * 5  # added up, not compounded",
}


def answer_cells(notebook: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata.nbgrader["grade_id"]: c for c in notebook.cells
            if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}


def answered(release: nbformat.NotebookNode, answers: dict[str, str]) -> nbformat.NotebookNode:
    """The released notebook with the answer cells named in ``answers`` filled in, as a student would."""
    filled = nbformat.from_dict(release)
    for grade_id, cell in answer_cells(filled).items():
        if grade_id in answers:
            cell.source = answers[grade_id]
    return filled


def submit(course: Path, student_id: str, notebook: nbformat.NotebookNode) -> None:
    folder = course / "submitted" / student_id / ASSIGNMENT
    folder.mkdir(parents=True)
    nbformat.write(notebook, folder / f"{ASSIGNMENT}.ipynb")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    course = tmp_path_factory.mktemp("course")
    grading.write_course_config(course)
    assignment = grading.exercises_only(nbformat.read(CHAPTER, as_version=4), SETUP)
    source = grading.write_assignment_source(assignment, CHAPTER.parent, course, ASSIGNMENT)
    grading.nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")

    release = nbformat.read(course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    solutions = {grade_id: student.without_markers(cell.source)
                 for grade_id, cell in answer_cells(nbformat.read(source, as_version=4)).items()}
    submit(course, "right", answered(release, solutions))
    submit(course, "wrong", answered(release, {**solutions, **WRONG_ANSWERS}))
    submit(course, "blank", release)
    grading.nbgrader(course, "autograde", ASSIGNMENT, "--force")
    return course


def scores(course: Path, student_id: str) -> tuple[float, float, dict[str, float]]:
    """Total score, maximum, and the score of each graded cell, from nbgrader's gradebook."""
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        notebook = gradebook.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, student_id)
        return notebook.score, notebook.max_score, {g.name: g.score for g in notebook.grades}


def autograded_output(course: Path, student_id: str, grade_id: str) -> str:
    path = course / "autograded" / student_id / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    cell = next(c for c in nbformat.read(path, as_version=4).cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    return "".join(o.get("text", "") for o in cell.outputs)


def test_the_released_version_has_no_solutions_and_keeps_the_placeholders(course):
    release = nbformat.read(course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    answers = answer_cells(release)
    assert len(answers) == 4
    for cell in answers.values():
        assert student.BEGIN_SOLUTION not in cell.source and "= None" in cell.source
        assert grading.CODE_STUB in cell.source


def test_right_answers_get_full_points(course):
    score, maximum, by_cell = scores(course, "right")
    assert maximum == 4
    assert score == maximum, f"right answers lost points: {by_cell}"


def test_wrong_answers_lose_exactly_their_points(course):
    score, maximum, by_cell = scores(course, "wrong")
    assert by_cell == {"01_latency-ex1-check": 0, "01_latency-ex2-check": 1,
                       "01_latency-ex3-check": 1, "01_latency-ex4-check": 0}
    assert score == maximum - 2


def test_unanswered_exercises_get_no_points(course):
    score, _, _ = scores(course, "blank")
    assert score == 0


def test_the_feedback_keeps_the_friendly_hints(course):
    assert "That is the mean" in autograded_output(course, "wrong", "01_latency-ex1-check")
    assert "not answered yet" in autograded_output(course, "blank", "01_latency-ex1-check")
    assert "is right" in autograded_output(course, "right", "01_latency-ex1-check")
