# zsadlab - two commands do all the set-up on a fresh clone (Python 3.11 + pip):
#   make notebooks   execute every notebook (profile auto) into build/notebooks/, figures into figures/
#   make test        the whole test suite: notebook regression (nbval + result tables) and the full-size dry run
#                    (random real-size weights, about a minute and 4.4 GB) included
#   make test-cpus   tests/parity + tests/notebooks under every CPU kernel x OMP_NUM_THREADS 1, 2
#   make baselines   regenerate the notebook regression: baselines (nbval) and references (numbers)
# VENV=/path/to/venv uses an existing environment as it is (nothing is installed into it).
PYTHON   ?= $(shell command -v python3.11 || command -v python3)
VENV     ?= .venv
PY       := $(VENV)/bin/python
ifeq ($(VENV),.venv)
STAMP    := $(VENV)/.installed
else
STAMP    :=
endif
PROFILE  ?= auto
# this checkout's zsadlab, also in the notebook kernels, whichever environment runs it
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# the notebook regression: nbval on tests/notebooks/baselines/ in this environment's kernel
NBVAL    := --nbval --nbval-current-env

.PHONY: all install test test-fast test-cpus test-fullsize notebooks baselines bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

ifneq ($(STAMP),)
# Re-install when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[notebooks,dev]"
	touch $(STAMP)
endif

install: $(STAMP)

test: $(STAMP)
	ZSADLAB_FULLSIZE=1 $(PY) -m pytest -q $(NBVAL)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-cpus: $(STAMP)
	$(PY) tests/cpu_matrix.py
# The full profile's backbones from random real-size weight files (minutes, several GB of memory).
test-fullsize: $(STAMP)
	ZSADLAB_FULLSIZE=1 $(PY) -m pytest -q -m fullsize tests/test_fullsize.py

notebooks: $(STAMP)
	$(PY) -m zsadlab.run_notebooks --profile $(PROFILE) --out build/notebooks --figures figures $(NOTEBOOKS)

baselines: $(STAMP)
	$(PY) -m zsadlab.run_notebooks --profile smoke --baselines tests/notebooks/baselines \
		--references tests/notebooks/references $(NOTEBOOKS)

bench: $(STAMP)
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_anomalyclip.py
	$(PY) benchmarks/bench_inctrl.py
	$(PY) benchmarks/bench_export.py --threads 1

clean:
	rm -rf build figures/*/ .pytest_cache

include mk/course.mk
