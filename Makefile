# Two commands: `make demo` (the main job) and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned pair that imports together on a CPU-only machine; pyproject keeps loose ranges for users.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[test]" $(TORCH_PINS)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m napari_imedsam.demo

# GUI tests need a display: without one, they run under Xvfb (xvfb-run) when it is installed.
test: venv
	$(PY) -m ruff check napari_imedsam src_train tests benchmarks
	@if [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null; then \
		echo "no DISPLAY: running the tests under xvfb-run"; xvfb-run -a $(PY) -m pytest -q; \
	else $(PY) -m pytest -q; fi

bench: venv
	$(PY) benchmarks/bench_decode.py

clean:
	rm -rf $(VENV) build *.egg-info
