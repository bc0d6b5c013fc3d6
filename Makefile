# Two commands: `make demo` (the main job) and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The tested set: every package pinned (napari, pandas, numpy, Qt bindings, the torch pair...).
# pyproject keeps loose ranges for your own environments.
CONSTRAINTS := requirements/constraints.txt
# CPU-only machines: this pair imports together and is what pip finds on disk here.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
LATEST := .venv-latest
PYTEST = if [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null; then \
	echo "no DISPLAY: running the tests under xvfb-run"; xvfb-run -a $(1) -m pytest -q; else $(1) -m pytest -q; fi

.PHONY: venv demo test lint bench test-latest lock clean

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m napari_imedsam.demo

# GUI tests need a display: without one, they run under Xvfb (xvfb-run) when it is installed.
test: venv
	$(PY) -m ruff check napari_imedsam src_train tests benchmarks
	@$(call PYTEST,$(PY))

# The newest versions pip can resolve (only the CPU torch pair held), in a separate venv: a breaking
# napari / pandas / numpy / Qt release shows up here first.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade $(TORCH_PINS) -e ".[test]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -Ei '^(napari|pandas|numpy|pyqt6|torch|magicgui)=='
	$(LATEST)/bin/python -m ruff check napari_imedsam src_train tests benchmarks
	@$(call PYTEST,$(LATEST)/bin/python)

# Move the pins forward: test the newest set, then record it as the constraints.
lock: test-latest
	{ echo "# What 'make' installs: the exact set the test suite passed with (pip freeze, $$(date +%F))."; \
	  echo "# Update: make lock (re-resolves the newest versions, runs the tests, rewrites this file)."; \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | grep -v '^napari-imedsam'; } > $(CONSTRAINTS)

bench: venv
	$(PY) benchmarks/bench_decode.py

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info
