# Every target sets itself up: a virtual environment in .venv with adlearn and its dev tools.
# On these machines torch is pinned to the build served from local disk (an unpinned torch downloads
# gigabytes); pyproject.toml keeps a compatible range for everyone else. Override: make TORCH=...
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.adlearn-installed
export ADLEARN_MVTEC_ROOT ?= $(abspath ../shared/data/mvtec_ad)

.PHONY: install demo test test-fast benchmarks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install      ## the main job: fit on the embedded synthetic data, print metrics, write figures
	$(BIN)/adlearn demo --models $(shell $(BIN)/python -c "from adlearn.models import available_models as a; print(','.join(m for m in ('padim','patchcore') if m in a()))")

test: install      ## the whole test suite
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

benchmarks: install
	$(BIN)/python benchmarks/bench_padim.py

clean:
	rm -rf $(VENV) adlearn_results book/_build build
