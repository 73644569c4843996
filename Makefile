# The project's front door. `make demo` runs the whole job on one machine; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help setup demo test test-fast lint chaos reference bench clean

help:
	@echo "make demo       score sample videos end to end on embedded servers (stand-in model)"
	@echo "make test       install what the suite needs, lint, and run the suite (what CI runs)"
	@echo "make lint       ruff and mypy over the repository"
	@echo "make reference  rebuild the mantis-vl reference environments and golden logits (Idefics2, Qwen2-VL)"
	@echo "make bench      run the CPU benchmarks in bench/"
	@echo "make chaos      the fleet chaos suite alone (part of make test); figures in var/chaos-figures.log"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[worker,demo,test,api,report,export]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/videoscore demo

test: setup lint
	bash scripts/ensure-servers.sh
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test-fast: setup
	$(BIN)/python -m pytest -m "not postgres and not slow"

chaos: setup
	bash scripts/ensure-servers.sh
	$(BIN)/python -m pytest tests/chaos -q

reference: setup
	bash reference/setup_env.sh
	$(BIN)/python reference/generate.py
	bash reference/qwen2_vl/setup_env.sh
	$(BIN)/python reference/qwen2_vl/generate.py

bench: setup
	$(BIN)/python bench/frames.py
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .venv-reference .venv-reference-qwen .pytest_cache .mypy_cache .ruff_cache build *.egg-info
