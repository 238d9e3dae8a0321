# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-js lint bench clean
JS := clients/js
JS_STAMP := $(JS)/node_modules/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/context-manager serve

$(JS_STAMP): $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund
	touch $(JS_STAMP)

# The JS client's build and its own tests (node's test runner against a server from .venv).
# Without npm they are skipped, and said so; under CI=true that is a failure.
test-js: $(STAMP)
	@if command -v npm >/dev/null; then \
		$(MAKE) --no-print-directory $(JS_STAMP) && cd $(JS) && npm run build:dist && npm test; \
	elif [ "$$CI" = true ]; then echo "CI=true and npm is missing" >&2; exit 1; \
	else echo "npm is not installed: the JS client's tests are skipped"; fi

test: $(STAMP) test-js
	$(BIN)/ruff check app tests bench clients/python
	$(BIN)/mypy app clients/python/context_manager_client
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app tests bench clients/python
	$(BIN)/ruff format --check app tests bench clients/python
	$(BIN)/mypy app clients/python/context_manager_client

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
