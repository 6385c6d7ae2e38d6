# Two commands on a fresh machine:
#   make book   build the executed website into _build/html
#   make test   unit tests, nbval on every chapter, and the website check
# Both first run scripts/setup: .venv with requirements.txt, and the Debian tools where it can.
# For teachers: make student (student edition) and make assignment (nbgrader course).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Never MPLBACKEND (not even one set by the caller): notebook kernels inherit it, and ipykernel
# only picks its inline backend, which puts figures in the book, when it is unset.
# Headless matplotlib falls back to Agg by itself.
unexport MPLBACKEND
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: setup venv book test unit notebooks website lab student assignment clean robustness

# scripts/setup installs what is missing: .venv with requirements.txt, and on Debian/Ubuntu (as
# root or with passwordless sudo) the system tools. It prints one line for each tool it could not
# install; the tests that need that tool are then skipped with the same line.
setup:
	@PYTHON=$(PYTHON) scripts/setup

venv: setup

book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Website: $(CURDIR)/_build/html/index.html"

unit: setup
	$(BIN)/python -m pytest tests --ignore=tests/test_website.py -q

notebooks: setup
	$(BIN)/python -m pytest chapters -q

# The website test builds the book itself (chapters found in the execution cache are not re-run).
website: setup
	$(BIN)/python -m pytest tests/test_website.py -q -rs

# Everything in one pytest session, so the closing summary line counts every test: unit tests,
# nbval on every chapter (each executed once; conftest.py stores the runs in the book's cache),
# then the book build from those runs and the website check. -rfEs lists failures, errors and
# skipped tests with their reasons at the end.
test: setup
	$(BIN)/python -m pytest -q -rfEs --durations=15

# Maintainers: every chapter on all cores, under taskset -c 0, beside a busy loop, and without wrk;
# writes the claims x conditions table to _build/robustness/robustness.md (about 45 minutes on 2 cores).
robustness: setup
	$(BIN)/python -m servelab.robustness

student: setup
	$(BIN)/python -m servelab.student chapters _build/student

# Teachers: an nbgrader course in _build/nbgrader, one released assignment per chapter with exercises
# (servelab.grading; the book's page "For teachers").
assignment: setup
	$(BIN)/python -m servelab.grading course chapters _build/nbgrader

lab: setup
	$(BIN)/jupyter lab chapters

clean:
	rm -rf _build
