# The two quickstart commands are `make demo` and `make test`; `make help` lists the rest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/demo.yaml

SHELL := /bin/bash
.PHONY: help lock check-lock check-demo demo-report test-gpu setup smoke demo run up down serve-model status test test-slow test-all lint bench bench-quick clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/qlora: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	@touch $@

lock:  ## re-resolve pyproject.toml's ranges in a scratch venv and write requirements.lock (then make test, make demo)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e ".[dev]"
	{ echo "# Exact versions tested (CPU, Python 3.11). Regenerate on purpose with \`make lock\`, then run \`make test\` and the demo."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

check-lock:  ## fail unless .venv holds exactly the versions in requirements.lock
	$(BIN)/pip freeze --exclude-editable | diff -u <(grep -v '^#' requirements.lock) - && echo "installed = requirements.lock"

setup: $(BIN)/qlora  ## install into .venv, pull the raw data (DVC), build the demo model and data (dvc repro)
	$(BIN)/dvc pull --quiet $(wildcard data/raw/*.dvc)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro --quiet

demo: setup up run  ## set up, start the local stack, run the whole pipeline on the embedded default

run:  ## run the pipeline flow on CONFIG (default configs/demo.yaml)
	$(BIN)/qlora run $(CONFIG)

up:  ## start the Prefect server, the MLflow server and the deployments (127.0.0.1)
	$(BIN)/qlora stack up --config $(CONFIG)

down:  ## stop the local stack
	$(BIN)/qlora stack down

check-demo:  ## exit 0 only if the newest demo run ended as a registered, verified champion; prints its timings
	$(BIN)/qlora check-run runs/demo

demo-report:  ## check the newest demo run and write its report to reports/demo_run.md (the README's numbers)
	$(BIN)/qlora check-run runs/demo --report reports/demo_run.md

MODEL ?= smollm2-135m-sst2
serve-model:  ## serve models:/MODEL@champion with MLflow's server on 127.0.0.1:5001 (OpenAI-style chat; stack up)
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-http://127.0.0.1:5000} \
	  $(BIN)/mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local -h 127.0.0.1 -p 5001

status:  ## what of the local stack is running
	$(BIN)/qlora stack status

smoke: setup  ## the whole pipeline on configs/tiny.yaml: a tiny random model, under a minute, no stack needed
	$(BIN)/python -c "from tests.tiny_model import save_tiny_model; save_tiny_model('models/tiny-random')"
	$(BIN)/qlora run configs/tiny.yaml

test:  ## unit and integration tests (tiny model; no GPU, no network)
	$(BIN)/python -m pytest -q

test-slow:  ## the slow tier: the real SmolLM2 demo model
	$(BIN)/python -m pytest -q -m slow -n 0

test-gpu:  ## the CUDA tier (skipped, with the reason, without a GPU)
	$(BIN)/python -m pytest -q -m gpu -rs -n 0

lint:  ## ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench:  ## performance benchmarks on the demo (minutes); results in benchmarks/results/
	$(BIN)/python -m benchmarks.train_throughput
	$(BIN)/python -m benchmarks.validation_cost
	$(BIN)/python -m benchmarks.forgetting_cache
	$(BIN)/python -m benchmarks.orchestration_overhead
	$(BIN)/python -m benchmarks.gate_calibration
	$(BIN)/python -m benchmarks.promotion_calibration
	$(BIN)/python -m benchmarks.cost_curves
	$(BIN)/python -m benchmarks.hardware_fraction
	$(BIN)/python -m benchmarks.replay

bench-quick:  ## smoke versions of the benchmarks
	$(BIN)/python -m benchmarks.train_throughput --quick
	$(BIN)/python -m benchmarks.validation_cost --quick
	$(BIN)/python -m benchmarks.forgetting_cache --quick
	$(BIN)/python -m benchmarks.orchestration_overhead --quick
	$(BIN)/python -m benchmarks.gate_calibration --quick
	$(BIN)/python -m benchmarks.promotion_calibration --quick
	$(BIN)/python -m benchmarks.cost_curves --quick
	$(BIN)/python -m benchmarks.hardware_fraction --quick
	$(BIN)/python -m benchmarks.replay --quick

clean:  ## remove runs, local MLflow store and stack state (keeps data, model and .venv)
	rm -rf runs mlruns.db mlartifacts .stack .cache
