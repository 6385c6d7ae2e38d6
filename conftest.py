"""The book's pytest plugin: one execution of each chapter serves both nbval and the website.

``make test`` is one pytest session over ``tests/`` and ``chapters/``:

1. nbval executes each chapter and checks it (``--nbval-lax``: every cell must run without error,
   and the hidden check cell asserts the chapter's claims).
2. Each chapter nbval ran in full is stored, with the outputs nbval received (figures, tables,
   glue data), in the book's execution cache ``_build/.jupyter_cache``: the same entry myst-nb
   writes when it executes a notebook itself. Its run time is nbval's.
3. ``tests/test_website.py`` runs last. It builds the book, which finds a cache entry for every
   chapter nbval stored and executes none of them again, then checks that site in a browser.

A chapter that failed under nbval is not stored. The build must not run it a second time (that
run could pass and publish numbers nbval never checked), so the website test builds with the
chapter excluded from execution: its page shows no outputs, and the build reports that.

The end of the run lists what was not checked: skipped tests with their reasons (``-rs``), and
the system tools that were missing (:mod:`servelab.tools`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import IPyNbCell

from servelab import claims, tools

ROOT = Path(__file__).resolve().parent
# myst-nb's default: the folder beside the builder's output (_build/html), i.e. _build/.jupyter_cache.
CACHE_DIR = ROOT / "_build" / ".jupyter_cache"
WEBSITE_TESTS = ROOT / "tests" / "test_website.py"


@dataclasses.dataclass
class NotebookRun:
    """What nbval did with one notebook in this session."""

    path: Path
    cells: list[IPyNbCell]  # the notebook's code cells, in order, as collected
    complete: bool  # every code cell was selected (no -k or node id left one out)
    seconds: float = 0.0  # setup, call and teardown of its cells: kernel start and execution
    failed: bool = False
    skipped: bool = False
    stored: bool = False  # its executed copy is in the book's cache
    problem: str = ""  # why it was not stored

    @property
    def name(self) -> str:
        """The notebook's path relative to the repository (chapters/02_gil.ipynb)."""
        return self.path.relative_to(ROOT).as_posix() if self.path.is_relative_to(ROOT) else str(self.path)


class BookSession:
    """The plugin's state for one session: the notebook runs, keyed by the notebook's node id."""

    def __init__(self) -> None:
        self.runs: dict[str, NotebookRun] = {}

    def run_of(self, item: pytest.Item) -> NotebookRun | None:
        return self.runs.get(item.parent.nodeid) if isinstance(item, IPyNbCell) else None


_KEY = pytest.StashKey[BookSession]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_KEY] = BookSession()


@pytest.fixture(scope="session")
def nbval_runs(request: pytest.FixtureRequest) -> dict[str, NotebookRun]:
    """This session's nbval runs, by notebook path relative to the repository (chapters/02_gil.ipynb)."""
    return {run.name: run for run in request.config.stash[_KEY].runs.values()}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The website tests build the book from the chapters nbval ran, so they go last.
    items.sort(key=lambda item: item.path == WEBSITE_TESTS)  # stable: keeps the order otherwise
    session = config.stash[_KEY]
    by_notebook: dict[str, list[IPyNbCell]] = {}
    for item in items:
        if isinstance(item, IPyNbCell):
            by_notebook.setdefault(item.parent.nodeid, []).append(item)
    for nodeid, cells in by_notebook.items():
        code_cells = sum(cell.cell_type == "code" for cell in cells[0].parent.nb.cells)
        session.runs[nodeid] = NotebookRun(cells[0].path, cells, complete=len(cells) == code_cells)
        # A chapter that fails before its check cell must not leave an older run's claims behind.
        (claims.claims_dir() / f"{cells[0].path.stem}.json").unlink(missing_ok=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):  # noqa: ANN201 - a hook wrapper
    yield
    run = item.config.stash[_KEY].run_of(item)
    kernel = getattr(item.parent, "kernel", None)  # nbval starts it in the first cell's setup
    if run is not None and item is run.cells[0] and kernel is not None:
        _store_history(kernel)


