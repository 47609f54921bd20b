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

.PHONY: book test labs check-labs clean-book

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

book: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
		$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is at $(CURDIR)/$(BOOK_OUT)/index.html"

test: $(STAMP)
	LLMLAB_PRESET=smoke $(BIN)/python -m pytest

labs: $(STAMP)
	$(BIN)/python -m llmlab.notebooks labs

check-labs: $(STAMP)
	$(BIN)/python -m llmlab.notebooks check

clean-book:
	rm -rf _build
