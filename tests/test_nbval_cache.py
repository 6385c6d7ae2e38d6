"""conftest.py hands each notebook nbval ran to the book build through jupyter-cache.

Runs nbval, with the repository's conftest.py, on a small notebook in a temporary folder, then
looks for the entry myst-nb would find for that notebook file.
"""

import subprocess
import sys
from pathlib import Path

import nbformat
from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parents[1]


def small_notebook(fail: bool = False) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A chapter"),
        nbformat.v4.new_code_cell("from myst_nb import glue\nglue('answer', 42, display=False)\nprint('hello')"),
        nbformat.v4.new_code_cell("1 + 1;"),  # hidden by the semicolon, as in Jupyter
        nbformat.v4.new_code_cell("2 + 2", metadata={"tags": ["remove-input"]}),
        nbformat.v4.new_code_cell("assert False, 'a claim failed'" if fail else "x = 1"),
    ]
    return nb


def run_nbval(tmp_path: Path, nb: nbformat.NotebookNode) -> tuple[subprocess.CompletedProcess, Path]:
    """pytest with nbval and a copy of conftest.py on ``nb``, in ``tmp_path`` (its own process and rootdir).

    Not pytester: it restores sys.modules after each test, which breaks jupyter_client's kernel
    provisioners for the tests that follow.
    """
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), str(path)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    return result, path


def test_a_passing_run_is_stored_as_myst_nb_would_find_it(tmp_path):
    result, path = run_nbval(tmp_path, small_notebook())
    assert result.returncode == 0 and "4 passed" in result.stdout, result.stdout[-3000:]
    assert "chapter.ipynb: executed once, by nbval, in " in result.stdout
    assert "stored in _build/.jupyter_cache for the website" in result.stdout
    cache = get_cache(str(tmp_path / "_build" / ".jupyter_cache"))
    record = cache.match_cache_notebook(nbformat.read(path, as_version=4))  # the file, as the book reads it
    assert record.data["execution_seconds"] > 0
    _, merged = cache.merge_match_into_notebook(nbformat.read(path, as_version=4))
    code = [cell for cell in merged.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == [1, 2, 3, 4]
    glue, stream = code[0].outputs
    assert glue.output_type == "display_data" and "application/papermill.record/text/plain" in glue.data
    assert stream.text == "hello\n"
    assert code[1].outputs == []  # "1 + 1;" shows nothing
    assert code[2].outputs[0].data["text/plain"] == "4" and code[2].metadata["tags"] == ["remove-input"]
    assert merged.metadata["language_info"]["name"] == "python"


def test_a_failed_run_is_not_stored(tmp_path):
    result, _ = run_nbval(tmp_path, small_notebook(fail=True))
    assert result.returncode == 1 and "1 failed, 3 passed" in result.stdout, result.stdout[-3000:]
    assert "not stored for the website: nbval failed or skipped a cell" in result.stdout
    assert "what this run did not check" in result.stdout
    assert not (tmp_path / "_build" / ".jupyter_cache").exists()  # nothing was written to a cache
