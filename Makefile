# Two entry points: `make demo` runs the whole workflow on the built-in demo data,
# `make test` runs the test suite. Both create .venv first when it is missing or stale.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
# test processes (pytest-xdist): each test module runs whole in one of them
TEST_WORKERS ?= auto

.PHONY: demo test lint schema clean-demo

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "ntclass needs Python >= 3.11 (daisy 2); set PYTHON=python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)
	$(BIN)/ntclass summary results/evaluation

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests workflow_scripts benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

# config.schema.yaml from config.skeleton.yaml and the settings of settings.py
schema: $(STAMP)
	$(BIN)/python -m ntclass.schemagen --write

clean-demo:
	rm -rf results logs benchmarks/results data/demo .snakemake
