# Every target sets itself up: a virtual environment in .venv with adlearn and its dev tools.
# On these machines torch is pinned to the build served from local disk (an unpinned torch downloads
# gigabytes); pyproject.toml keeps a compatible range for everyone else. Override: make TORCH=...
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.adlearn-installed
# Notebooks: JOBS run at the same time; FULL=1 runs them with smoke=False (make notebooks / book).
JOBS   ?= 2
FULL   ?=
# Real MVTec AD for the tests that use it (they skip when it is absent).
ifneq ($(wildcard ../shared/data/mvtec_ad/bottle),)
export ADLEARN_MVTEC_ROOT ?= $(abspath ../shared/data/mvtec_ad)
endif

.PHONY: lint format install demo test test-recipes test-fast benchmarks clean notebooks book book-html test-notebooks test-gpu clear-notebooks

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Lint first, in seconds: ruff alone in its own small venv (no torch), so CI fails fast on style.
RUFF := .venv-lint/bin/ruff
$(RUFF):
	test -x .venv-lint/bin/python || $(PYTHON) -m venv .venv-lint
	.venv-lint/bin/python -m pip install -q ruff==0.17.5

lint: $(RUFF)      ## ruff check + format check (config in pyproject.toml)
	$(RUFF) check .
	$(RUFF) format --check .

format: $(RUFF)    ## ruff fix + format in place
	$(RUFF) check --fix .
	$(RUFF) format .

demo: install      ## the main job: fit on the embedded synthetic data, print metrics, write figures
	$(BIN)/adlearn demo --models $(shell $(BIN)/python -c "from adlearn.models import available_models as a; print(','.join(m for m in ('padim','patchcore') if m in a()))")

test: install      ## the whole test suite
	$(BIN)/python -m pytest

test-recipes: install  ## the models' full training recipes on real bottle (slow: ~20 min on 2 cores), skipped by make test
	ADLEARN_RECIPES=1 $(BIN)/python -m pytest -m recipe

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

notebooks: install ## execute every notebook with papermill (smoke on CPU; FULL=1 full) into build/notebooks/
	$(BIN)/python -m adlearn.tools.run_notebooks --jobs $(JOBS) $(if $(FULL),--full --device auto,--smoke --device cpu)

book: install      ## execute the notebooks (smoke; FULL=1 full), then build the HTML in book/_build/html
	$(BIN)/python book/build.py --execute --jobs $(JOBS) $(if $(FULL),--full,)

book-html: install ## rebuild the HTML only, from the notebooks already executed in build/notebooks/
	$(BIN)/python book/build.py

test-notebooks: install  ## notebook sync checks, smoke runs, nbval, book build, browser check, JupyterLab widget test
	$(BIN)/python -m pytest tests/test_notebooks.py tests/test_book.py tests/test_jupyterlab.py

test-gpu: install  ## every notebook with smoke=False on CUDA; table in build/notebooks-gpu/results.md
	$(BIN)/python -m adlearn.tools.run_notebooks --full --device cuda --jobs 1 --cell-timeout 0 --out build/notebooks-gpu

clear-notebooks: install  ## strip outputs, execution counts and widget state from notebooks/
	$(BIN)/python -m adlearn.tools.clear_notebooks notebooks/

benchmarks: install  ## adlearn vs anomalib 2.7 side by side (needs its venv: benchmarks/README.md); ~1 h on 2 cores
	$(BIN)/python benchmarks/bench_padim.py
	$(BIN)/python benchmarks/bench_memory_models.py --max-train 60
	$(BIN)/python benchmarks/bench_trained_models.py
	$(BIN)/python benchmarks/bench_digits.py
	$(BIN)/python benchmarks/bench_kcenter_greedy.py

clean:
	rm -rf $(VENV) adlearn_results book/_build book/notebooks build
