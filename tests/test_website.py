"""The built website, checked in a real (headless) browser.

The session fixture ``book_build`` builds the book (``jupyter-book build``) once, after nbval ran
the chapters: ``conftest.py`` orders these tests last and stores each chapter nbval executed in
the book's execution cache, so the build executes none of them again and the site shows exactly
the runs nbval checked. A stdlib HTTP server on 127.0.0.1 serves the site; headless Chromium loads
every page in ``_toc.yml``, saves a screenshot to ``_build/screenshots/``, dumps the DOM after its
scripts ran and logs every request the page made. From that we check that each chapter shows its
figures (served, valid PNGs), that no page shows an execution error, that the theme loaded, that
the setup chapter shows the hardware table, that the math is typeset, and that no page fetches
anything from outside 127.0.0.1 (the site must work offline, in a classroom without internet).

Without Chromium the browser tests are skipped with the reason from :mod:`servelab.tools`; the
build itself is still checked.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import http.server
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from servelab import tools

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
BUILD_LOG = ROOT / "_build" / "book-build.log"
# A build executes the chapters that nbval did not run in this session: up to 90 s each.
BUILD_TIMEOUT_S = 1800
CHROMIUM_TIMEOUT_S = 90
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
NON_PROSE_TAGS = {"script", "style", "pre", "code", "textarea"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def toc_pages() -> list[str]:
    """Every page of the book in _toc.yml order, as paths without extension (e.g. chapters/00_setup)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                pages.append(str(Path(node["file"]).with_suffix("")))
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key, []))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return pages


PAGES = toc_pages()
CHAPTER_PAGES = [p for p in PAGES if p.startswith("chapters/")]


class PageDom(HTMLParser):
    """What the checks need from a page's DOM: images, tables, class names, error outputs and math."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.img_srcs: list[str] = []
        self.classes: set[str] = set()
        self.tags: collections.Counter[str] = collections.Counter()
        self.tables: list[str] = []
        self.stderr_outputs: list[str] = []
        self.math: list[str] = []  # the text of each Sphinx math element (class "math")
        self.text: list[str] = []
        self.prose: list[str] = []  # text outside scripts, styles and code
        self._stack: list[str] = []
        # Open captures: (kind, stack depth where it started, collected text).
        self._captures: list[tuple[str, int, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        self.classes.update(classes)
        self.tags[tag] += 1
        if tag == "img" and attributes.get("src"):
            self.img_srcs.append(attributes["src"])
        if tag in VOID_TAGS:
            return
        self._stack.append(tag)
        if tag == "table":
            self._captures.append(("table", len(self._stack), []))
        for kind in ("stderr", "math"):  # by class: MathJax's own output holds MathML <math> tags
            if kind in classes:
                self._captures.append((kind, len(self._stack), []))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or tag not in self._stack:
            return
        while self._stack:
            depth = len(self._stack)
            open_tag = self._stack.pop()
            for capture in [c for c in self._captures if c[1] == depth]:
                self._captures.remove(capture)
                kind, _, text = capture
                {"table": self.tables, "stderr": self.stderr_outputs, "math": self.math}[kind].append(" ".join(text))
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if not NON_PROSE_TAGS & set(self._stack):
            self.prose.append(data)
        for _, _, text in self._captures:
            text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG image; raises ValueError if ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return struct.unpack(">II", data[16:24])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output readable
        pass


@dataclasses.dataclass
class BookBuild:
    returncode: int
    log: str


def _config_excluding(notebooks: list[str]) -> Path:
    """A copy of _config.yml that keeps ``notebooks`` from being executed by the build."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("execute", {})["exclude_patterns"] = notebooks
    path = ROOT / "_build" / "nbval-failed" / "_config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def book_build(nbval_runs) -> BookBuild:
    """``jupyter-book build``, once per session, after nbval ran the chapters (conftest.py orders it).

    Chapters nbval stored in the cache are not executed again, and their pages are rebuilt from
    those runs. One that failed under nbval is excluded from execution: a second run could pass
    and publish numbers nbval never checked.
    """
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "-W", "-n", "--keep-going"]
    failed = sorted(name for name, run in nbval_runs.items() if run.failed)
    if failed:
        command += ["--config", str(_config_excluding(failed))]
    if any(run.stored for run in nbval_runs.values()):
        # Sphinx re-reads a page only when its source changed, and nbval's new run did not change
        # the notebook: without --all an unchanged chapter would keep the page of an older run.
        command.append("--all")
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        BUILD_LOG.write_text(error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else str(error.stdout))
        pytest.fail(f"jupyter-book build did not finish within {BUILD_TIMEOUT_S} s (log: {BUILD_LOG})")
    BUILD_LOG.write_text(proc.stdout)
    return BookBuild(proc.returncode, proc.stdout)


