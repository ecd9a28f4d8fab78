# Onramp: `make run` starts the whole product locally; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export VAR_DIR ?= $(CURDIR)/var

.PHONY: run test lint bench clean browsers

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime pyproject.toml
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VAR_DIR)/secret_key:
	mkdir -p $(VAR_DIR)
	$(PY) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

# Debian's Chromium for the Playwright browser tests (Playwright's own download cannot run here).
browsers:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

run: $(VENV)/.runtime $(VAR_DIR)/secret_key
	@export PATH="$(CURDIR)/$(VENV)/bin:$$PATH" SECRET_KEY=$$(cat $(VAR_DIR)/secret_key) HTTPS=0 DEBUG=0 WEB_PORT=$(PORT); \
	$(PY) manage.py migrate --no-input -v0 && \
	$(PY) manage.py collectstatic --no-input -v0 && \
	$(PY) manage.py seed_demo && \
	echo "" && echo "  Onramp is starting at http://127.0.0.1:$(PORT)/  (Ctrl-C stops everything)" && echo "" && \
	exec $(VENV)/bin/honcho -f Procfile start

test: $(VENV)/.test browsers
	$(PY) -m pytest

# Benchmarks print their figures; run them against a scratch PostgreSQL database:
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/onramp_bench make bench
BENCHES ?= bench_drain bench_ingest bench_catchup bench_memory bench_fairness bench_resize bench_dashboard
bench: $(VENV)/.test
	@test -n "$$DATABASE_URL" || (echo "set DATABASE_URL to a scratch PostgreSQL database" && exit 2)
	@export SECRET_KEY=$${SECRET_KEY:-$$($(PY) -c "import secrets; print(secrets.token_urlsafe(50))")} HTTPS=0; \
	$(PY) manage.py migrate --no-input -v0 && \
	$(PY) manage.py collectstatic --no-input -v0 && \
	for b in $(BENCHES); do echo "== $$b"; $(PY) manage.py $$b || exit 1; done

lint: $(VENV)/.test
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VAR_DIR) staticfiles
