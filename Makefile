# All set-up is done by these targets: a fresh machine needs only Python 3.11 and pip.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision pinned to known-good builds (override: make TORCH_PIN="torch==X torchvision==Y");
# pyproject's ranges admit them and anything newer elsewhere.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup train test lint bench clean

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

# style (ruff's rules and formatter; fix with: .venv/bin/ruff format src tests benchmarks), the layer contract
# of docs/architecture.md (import-linter) and declared = imported dependencies (deptry)
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/deptry src

bench: setup
	$(BIN)/python benchmarks/loss_speed.py

clean:
	rm -rf $(VENV) outputs/*/ .pytest_cache
