# Set-up and the main job. `make install` then `make test`; `make demo` runs the whole system.
SHELL := /bin/bash
VENV ?= .venv
# python3.12: on PATH, or a pyenv-installed 3.12 (pyenv's shim fails when 3.12 is not the active version).
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
BIN := $(VENV)/bin
DEMO_DIR ?= demo_output

.PHONY: install h100-aot lock test demo clean

# The CUDA PJRT plugin, outside sys.path: mosaic_jax.deviceless compiles for an H100 with it on any
# machine (kernel register/SMEM reports, device memory of train and forecast steps); jax never loads it.
H100_AOT_PACKAGES := jax-cuda13-pjrt==0.11.2 jax-cuda13-plugin==0.11.2

install:
	@test -n "$(PYTHON)" || { echo "error: python3.12 not found; install it or run 'make install PYTHON=/path/to/python3.12'" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	$(MAKE) --no-print-directory h100-aot
	@echo "installed into $(VENV): activate with 'source $(BIN)/activate'"

h100-aot:
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/h100-aot $(H100_AOT_PACKAGES)

# constraints.txt: setup.cfg's pins resolved in a fresh venv, every package pinned (what CI tests).
lock:
	@test -n "$(PYTHON)" || { echo "error: python3.12 not found; run 'make lock PYTHON=/path/to/python3.12'" >&2; exit 1; }
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet --upgrade pip
	$(VENV)-lock/bin/python -m pip install --quiet -e '.[test]'
	{ sed -n '/^#/p' constraints.txt; $(VENV)-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt && rm -rf $(VENV)-lock

test:
	$(BIN)/python -m pytest -n 2 --durations=15

demo:
	$(BIN)/python -m mosaic_jax.cli demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info $(DEMO_DIR)
