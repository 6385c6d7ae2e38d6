"""Unit tests for servelab.student: the student edition keeps prompts and checks, drops solutions."""

import nbformat
import pytest

from servelab import student


def _exercise_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    prompt = nbformat.v4.new_markdown_cell("**Exercise 1.** Compute the p99.\n\n![diagram](../images/queue.png)")
    answer = nbformat.v4.new_code_cell("answer = None")
    solution = nbformat.v4.new_code_cell(
        "answer = 42", metadata={"tags": ["solution", "hide-cell"]}
    )
    solution.outputs = [nbformat.v4.new_output("stream", text="42\n")]
    solution.execution_count = 3
    check = nbformat.v4.new_code_cell("check(answer)")
    check.outputs = [nbformat.v4.new_output("stream", text="✓ right\n")]
    check.execution_count = 4
    hidden = nbformat.v4.new_code_cell("assert True", metadata={"tags": ["remove-cell"]})
    nb.cells = [prompt, answer, solution, check, hidden]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_solutions_become_blank_answer_cells():
    result = student.student_notebook(_exercise_notebook())
    sources = [c.source for c in result.cells]
    assert "answer = 42" not in sources
    assert sources[2] == student.PLACEHOLDER
    assert result.cells[2].cell_type == "code"
    assert not any(student.is_solution(c) for c in result.cells)


def test_prompts_checks_and_hidden_cells_are_kept_in_order():
    result = student.student_notebook(_exercise_notebook())
    assert result.cells[0].cell_type == "markdown" and "Exercise 1" in result.cells[0].source
    assert [c.source for c in result.cells[1:]][::2] == ["answer = None", "check(answer)"]
    assert result.cells[4].metadata["tags"] == ["remove-cell"]
    assert len(result.cells) == 5


def test_outputs_and_execution_counts_are_cleared():
    result = student.student_notebook(_exercise_notebook())
    for cell in result.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_the_original_notebook_is_not_modified():
    original = _exercise_notebook()
    student.student_notebook(original)
    assert original.cells[2].source == "answer = 42"
    assert original.cells[3].outputs


def test_write_student_edition_writes_valid_notebooks_and_linked_images(tmp_path):
    chapters = tmp_path / "book" / "chapters"
    chapters.mkdir(parents=True)
    (tmp_path / "book" / "images").mkdir()
    (tmp_path / "book" / "images" / "queue.png").write_bytes(b"\x89PNG fake")
    nbformat.write(_exercise_notebook(), chapters / "01_demo.ipynb")
    out = tmp_path / "student"

    written = student.write_student_edition(chapters, out)

    assert written == [out / "01_demo.ipynb"]
    nb = nbformat.read(written[0], as_version=4)
    nbformat.validate(nb)
    assert "answer = 42" not in [c.source for c in nb.cells]
    assert "(images/queue.png)" in nb.cells[0].source
    assert (out / "images" / "queue.png").read_bytes() == b"\x89PNG fake"


def test_command_line_entry_point(tmp_path, capsys):
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    nbformat.write(_exercise_notebook(), chapters / "02_demo.ipynb")
    assert student.main([str(chapters), str(tmp_path / "out")]) == 0
    assert "02_demo.ipynb" in capsys.readouterr().out
    assert (tmp_path / "out" / "02_demo.ipynb").is_file()


def test_empty_source_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        student.write_student_edition(tmp_path, tmp_path / "out")


def test_a_solution_region_is_replaced_and_the_placeholder_kept():
    nb = _exercise_notebook()
    nb.cells[2].source = "answer = None  # your answer\n### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION"
    cell = student.student_notebook(nb).cells[2]
    assert cell.source == f"answer = None  # your answer\n{student.PLACEHOLDER}"
    assert not student.is_solution(cell) and cell.outputs == []


def test_without_markers_is_the_worked_answer():
    source = "answer = None\n    ### BEGIN SOLUTION\n    answer = 42\n    ### END SOLUTION\nprint(answer)"
    assert student.without_markers(source) == "answer = None\n    answer = 42\nprint(answer)"
    assert student.without_solution(source) == f"answer = None\n    {student.PLACEHOLDER}\nprint(answer)"


def test_a_written_solution_becomes_an_empty_written_answer():
    nb = _exercise_notebook()
    nb.cells[2] = nbformat.v4.new_markdown_cell("Because.", metadata={"tags": ["solution", "hide-cell"]})
    cell = student.student_notebook(nb).cells[2]
    assert cell.cell_type == "markdown" and cell.source == student.WRITTEN_PLACEHOLDER
