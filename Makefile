# The two commands of the README: `make demo` and `make test`; `make test-unit` runs the
# pure tests (no tracer, real data, servers or root) in seconds.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-unit setup bench lint man clean

demo: setup
	$(BIN)/parrot_cvmfs demo

test: setup
	$(BIN)/python -m pytest -q

UNIT := not tracer and not userland and not real_data and not nginx and not squid and not unprivileged and not slow and not fuzz
test-unit: setup
	$(BIN)/python -m pytest -q -m "$(UNIT)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.py csrc/*/*.c csrc/*/*.h)
	sh .ci/system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

bench: setup
	$(BIN)/python bench/bench_client.py --synthetic

lint: setup
	$(BIN)/ruff check .

# the man pages, made from the commands' help (tests/test_parrot_habits.py checks them)
man: setup
	$(BIN)/python -m parrot_cvmfs.commands.manpage man

clean:
	rm -rf $(VENV) build *.egg-info parrot_cvmfs/_core*.so
