# All set-up is done by these targets: a fresh machine needs only Python 3.11 and pip.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision pinned to known-good builds (override: make TORCH_PIN="torch==X torchvision==Y");
# pyproject's ranges admit them and anything newer elsewhere.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup train test lint bench mutate clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (or run: make PY=python3 ...)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null  # notebooks' kernel = this venv
	@touch $(STAMP)

setup: $(STAMP)

train: setup
	$(BIN)/contrastlab-train $(ARGS)

# two workers (one per core), one thread each; a file's tests stay on one worker (shared trained fixtures)
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=20
test: lint
	OMP_NUM_THREADS=1 $(BIN)/pytest tests $(PYTEST_ARGS)

# style (ruff's rules and formatter; fix with: .venv/bin/ruff format src tests benchmarks tools), the layer contract
# of docs/architecture.md (import-linter) and declared = imported dependencies (deptry)
lint: setup
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/lint-imports
	$(BIN)/deptry src

bench: setup
	$(BIN)/python benchmarks/loss_speed.py

# Mutation testing (not part of `make test`; not for CI: tens of minutes to hours). mutmut mutates the modules
# of pyproject's [tool.mutmut] only_mutate in a copy under build/mutate and runs, per mutant, the fast tests
# that cover it; survivors are listed at the end (inspect one: cd build/mutate && ../../$(BIN)/mutmut show NAME),
# then the mutants it counted as killed by a crash or a timeout are re-run outside it (tools/recheck_mutants.py).
# Limit the run with MUTANTS, e.g. make mutate MUTANTS='contrastlab.losses.*'; results are kept between runs
# (rm -rf build/mutate to start afresh).
MUTANTS ?=
mutate: setup
	mkdir -p build/mutate
	cp -rp src tests conf pyproject.toml build/mutate/
	cd build/mutate && OMP_NUM_THREADS=1 ../../$(BIN)/mutmut run $(MUTANTS)
	cd build/mutate && ../../$(BIN)/mutmut results
	$(BIN)/python tools/recheck_mutants.py build/mutate  # mutmut counts crashes and timeouts as kills: re-run them

clean:
	rm -rf $(VENV) outputs/*/ .pytest_cache