@pytest.fixture(scope="session")
def site_url(book_build):
    """Serve _build/html on 127.0.0.1 (a free port) for the whole session; stop afterwards."""
    if not (SITE / "index.html").is_file():
        pytest.fail(f"{SITE / 'index.html'} is missing: the build made no site (log: {BUILD_LOG})")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the headless browser; skips the test, saying how to install it, where it is missing."""
    path = tools.find("chromium")
    if path is None:
        pytest.skip(tools.missing_reason("chromium"))
    return path


def run_chromium(chromium: str, *args: str) -> str:
    """Run headless Chromium with a fresh profile; return its stdout. Bounded by CHROMIUM_TIMEOUT_S."""
    with tempfile.TemporaryDirectory(prefix="servelab-chromium-") as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--no-first-run", "--disable-component-update",
            "--disable-sync", "--disable-quic", "--hide-scrollbars", f"--user-data-dir={profile}", *args,
        ]
        # Own process group, so a hung browser and its helpers can all be stopped together.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {' '.join(args)}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers left behind by a finished browser
            except ProcessLookupError:
                pass
        if proc.returncode != 0:
            pytest.fail(f"chromium exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
        return out.decode("utf-8", errors="replace")


@dataclasses.dataclass
class LoadedPage:
    dom: PageDom
    requested: list[str]  # every URL the page requested while it loaded


def page_requests(net_log: str) -> list[str]:
    """The URLs a page requested, in order and without repeats, from Chromium's net log (``--log-net-log``).

    Only requests made for the page count: those it initiated, and the page itself (its network
    isolation key is the site's). Chromium's own traffic (update checks, network time,
    account look-ups) has neither, and says nothing about the site.
    """
    try:
        log = json.loads(net_log)
    except json.JSONDecodeError:  # a browser that was stopped leaves the closing brackets out
        log = json.loads(net_log.rstrip().rstrip(",") + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if event.get("type") != start_job or "url" not in params:
            continue
        by_the_page = [str(params.get("initiator", "")), str(params.get("network_isolation_key", ""))]
        if any(urllib.parse.urlsplit(part).hostname in LOCAL_HOSTS for value in by_the_page for part in value.split()):
            urls.append(params["url"])
    return list(dict.fromkeys(urls))


def external(urls: list[str]) -> list[str]:
    """The network URLs among ``urls`` whose host is not this machine's loopback."""
    return [u for u in urls if urllib.parse.urlsplit(u).scheme in {"http", "https", "ws", "wss"}
            and urllib.parse.urlsplit(u).hostname not in LOCAL_HOSTS]


@functools.cache
def loaded_page(chromium: str, url: str) -> LoadedPage:
    """The page's DOM after its scripts ran, and what it requested (cached: each page loads once)."""
    with tempfile.TemporaryDirectory(prefix="servelab-netlog-") as tmp:
        net_log = Path(tmp) / "net.json"
        html = run_chromium(chromium, "--virtual-time-budget=5000", f"--log-net-log={net_log}", "--dump-dom", url)
        requested = page_requests(net_log.read_text(errors="replace")) if net_log.is_file() else []
    dom = PageDom()
    dom.feed(html)
    dom.close()
    return LoadedPage(dom, requested)


def rendered_dom(chromium: str, url: str) -> PageDom:
    return loaded_page(chromium, url).dom


def page_url(site_url: str, page: str) -> str:
    return f"{site_url}/{page}.html"


def build_problems(log: str) -> list[str]:
    """The warnings and errors in a build log."""
    return [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]


def test_book_builds(book_build):
    problems = build_problems(book_build.log)
    assert book_build.returncode == 0, (
        f"jupyter-book build exited with {book_build.returncode} (log: {BUILD_LOG}); "
        f"{len(problems)} warnings or errors, the last ones:\n" + "\n".join(problems[-15:]))


def build_executed(log: str) -> dict[str, str]:
    """For each notebook in a build log: 'cache' where myst-nb used the cache, 'executed' where it ran it."""
    seen: dict[str, str] = {}
    for line in log.splitlines():
        match = re.search(r"(chapters/[\w.-]+\.ipynb).*?(Using cached notebook|Executing notebook)", line)
        if match:
            seen[match[1]] = "cache" if match[2].startswith("Using") else "executed"
    return seen


def test_site_shows_the_runs_nbval_checked(book_build, nbval_runs):
    stored = sorted(name for name, run in nbval_runs.items() if run.stored)
    if not stored:
        pytest.skip("nbval ran no chapter in full in this session: the build took the chapters from earlier runs or ran them")
    how = build_executed(book_build.log)
    again = [name for name in stored if how.get(name) != "cache"]
    assert not again, (f"the build did not take {again} from nbval's runs in the cache "
                       f"({ {name: how.get(name, 'not mentioned') for name in again} }; log: {BUILD_LOG})")


@pytest.mark.parametrize("page", PAGES)
def test_page_was_built(book_build, page):
    assert (SITE / f"{page}.html").is_file(), f"{page} is in _toc.yml but {page}.html was not built"


@pytest.mark.parametrize("page", PAGES)
def test_screenshot(site_url, chromium, page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{page.replace('/', '__')}.png"
    shot.unlink(missing_ok=True)
    run_chromium(chromium, f"--screenshot={shot}", "--window-size=1280,2000", "--virtual-time-budget=5000",
                 page_url(site_url, page))
    assert shot.is_file(), f"chromium wrote no screenshot of {page}"
    assert png_size(shot.read_bytes()) == (1280, 2000), f"screenshot of {page} has the wrong size"


@pytest.mark.parametrize("page", PAGES)
def test_no_execution_errors(site_url, chromium, page):
    dom = rendered_dom(chromium, page_url(site_url, page))
    assert "Traceback (most recent call last)" not in dom.all_text, f"{page} shows a Python traceback"
    error_classes = {c for c in dom.classes if "traceback" in c or c in {"nbexec-error", "output_error"}}
    assert not error_classes, f"{page} has error outputs (classes {sorted(error_classes)})"
    errors = [t.strip()[:300] for t in dom.stderr_outputs if "Error" in t]
    assert not errors, f"{page} shows errors on stderr: {errors}"
    # The execution statistics table marks a failed notebook with a cross.
    assert "❌" not in dom.all_text, f"{page} reports a notebook whose execution failed"


@pytest.mark.parametrize("page", CHAPTER_PAGES)
def test_chapter_figures_load(site_url, chromium, page):
    url = page_url(site_url, page)
    dom = rendered_dom(chromium, url)
    figures = [src for src in dom.img_srcs if "_images/" in src]
    assert figures, f"{page} shows no figures (no <img> from _images/); did its plots render inline?"
    for src in figures:
        with urllib.request.urlopen(urllib.parse.urljoin(url, src), timeout=30) as response:
            assert response.status == 200, f"{page}: figure {src} not served"
            data = response.read()
        assert data, f"{page}: figure {src} is empty"
        if src.lower().endswith(".svg"):
            assert b"<svg" in data[:2000], f"{page}: {src} is not an SVG image"
        else:
            width, height = png_size(data)
            assert width > 0 and height > 0, f"{page}: figure {src} has no pixels"


def test_intro_shows_the_theme(site_url, chromium):
    root = PAGES[0]
    dom = rendered_dom(chromium, page_url(site_url, root))
    assert "Serving Models in Practice" in dom.all_text, "the landing page lost the book's title"
    markers = {"bd-sidebar-primary", "bd-article"}
    assert markers <= dom.classes, f"sphinx-book-theme layout missing on {root}: no {sorted(markers - dom.classes)}"
    stylesheet = SITE / "_static" / "styles" / "sphinx-book-theme.css"
    assert stylesheet.is_file(), "sphinx-book-theme's stylesheet was not copied into the site"


def test_setup_shows_the_hardware_table(site_url, chromium):
    dom = rendered_dom(chromium, page_url(site_url, "chapters/00_setup"))
    assert any("usable cores" in table for table in dom.tables), (
        "the setup chapter shows no hardware table (a <table> with 'usable cores'); is "
        "nb_render_markdown_format still 'myst' in _config.yml?"
    )



@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(site_url, chromium, page):
    dom = rendered_dom(chromium, page_url(site_url, page))
    prose = "".join(dom.prose)
    raw = [m for m in (r"\(", r"\[", r"\begin{") if m in prose]
    assert not raw, f"{page} shows raw TeX ({raw}): MathJax did not typeset it; was it loaded?"
    if dom.math:
        assert dom.tags["mjx-container"] >= len(dom.math), (
            f"{page} has {len(dom.math)} formulas but MathJax typeset {dom.tags['mjx-container']}")


@pytest.mark.parametrize("page", PAGES)
def test_no_request_leaves_the_machine(site_url, chromium, page):
    loaded = loaded_page(chromium, page_url(site_url, page))
    assert loaded.requested, f"Chromium's net log of {page} lists no request; is --log-net-log still honoured?"
    outside = external(loaded.requested)
    assert not outside, f"{page} fetched from outside 127.0.0.1, so it breaks offline: {outside[:10]}"


def test_external_request_check_sees_a_cdn():
    cdn = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"
    urls = ["http://127.0.0.1:8000/_static/mathjax/tex-chtml.js", "data:image/png;base64,AAAA", cdn]
    assert external(urls) == [cdn]

    def job(url, initiator, key):  # noqa: ANN001, ANN202
        return {"type": 7, "params": {"url": url, "initiator": initiator, "network_isolation_key": key}}

    net_log = json.dumps({"constants": {"logEventTypes": {"URL_REQUEST_START_JOB": 7}}, "events": [
        job("http://127.0.0.1:8000/chapters/01_latency.html", "not an origin", "http://127.0.0.1 http://127.0.0.1"),
        job(cdn, "http://127.0.0.1:8000", "http://127.0.0.1 http://127.0.0.1"),
        job(cdn, "http://127.0.0.1:8000", "http://127.0.0.1 http://127.0.0.1"),
        job("https://update.googleapis.com/service/update2/json", "not an origin", "null"),  # the browser's own
        {"type": 8, "params": {"url": "https://elsewhere.example/"}},  # not a request job
    ]})
    assert page_requests(net_log) == ["http://127.0.0.1:8000/chapters/01_latency.html", cdn]
    assert page_requests(net_log[:-2]) == page_requests(net_log)  # a net log left unfinished


def test_claims_page_has_every_chapter_and_no_failed_claim(book_build):
    """The page "What held on this machine": the claims ledger of this build, one row per claim."""
    dom = PageDom()
    dom.feed((SITE / "claims.html").read_text())
    dom.close()
    ledger = next((t for t in dom.tables if "outcome" in t and "bound" in t), None)
    assert ledger is not None, "claims.html has no table of claims (did the claims_page extension run?)"
    chapters = [Path(page).name for page in CHAPTER_PAGES]
    missing = [name for name in chapters if name not in ledger]
    assert not missing, f"the claims page has no row for {missing}: their check cells recorded nothing in this build"
    failed = re.findall(r"failed: [^|]{0,200}", ledger)
    assert not failed, f"the claims page shows failed claims: {failed}"