def _store_history(kernel) -> None:  # noqa: ANN001 - nbval's RunningKernel
    """Make nbval's kernel run cells with ``store_history=True``, as Jupyter and nbclient do.

    nbval sends ``store_history=False``. IPython looks for the ``;`` that hides a cell's result
    in the history, so under nbval every figure ending in ``...;`` came back twice (once as the
    cell's result), and the website would have shown it twice.
    """
    client = kernel.kc

    def execute_cell_input(cell_input: str, allow_stdin: bool | None = None) -> str:
        return client.execute(cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False)

    kernel.execute_cell_input = execute_cell_input


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201 - a hook wrapper
    outcome = yield
    run = item.config.stash[_KEY].run_of(item)
    if run is not None:
        report = outcome.get_result()
        run.seconds += report.duration
        run.failed |= report.failed
        run.skipped |= report.skipped


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):  # noqa: ANN201 - a hook wrapper
    # Before the last cell's teardown, while nbval's kernel still runs (it stops with the notebook).
    run = item.config.stash[_KEY].run_of(item)
    if run is not None and item is run.cells[-1]:
        _store(run, item.config)
    yield


def _store(run: NotebookRun, config: pytest.Config) -> None:
    if not run.complete:
        run.problem = "only some of its cells were selected"
    elif run.failed or run.skipped:
        run.problem = "nbval failed or skipped a cell"
    elif os.environ.get("SERVELAB_CONDITION", "all-cores") != "all-cores":
        # a robustness run (taskset, a busy neighbour, no wrk) is not what the website should show
        run.problem = f"it ran in the robustness condition {os.environ['SERVELAB_CONDITION']}"
    else:
        try:
            _cache_executed(run)
            run.stored = True
        except Exception as error:  # noqa: BLE001 - the build then executes the notebook itself
            run.problem = f"storing it in the book's cache failed: {error!r}"
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        what = (f"stored in {CACHE_DIR.relative_to(ROOT)} for the website" if run.stored
                else f"not stored for the website: {run.problem}")
        reporter.write_line(f"\n{run.name}: executed once, by nbval, in {run.seconds:.1f} s; {what}")


def executed_notebook(run: NotebookRun) -> nbformat.NotebookNode:
    """The notebook nbval read, with the outputs nbval received, numbered as if run top to bottom."""
    nb = copy.deepcopy(run.cells[0].parent.nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    for count, (cell, item) in enumerate(zip(code_cells, run.cells, strict=True), start=1):
        cell.execution_count = count
        cell.outputs = copy.deepcopy(item.test_outputs or [])
        for output in cell.outputs:
            if output.output_type == "execute_result":
                output.execution_count = count
    language_info = _language_info(run.cells[-1])
    if language_info:
        nb.metadata["language_info"] = language_info  # what nbclient records: code highlighting uses it
    nbformat.validate(nb)
    return nb


def _language_info(item: IPyNbCell) -> dict:
    """The kernel's language_info, asked from nbval's kernel while it is idle between cells."""
    reply = item.parent.kernel.kc.kernel_info(reply=True, timeout=10)
    return reply["content"].get("language_info", {})


def _cache_executed(run: NotebookRun) -> None:
    # Imported here: only a session that ran notebooks needs it.
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    # myst-nb matches a notebook to this entry by a hash of its code cells and kernelspec, read
    # from the same file nbval read; the run time shows on the execution-statistics page.
    bundle = CacheBundleIn(executed_notebook(run), str(run.path), data={"execution_seconds": run.seconds})
    get_cache(str(CACHE_DIR)).cache_notebook_bundle(bundle, check_validity=True, overwrite=True)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    runs = config.stash[_KEY].runs.values()
    ran = {run.path.stem for run in runs}
    records = [r for r in claims.load_records() if r["chapter"] in ran]
    if records:  # the claims ledger of the chapters this session ran (the book's page shows each claim)
        terminalreporter.section("claims ledger", sep="-")
        terminalreporter.write_line(f"{claims.tally_line(claims.claims_of(records))} "
                                    f"[{len(records)} of {len(ran)} chapters recorded]")
    lines = [f"servelab setup: {tools.missing_reason(tool.name)}" for tool in tools.missing()]
    lines += [f"{run.name}: not stored for the website ({run.problem})" for run in runs if not run.stored]
    if lines:
        terminalreporter.section("what this run did not check", sep="-")
        for line in lines:
            terminalreporter.write_line(line)
