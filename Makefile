# Two entry points (see README): `make demo` and `make test`. Everything installs into ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
MODEL  := build/default/fashion_lenet.xml

.PHONY: demo test install-demo install-test install-llm dataset chromium espeak model models vit llm llm-model zoo zoo-model\
	benchmarks compare clean

# Packages are installed by uv (pinned below): the same pins and sources as pip (the find-links pip is configured
# with, e.g. a local CPU build of torch), downloaded in parallel, several times faster than pip; compiled to bytecode
# at install, as pip does (where PYTHONDONTWRITEBYTECODE is set, nothing would be compiled later).
UV_VERSION := 0.13.8
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_PIP     := $(BIN)/uv pip --quiet
PY_ARGS     = --python $(BIN)/python $(addprefix --find-links ,$(FIND_LINKS))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)

install-demo: $(BIN)/python
	$(UV_PIP) install --compile-bytecode $(PY_ARGS) -e '.[train,plots]'

# optimum-intel pulls torchvision, whose PyPI build fails to import beside the CPU torch (see pyproject's llm extra).
install-test: $(BIN)/python
	$(UV_PIP) install --compile-bytecode $(PY_ARGS) -e '.[test,bench,plots,llm,zoo]'
	$(UV_PIP) uninstall --python $(BIN)/python torchvision 2>/dev/null || true

install-llm: $(BIN)/python
	$(UV_PIP) install --compile-bytecode $(PY_ARGS) -e '.[llm]'
	$(UV_PIP) uninstall --python $(BIN)/python torchvision 2>/dev/null || true

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (no download at run time).
dataset:
	@test -f $(FMNIST) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	  else echo "error: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; fi; }

# The HTML report's test opens it in headless Chromium (Debian's chromium package); skipped without it.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y chromium || (apt-get update && apt-get install -y chromium)); \
	  else echo "note: chromium missing: the HTML report's browser test is skipped (sudo apt-get install chromium)" >&2; fi; }

# The demo needs only the LeNet; `models` also trains FashionSevenAct (seven activation types) for tests/benchmarks.
model: dataset
	$(BIN)/python -m scripts.build_default_model --out build --arch lenet

models: dataset
	$(BIN)/python -m scripts.build_default_model --out build --arch all

# The Fashion ViT (transformer tests, benchmarks).
vit: dataset
	$(BIN)/python -m scripts.build_vit --out build

# The bundled language model: a small Llama trained on the standard library, exported by optimum-intel (fp32, int8).
llm: install-llm llm-model

llm-model:
	$(BIN)/python -m scripts.build_llm --out build/llm

demo: install-demo model
	$(BIN)/ovrange protect --config configs/fashion_lenet.json --force
	$(BIN)/ovrange evaluate $(MODEL) results/fashion_lenet_RangeSupervision/fashion_lenet.xml \
	    --data build/default/test.npz

# The packages, then every model the tests read, then the suite on two pytest workers (pytest-xdist; a module's tests
# run in one worker, so its fixtures are built once). The builds run side by side by priority, so the cores stay
# busy: the language model trains on two torch threads and slows several-fold when another thread takes one of its
# cores, so it runs first; the ViT (one thread, the longest of the others) at the lowest normal priority, and the
# one-thread Fashion-MNIST models and the zoo only on otherwise idle cores (SCHED_IDLE). The suite starts when all
# but the ViT are built, at the ViT's priority so that both share the cores; the two modules that read the ViT are
# collected last and wait for its build (tests/conftest.py). Thread counts are fixed in each build, so the models
# are the same whatever runs beside them.
test: install-test chromium espeak dataset
	@$(MAKE) --no-print-directory llm-model & llm=$$!; \
	nice -n 19 $(MAKE) --no-print-directory vit & vit=$$!; \
	chrt --idle 0 $(MAKE) -j2 --no-print-directory models zoo-model; status=$$?; \
	wait $$llm || status=1; \
	if [ $$status = 0 ]; then nice -n 19 $(BIN)/python -m pytest -n 2 --dist loadscope --durations=25; status=$$?; fi; \
	wait $$vit || status=1; \
	exit $$status

benchmarks: install-test models
	$(BIN)/python benchmarks/bench_protect.py
	$(BIN)/python benchmarks/bench_inject.py
	$(BIN)/python benchmarks/bench_overhead.py

# Regenerates docs/comparison.md (every protection x the bundled models x weight/activation faults).
compare: install-test models
	$(BIN)/python benchmarks/compare_protections.py

# The real-model zoo: MediaPipe, Silero VAD and PP-OCR models from PyPI wheels, calibration and held-out sets from
# scikit-image's photos, LFW and espeak-ng speech (docs/zoo.md). Wheels are cached in build/wheels.
espeak:
	@command -v espeak-ng >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y espeak-ng || (apt-get update && apt-get install -y espeak-ng)); \
	  else echo "error: espeak-ng missing: run 'sudo apt-get install espeak-ng'" >&2; exit 1; fi; }

zoo: install-test espeak zoo-model

zoo-model:
	$(BIN)/python -m scripts.build_zoo --out build/zoo

clean:
	rm -rf build results
