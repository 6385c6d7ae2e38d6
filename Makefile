# Two commands on a fresh machine:
#   make book   build the executed website into _build/html
#   make test   unit tests, nbval on every chapter, and the website check
# For teachers: make student (student edition) and make assignment (nbgrader course).
# Both create (or reuse) .venv and install requirements.txt into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Never MPLBACKEND (not even one set by the caller): notebook kernels inherit it, and ipykernel
# only picks its inline backend, which puts figures in the book, when it is unset.
# Headless matplotlib falls back to Agg by itself.
unexport MPLBACKEND
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: venv book test unit notebooks website lab student assignment clean robustness

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (servelab)" >/dev/null
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Website: $(CURDIR)/_build/html/index.html"

unit: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/test_website.py -q

notebooks: $(STAMP)
	$(BIN)/python -m pytest chapters -q

website: book
	$(BIN)/python -m pytest tests/test_website.py -q

# Everything: build the website (the website test inspects it), then one pytest run over
# tests/ and chapters/ so the closing summary line counts every test. pytest runs even when
# the build failed, so its summary shows what broke; the exit status reports either failure.
test: $(STAMP)
	@status=0; \
	$(MAKE) --no-print-directory book || status=$$?; \
	$(BIN)/python -m pytest -q -rfEs --durations=15 || status=$$?; \
	exit $$status

# Maintainers: every chapter on all cores, under taskset -c 0, beside a busy loop, and without wrk;
# writes the claims x conditions table to _build/robustness/robustness.md (about 20 minutes on 2 cores).
robustness: $(STAMP)
	$(BIN)/python -m servelab.robustness

student: $(STAMP)
	$(BIN)/python -m servelab.student chapters _build/student

# Teachers: an nbgrader course in _build/nbgrader, one released assignment per chapter with exercises
# (servelab.grading; the book's page "For teachers").
assignment: $(STAMP)
	$(BIN)/python -m servelab.grading course chapters _build/nbgrader

lab: $(STAMP)
	$(BIN)/jupyter lab chapters

clean:
	rm -rf _build
