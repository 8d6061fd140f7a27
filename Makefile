# The two set-up commands the README promises: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench docs clean

# pip shows what it fetches and builds (a first install takes a minute or two); later runs skip this
$(BIN)/gateway: pyproject.toml
	@echo "== installing the gateway and its test tools into $(VENV) =="
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --upgrade pip
	$(BIN)/pip install --progress-bar on -e '.[test]'
	@touch $@

demo: $(BIN)/gateway  ## embedded broker + gateway + sample events, end to end
	$(BIN)/gateway demo

test: $(BIN)/gateway  ## the whole suite; integration tests start the embedded broker themselves
	$(BIN)/ruff check gateway tests
	$(BIN)/pytest -q

$(VENV)/.bench: $(BIN)/gateway
	$(BIN)/pip install --progress-bar on -e '.[test,bench]'
	@touch $@

bench: $(VENV)/.bench  ## the gateway beside passthrough, naive code, Confluent CSFLE and Presidio
	PYTHONPATH=. $(BIN)/python benchmarks/bench.py

docs: $(BIN)/gateway  ## the settings tables from their declarations (gateway/settings.py), then the site in site/
	$(BIN)/python -m gateway.settings docs/reference/settings.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site
