# fdistill — run `make help` for the list of targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch first, pinned to the locally provided CPU build: a bare `torch` requirement would pull
# several GB of CUDA wheels. The pyproject range admits this version, so pip keeps it.
TORCH_PIN ?= torch==2.13.0
# One BLAS thread per process: on small CPU machines torch's default oversubscribes the cores.
export OMP_NUM_THREADS ?= 1

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets with a one-line description
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-24s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e '.[dev,offline]'
	touch $@

.PHONY: install
install: $(STAMP) ## create .venv (if missing) and install fdistill with dev extras

.PHONY: demo
demo: $(STAMP) ## run the embedded default (synthetic task, tiny BART pair, TVD) end to end on CPU
	$(PY) run.py

.PHONY: test
test: $(STAMP) ## run the default test suite (excludes slow and gpu tests; < 10 min on 2 cores)
	$(PY) -m pytest -m "not slow and not gpu" -q

.PHONY: test-slow
test-slow: $(STAMP) ## run the slow tests (paper targets on tiny pairs, long end-to-end runs)
	$(PY) -m pytest -m "slow and not gpu" -q

.PHONY: lint
lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check fdistill tests scripts run.py

.PHONY: toy-figures
toy-figures: $(STAMP) ## AKL Figs. 2-3 and GKD Fig. 2 toy reproductions (CPU, < 1 min each) -> results/toy
	$(PY) scripts/toy_akl_head_tail.py --out results/toy
	$(PY) scripts/toy_gkd_mode_seeking.py --out results/toy

.PHONY: report
report: $(STAMP) ## table from a multirun: make report MULTIRUN=dir TABLE=name OUT=results/<paper>/<table> [PAPER_CSV=..]
	$(PY) -m fdistill.reporting --multirun-dir $(MULTIRUN) --table "$(TABLE)" --out $(OUT) $(if $(PAPER_CSV),--paper-csv $(PAPER_CSV)) $(if $(METHOD_KEY),--method-key $(METHOD_KEY))

.PHONY: bench-divergences
bench-divergences: $(STAMP) ## memory/time benchmark of the divergence kernels -> results/bench/divergences.md
	$(PY) scripts/bench_divergences.py --out results/bench/divergences.md
