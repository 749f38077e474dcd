# vitlab — `make help` lists the targets. `make train` and `make test` install what they need first.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PYTEST_ARGS ?=
# two pytest workers of one thread each: on 2 cores, two 2-thread torch processes spin against each other
TEST_WORKERS ?= 2

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

# pip prints only warnings and errors, and no "new pip available" notice. The one warning filtered is
# setuptools' "Editable installation" notice (a folder named vitlab in the working directory would shadow an
# editable install): information only, printed for every editable install whose packages are not all under src/.
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation:UserWarning$${PYTHONWARNINGS:+,$$PYTHONWARNINGS}" \
	  $(PIP) install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install vitlab (again only when pyproject.toml changes)

train: install ## train the default model (a small ViT) on digits and print test accuracy; extra overrides: ARGS="optim.lr=3e-3"
	$(BIN)/vitlab-train $(ARGS)

test: install lint ## run ruff and the test suite (PYTEST_ARGS="-k resume" to select; TEST_WORKERS=0: one process)
	OMP_NUM_THREADS=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install lint ## the quick tier (< 3 min on 2 cores): everything but the tests that start vitlab processes or train end to end
	OMP_NUM_THREADS=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow and not slurm" $(PYTEST_ARGS)

bench: install ## benchmarks (~30 min on 2 cores, plus the memory bench): mixers vs length, EIT presets, transfer steps, start-up/per-step overhead, torch.compile, training memory/MFU -> outputs/bench/
	$(BIN)/vitlab-bench attention $(ARGS)
	$(BIN)/vitlab-bench transfer
	for m in eit_mini eit_tiny eit_base eit_large; do $(BIN)/vitlab-bench model model=$$m data.img_size=224 || exit 1; done
	$(BIN)/vitlab-bench overhead
	$(BIN)/vitlab-bench compile
	$(BIN)/vitlab-bench memory
	$(BIN)/vitlab-bench data

gpu-check: install ## every GPU path on one GPU (~8 min) -> outputs/gpu_check/report.md; without CUDA: says so, exits 0
	$(BIN)/python scripts/gpu_check.py $(ARGS)

# make reproduce runs this many training runs side by side, each with its share of the cores
PARALLEL ?= 2
reproduce: install ## paper tables: the three CPU mini tables (~1 h on 2 cores) -> outputs/tables/; one table: ARGS="paper=eit table=imagenet scale=full"
	@if [ -n "$(ARGS)" ]; then $(BIN)/vitlab-reproduce $(ARGS); else \
	  for t in "vix mini_digits" "eit mini_digits" "ode mini_digits_transfer"; do set -- $$t; \
	    $(BIN)/vitlab-reproduce paper=$$1 table=$$2 scale=mini parallel=$(PARALLEL) || exit 1; done; fi

lint: install ## ruff check + format check + the import contracts of pyproject.toml (layers)
	$(BIN)/ruff check src tests scripts configs
	$(BIN)/ruff format --check src tests scripts configs
	$(BIN)/lint-imports

format: install ## ruff format and autofix
	$(BIN)/ruff format src tests scripts configs
	$(BIN)/ruff check --fix src tests scripts configs

clean: ## remove caches and build files (keeps .venv, data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

.PHONY: help install train test test-fast bench gpu-check reproduce lint format clean
