# aaren-bench: `make run` trains the offline default, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: venv run test test-data test-slow test-slurm lint bench bench-tiny tables plan slurm-up slurm-down clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

## the main job on the offline default: Aaren on JapaneseVowels (ships with sktime), CPU
run: venv
	$(BIN)/python train.py task=classify dataset=JapaneseVowels model=aaren $(ARGS)

## the default test suite (fast; real-data tests skip without $$AAREN_DATA)
test: venv
	$(BIN)/pytest $(ARGS)

## the tests that read the real datasets (marked `data`): AAREN_DATA=/path/to/data make test-data
test-data: venv
	@test -n "$$AAREN_DATA" || { echo "error: set AAREN_DATA to the folder holding the real datasets"; exit 2; }
	$(BIN)/pytest -m "data and not slow and not slurm" $(ARGS)

## the linter (rules in pyproject.toml)
lint: venv
	$(BIN)/ruff check .

## long checks: likelihood recovery, accuracy targets
test-slow: venv
	$(BIN)/pytest -m slow $(ARGS)

## the SLURM integration test (brings up a one-node cluster; needs root)
test-slurm: venv
	$(BIN)/pytest -m slurm $(ARGS)

## the efficiency suite: CSV + PNG + summary in bench_results/
bench: venv
	OMP_WAIT_POLICY=PASSIVE $(BIN)/aaren-bench bench $(ARGS)

bench-tiny: venv
	$(BIN)/aaren-bench bench --tiny $(ARGS)

## the paper's tables from runs/*/result.json
tables: venv
	$(BIN)/aaren-bench tables $(ARGS)

plan: venv
	$(BIN)/aaren-bench plan $(ARGS)

slurm-up:
	bash slurm/up.sh

slurm-down:
	bash slurm/down.sh

clean:
	rm -rf $(VENV) .pytest_cache
