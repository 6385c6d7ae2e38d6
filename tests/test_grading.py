"""servelab.grading: nbgrader metadata follows the book's tags, and nbgrader accepts every chapter."""

from pathlib import Path

import nbformat
import pytest
from nbgrader.nbgraderformat import MetadataValidator

from servelab import grading, student

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
# The chapters whose exercises carry nbgrader metadata. Chapters 4b and 6 came after the nbgrader
# layout and still use plain `solution` cells; the test below names them, so none is forgotten silently.
WITH_EXERCISES = grading.graded_chapters(ROOT / "chapters")
NOT_YET_GRADED = {"04b_payloads_overload", "06_generative"}


def test_every_chapter_with_exercises_is_graded_or_named_as_not_yet():
    with_prompts = {p.stem for p in CHAPTERS
                    if any(grading.EXERCISE_PROMPT.search(c.source) for c in nbformat.read(p, as_version=4).cells)}
    assert with_prompts - {p.stem for p in WITH_EXERCISES} == NOT_YET_GRADED


def exercise_notebook(check: str = "assert ch9.check_answer(answer, data)") -> nbformat.NotebookNode:
    new_md, new_code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        new_md("Some prose.\n\n## Exercises\n\n**Exercise 1 (one).** Compute it."),
        new_code("data = [1, 2, 3]"),
        new_code(f"answer = None\n{student.BEGIN_SOLUTION}\nanswer = sum(data)\n{student.END_SOLUTION}",
                 metadata={"tags": ["solution", "hide-cell"]}),
        new_code(check),
        new_code("print('a measurement that needs the chapter')"),
        new_md("**Exercise 2.** Explain."),
        new_code(f"why = ...\n{student.BEGIN_SOLUTION}\nwhy = 'b'\n{student.END_SOLUTION}",
                 metadata={"tags": ["solution", "hide-cell"]}),
        new_code("assert ch9.check_why(why)"),
        new_md("Because.", metadata={"tags": ["solution", "hide-cell"]}),
        new_md("## Summary\n\nDone."),
        new_code("assert True", metadata={"tags": ["remove-cell"]}),
    ]
    return nb


def roles(nb: nbformat.NotebookNode) -> list[tuple[int, str, bool, bool, bool, float | None]]:
    return [(i, m["grade_id"], m["solution"], m["grade"], m["locked"], m.get("points"))
            for i, c in enumerate(nb.cells) if (m := c.metadata.get("nbgrader"))]


def test_annotate_marks_givens_answers_checks_and_written_answers():
    annotated = grading.annotate(exercise_notebook(), "ch9")
    assert roles(annotated) == [
        (1, "ch9-ex1-given", False, False, True, None),
        (2, "ch9-ex1-answer", True, False, False, None),
        (3, "ch9-ex1-check", False, True, True, 1),
        (6, "ch9-ex2-answer", True, False, False, None),
        (7, "ch9-ex2-check", False, True, True, 1),
        (8, "ch9-ex2-written", True, True, False, 1),
    ]
    assert grading.max_points(annotated) == 3
    MetadataValidator().validate_nb(annotated)


def test_annotate_is_idempotent_and_drops_stale_metadata():
    nb = exercise_notebook()
    nb.cells[4].metadata["nbgrader"] = grading.cell_metadata("stale", solution=False, grade=True, points=5)
    once = grading.annotate(nb, "ch9")
    assert "nbgrader" not in once.cells[4].metadata
    assert grading.annotate(once, "ch9") == once
    assert "nbgrader" in nb.cells[4].metadata, "annotate works on a copy"


def test_a_check_that_does_not_assert_is_refused():
    with pytest.raises(ValueError, match="exercise 1 needs .* check cell that asserts"):
        grading.find_exercises(exercise_notebook(check="ch9.check_answer(answer, data);"))


def test_an_answer_without_a_solution_region_is_refused():
    nb = exercise_notebook()
    nb.cells[2].source = "answer = sum(data)"
    with pytest.raises(ValueError, match="no ### BEGIN SOLUTION"):
        grading.find_exercises(nb)


def test_exercises_only_keeps_the_section_and_drops_cells_that_need_the_chapter():
    quiz = grading.exercises_only(grading.annotate(exercise_notebook(), "ch9"), "data = [4, 5]")
    sources = [c.source for c in quiz.cells]
    assert sources[0] == "data = [4, 5]"
    assert sources[1].startswith("## Exercises") and "Some prose" not in sources[1]
    assert not any("measurement" in s or "Summary" in s or s == "assert True" for s in sources)
    assert [r[1] for r in roles(quiz)] == ["ch9-ex1-given", "ch9-ex1-answer", "ch9-ex1-check", "ch9-ex2-answer",
                                           "ch9-ex2-check", "ch9-ex2-written"]


def test_chapters_01_to_04_have_graded_exercises():
    names = [p.stem for p in WITH_EXERCISES]
    assert {"01_latency", "02_gil", "03_dag", "04_batching"} <= set(names)


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[p.name for p in WITH_EXERCISES])
def test_committed_nbgrader_metadata_matches_the_tags(path):
    nb = nbformat.read(path, as_version=4)
    exercises = grading.find_exercises(nb)
    assert len(exercises) >= 3, f"{path.name}: every chapter has at least three exercises"
    expected = grading.annotate(nb, path.stem)
    stale = [i for i, (a, b) in enumerate(zip(nb.cells, expected.cells)) if a.metadata != b.metadata]
    assert not stale, (f"{path.name}: cells {stale} need fresh nbgrader metadata; run "
                       f"`python -m servelab.grading annotate chapters/{path.name}`")
    MetadataValidator().validate_nb(nb)
    for exercise in exercises:
        assert {"solution", "hide-cell"} <= grading.tags(nb.cells[exercise.answer]), "collapsed on the website"


def test_nbgrader_releases_every_chapter_with_the_student_editions_answer_cells(tmp_path):
    released = grading.write_course(ROOT / "chapters", tmp_path / "course")
    assert [p.parent.name for p in released] == [p.stem for p in WITH_EXERCISES]
    for path in released:
        release = nbformat.read(path, as_version=4)
        edition = student.student_notebook(nbformat.read(ROOT / "chapters" / path.name, as_version=4))
        assert len(release.cells) == len(edition.cells)
        for ours, theirs in zip(edition.cells, release.cells):
            if theirs.metadata.get("nbgrader", {}).get("solution") and theirs.cell_type == "code":
                assert theirs.source == ours.source.replace(student.PLACEHOLDER, grading.CODE_STUB)
            elif theirs.cell_type == "code":
                assert theirs.source == ours.source
        text = "".join(c.source for c in release.cells if c.cell_type == "markdown")
        assert "../images/" not in text, "links point into the assignment folder"
        assert "images/" not in text or (path.parent / "images").is_dir()
