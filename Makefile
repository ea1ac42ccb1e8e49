# Set-up and the main jobs. Every target installs what it needs from nothing:
# a virtual environment in .venv with the CPU build of torch (pinned; override
# with `make TORCH="torch==2.14.1" ...` on a machine with a GPU), then advdetect.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.advdetect-installed

.PHONY: install demo test benchmark docs clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/advdetect demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15

benchmark: $(STAMP)
	$(BIN)/python benchmarks/bench_detectors.py

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
