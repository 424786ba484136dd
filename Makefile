# Two commands on a fresh machine: `make demo` (the whole pipeline on an embedded dataset) and
# `make test` (the test suite). Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.moofa-installed
HVD_STAMP := $(VENV)/.horovod-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup horovod test demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev,deploy,ethos-u]" $(TORCH_PINS)
	touch $@

setup: $(STAMP)

$(HVD_STAMP): $(STAMP) scripts/install_horovod.sh
	bash scripts/install_horovod.sh $(BIN)/python
	touch $@

horovod: $(HVD_STAMP)

test: setup horovod
	$(BIN)/python -m ruff check moofa tests benchmarks scripts   # lint and import order ([tool.ruff])
	$(BIN)/python -m mypy moofa   # [tool.mypy] in pyproject.toml
	$(BIN)/python -m pytest -q -n 2 --dist loadfile   # two workers, one test module each at a time

demo: setup
	$(BIN)/python -m moofa.demo

bench: setup
	$(BIN)/python benchmarks/bench_memory.py

clean:
	rm -rf $(VENV) demo_runs .pytest_cache
