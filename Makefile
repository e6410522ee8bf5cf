# Two entry points (see README): `make demo` and `make test`. Everything installs into ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
MODEL  := build/default/fashion_lenet.xml

.PHONY: demo test install-demo install-test dataset espeak model models zoo benchmarks compare clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null

install-demo: $(BIN)/python
	$(BIN)/pip install -e '.[train,plots]'

install-test: $(BIN)/python
	$(BIN)/pip install -e '.[test,bench,plots,zoo]'

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (no download at run time).
dataset:
	@test -f $(FMNIST) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	  else echo "error: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; fi; }

# The demo needs only the LeNet; `models` also trains FashionSevenAct (seven activation types) for tests/benchmarks.
model: dataset
	$(BIN)/python -m scripts.build_default_model --out build --arch lenet

models: dataset
	$(BIN)/python -m scripts.build_default_model --out build --arch all

demo: install-demo model
	$(BIN)/ovrange protect --config configs/fashion_lenet.json --force
	$(BIN)/ovrange evaluate $(MODEL) results/fashion_lenet_RangeSupervision/fashion_lenet.xml \
	    --data build/default/test.npz

# tests/test_zoo.py builds build/zoo (docs/zoo.md) on first use: espeak-ng must be there.
test: install-test models espeak
	$(BIN)/python -m pytest

benchmarks: install-test models
	$(BIN)/python benchmarks/bench_protect.py
	$(BIN)/python benchmarks/bench_inject.py
	$(BIN)/python benchmarks/bench_overhead.py

# Regenerates docs/comparison.md (every protection x 3 models x weight/activation faults; ~30 min on 2 cores).
compare: install-test models
	$(BIN)/python benchmarks/compare_protections.py

# The real-model zoo: MediaPipe, Silero VAD and PP-OCR models from PyPI wheels, calibration and held-out sets from
# scikit-image's photos, LFW and espeak-ng speech (docs/zoo.md). Wheels are cached in build/wheels.
espeak:
	@command -v espeak-ng >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y espeak-ng || (apt-get update && apt-get install -y espeak-ng)); \
	  else echo "error: espeak-ng missing: run 'sudo apt-get install espeak-ng'" >&2; exit 1; fi; }

zoo: install-test espeak
	$(BIN)/python -m scripts.build_zoo --out build/zoo

clean:
	rm -rf build results
