"""The built website, checked in a real (headless) browser.

Assumes ``make book`` already built ``_build/html`` (``make test`` and ``make website`` do that
first). A stdlib HTTP server on 127.0.0.1 serves the site; headless Chromium loads every page in
``_toc.yml``, saves a screenshot to ``_build/screenshots/`` and dumps the DOM after its scripts ran.
From that DOM we check that each chapter shows its figures (served, valid PNGs), that no page shows
an execution error, that the theme loaded, and that the setup chapter shows the hardware table.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import struct
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_TIMEOUT_S = 90
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
    """What the checks need from a page's DOM: images, tables, class names and error outputs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.img_srcs: list[str] = []
        self.classes: set[str] = set()
        self.tables: list[str] = []
        self.stderr_outputs: list[str] = []
        self.text: list[str] = []
        self._stack: list[str] = []
        # Open captures: (kind, stack depth where it started, collected text).
        self._captures: list[tuple[str, int, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        self.classes.update(classes)
        if tag == "img" and attributes.get("src"):
            self.img_srcs.append(attributes["src"])
        if tag in VOID_TAGS:
            return
        self._stack.append(tag)
        if tag == "table":
            self._captures.append(("table", len(self._stack), []))
        if "stderr" in classes:
            self._captures.append(("stderr", len(self._stack), []))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or tag not in self._stack:
            return
        while self._stack:
            depth = len(self._stack)
            open_tag = self._stack.pop()
            for capture in [c for c in self._captures if c[1] == depth]:
                self._captures.remove(capture)
                kind, _, text = capture
                (self.tables if kind == "table" else self.stderr_outputs).append(" ".join(text))
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
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


@pytest.fixture(scope="module")
def site_url():
    """Serve _build/html on 127.0.0.1 (a free port) for the whole module; stop afterwards."""
    if not (SITE / "index.html").is_file():
        pytest.fail(f"{SITE / 'index.html'} is missing: build the website first with `make book`")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def run_chromium(*args: str) -> str:
    """Run headless Chromium with a fresh profile; return its stdout. Bounded by CHROMIUM_TIMEOUT_S."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: install it with `apt-get install chromium`")
    with tempfile.TemporaryDirectory(prefix="servelab-chromium-") as profile:
        command = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
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


@functools.cache
def rendered_dom(url: str) -> PageDom:
    """The page's DOM after its scripts ran (cached: each page is loaded once)."""
    html = run_chromium("--virtual-time-budget=5000", "--dump-dom", url)
    dom = PageDom()
    dom.feed(html)
    dom.close()
    return dom


def page_url(site_url: str, page: str) -> str:
    return f"{site_url}/{page}.html"


@pytest.mark.parametrize("page", PAGES)
def test_page_was_built(page):
    assert (SITE / f"{page}.html").is_file(), f"{page} is in _toc.yml but {page}.html was not built"


@pytest.mark.parametrize("page", PAGES)
def test_screenshot(site_url, page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{page.replace('/', '__')}.png"
    shot.unlink(missing_ok=True)
    run_chromium(f"--screenshot={shot}", "--window-size=1280,2000", "--virtual-time-budget=5000",
                 page_url(site_url, page))
    assert shot.is_file(), f"chromium wrote no screenshot of {page}"
    assert png_size(shot.read_bytes()) == (1280, 2000), f"screenshot of {page} has the wrong size"


@pytest.mark.parametrize("page", PAGES)
def test_no_execution_errors(site_url, page):
    dom = rendered_dom(page_url(site_url, page))
    assert "Traceback (most recent call last)" not in dom.all_text, f"{page} shows a Python traceback"
    error_classes = {c for c in dom.classes if "traceback" in c or c in {"nbexec-error", "output_error"}}
    assert not error_classes, f"{page} has error outputs (classes {sorted(error_classes)})"
    errors = [t.strip()[:300] for t in dom.stderr_outputs if "Error" in t]
    assert not errors, f"{page} shows errors on stderr: {errors}"
    # The execution statistics table marks a failed notebook with a cross.
    assert "❌" not in dom.all_text, f"{page} reports a notebook whose execution failed"


@pytest.mark.parametrize("page", CHAPTER_PAGES)
def test_chapter_figures_load(site_url, page):
    url = page_url(site_url, page)
    dom = rendered_dom(url)
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


def test_intro_shows_the_theme(site_url):
    root = PAGES[0]
    dom = rendered_dom(page_url(site_url, root))
    assert "Serving Models in Practice" in dom.all_text, "the landing page lost the book's title"
    markers = {"bd-sidebar-primary", "bd-article"}
    assert markers <= dom.classes, f"sphinx-book-theme layout missing on {root}: no {sorted(markers - dom.classes)}"
    stylesheet = SITE / "_static" / "styles" / "sphinx-book-theme.css"
    assert stylesheet.is_file(), "sphinx-book-theme's stylesheet was not copied into the site"


def test_setup_shows_the_hardware_table(site_url):
    dom = rendered_dom(page_url(site_url, "chapters/00_setup"))
    assert any("usable cores" in table for table in dom.tables), (
        "the setup chapter shows no hardware table (a <table> with 'usable cores'); is "
        "nb_render_markdown_format still 'myst' in _config.yml?"
    )

