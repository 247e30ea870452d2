PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch/torchvision first: on the project machines they come from local disk
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1 || $(PY) -m pip install "torch>=2.4" "torchvision>=0.19"
	# the optional features' extras too, so that their tests run
	$(PY) -m pip install -e ".[dev,search,stream]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m mbtasks $(ARGS)

LINTED := mbtasks tests benchmarks scripts

test: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)

clean:
	rm -rf $(VENV) outputs multirun
