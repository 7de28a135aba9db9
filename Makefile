# The two commands a user needs: `make demo` and `make test`. Each creates .venv if missing and
# installs the project from its own files first, so they work on a machine with only Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck unit bench bench-scaling bench-spot bench-backends bench-serve clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(PY) examples/demo.py

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

typecheck: $(VENV)/.dev-installed
	$(VENV)/bin/mypy

unit: $(VENV)/.dev-installed
	$(PY) -m pytest -q

test: lint typecheck unit

# Issue 13's table (every row beside its peer, idle and busy) into bench/RESULTS.md, then the
# detailed pool comparison.
bench: $(VENV)/.dev-installed
	mkdir -p bench/out
	$(PY) bench/perf13.py --write bench/RESULTS.md
	$(PY) bench/pool_bench.py --json bench/out/pool_bench.json

bench-scaling: $(VENV)/.dev-installed
	$(PY) bench/scaling.py

# Issue 16's table: spot, the cost cap and regions in the simulator, against on-demand auto.
bench-spot: $(VENV)/.dev-installed
	$(PY) bench/spot.py --write bench/RESULTS.md

bench-backends: $(VENV)/.dev-installed
	$(PY) bench/backends.py

# shoal serve against Ray Serve and a process-pool app under open-loop HTTP load.
bench-serve: $(VENV)/.dev-installed
	$(PY) -m pip install --quiet -e '.[bench-serve]'
	$(PY) bench/serve_bench.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
