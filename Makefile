# The two commands of the README:
#   make demo   set everything up, then run the tour on the embedded default
#   make test   set everything up, then run the whole test suite
# Setup installs the CPU build of torch (never a CUDA build on a machine without a GPU),
# builds osmos (osmos._C always; osmos._cuda too when nvcc is found) and installs it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The CPU wheel; a bare `torch` could resolve to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,triton,diffusion,bench,replication
NATIVE_SOURCES := $(shell find csrc -type f) CMakeLists.txt pyproject.toml
PY_SOURCES := $(shell find python triton_kernels -name '*.py')

.PHONY: setup install test demo bench inplace clean test-torch-min

$(VENV)/.deps-stamp: pyproject.toml scripts/test-constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -c scripts/test-constraints.txt "$(TORCH_SPEC)" $$($(PYTHON) scripts/extras.py $(EXTRAS))
	touch $@

setup: $(VENV)/.deps-stamp

# Non-editable install of this tree; the CMake build folder (build/) is kept, so a rebuild
# only compiles what changed.
$(VENV)/.osmos-stamp: $(VENV)/.deps-stamp $(NATIVE_SOURCES) $(PY_SOURCES)
	$(PIP) install --no-deps --no-build-isolation .
	touch $@

install: $(VENV)/.osmos-stamp

test: install
	$(PY) -m osmos info
	TRITON_INTERPRET=1 $(PY) -m pytest -q -ra tests

demo: install
	$(PY) -m osmos info
	$(PY) -m osmos demo

bench: install
	$(PY) benchmarks/bench_topk.py

# The oldest supported torch (2.6.0; about 3 GB of CUDA wheels from PyPI, so not part of CI):
# the suite against the in-place build, in its own venv. Its triton (3.2) is older than the
# Triton kernels need, so those tests skip and ops use their C++ / torch paths.
test-torch-min: inplace
	test -x .venv-torch-min/bin/python || $(PYTHON) -m venv .venv-torch-min
	.venv-torch-min/bin/python -m pip --disable-pip-version-check -q install torch==2.6.0 \
	  $$($(PYTHON) scripts/extras.py test,diffusion,bench,replication | tr ' ' '\n' | grep -v '^torch')
	PYTHONPATH=python TRITON_INTERPRET=1 .venv-torch-min/bin/python -m pytest -q tests

# Developer build: the extension modules next to the sources (python/osmos), for
# PYTHONPATH=python runs without reinstalling. Uses build/inplace.
inplace:
	cmake -S . -B build/inplace -G Ninja -DOSMOS_INSTALL_DIR=osmos \
	  -DCMAKE_INSTALL_PREFIX=$(CURDIR)/python -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) \
	  -DPython_EXECUTABLE=$(abspath $(PY))
	cmake --build build/inplace
	cmake --install build/inplace > /dev/null

clean:
	rm -rf build $(VENV) .venv-torch-min python/osmos/*.so python/osmos/triton_kernels
