# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/pip
ARGS    ?=

.PHONY: demo test bench lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0 -e '.[dev,data,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/worstforget stress --out demo-out $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results.json $(ARGS)
	$(BIN)/python -m benchmarks.accuracy_cost --out docs/ --device cpu
	$(BIN)/python -m benchmarks.report benchmarks/results.json docs/benchmarks.md

lint: $(STAMP)
	$(BIN)/ruff check bilevel unlearning attacks tests benchmarks
	$(BIN)/ruff format --check bilevel unlearning attacks tests benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache
