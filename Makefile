# Wattle: `make run` starts the portal with a local vLLM simulator; `make test` runs lint and the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
SIMULATOR_PORT ?= 8001
export PORT SIMULATOR_PORT

.PHONY: run test lint bench venv venv-dev browser clean vllm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@test -f .env || printf '# Local development defaults for manage.py (git-ignored; the environment wins).\nDEBUG=true\n' > .env

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

venv: $(VENV)/.runtime
venv-dev: $(VENV)/.dev

## run: set up and run the portal on its embedded default (SQLite, in-process Redis stand-in, simulator)
run: venv
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py devserver --port $(PORT) --simulator-port $(SIMULATOR_PORT)

## test: set up, lint (ruff, the import-linter layering contracts), and run the whole suite (uses DATABASE_URL / REDIS_URL when set)
test: venv-dev browser
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	DEBUG=true $(BIN)/python manage.py makemigrations --check --dry-run >/dev/null
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

## browser: Debian's chromium for the Playwright tests (installed when missing and we may use apt)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); \
	  else echo "chromium is missing: browser tests will fail (install Debian's chromium)"; fi; }

## bench: the load scenarios of PERFORMANCE.md (needs Redis: REDIS_URL or a local redis-server)
bench: venv-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

## vllm: serve a Mistral model with vLLM on this host's GPU (requirements-gpu.txt; flags: docs/deploy.md, "vLLM")
VLLM_VENV ?= .venv-gpu
VLLM_MODEL ?= mistralai/Mistral-7B-Instruct-v0.3
VLLM_PORT ?= 8001
VLLM_MAX_MODEL_LEN ?= 32768
VLLM_MAX_NUM_SEQS ?= 128
VLLM_TP ?= 1
$(VLLM_VENV)/.gpu: requirements-gpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet -r requirements-gpu.txt
	touch $@
vllm: $(VLLM_VENV)/.gpu
	$(VLLM_VENV)/bin/vllm serve $(VLLM_MODEL) --served-model-name $(VLLM_MODEL) --port $(VLLM_PORT) \
	  --tokenizer-mode mistral --config-format mistral --load-format mistral \
	  --tool-call-parser mistral --enable-auto-tool-choice --enable-prefix-caching \
	  --max-model-len $(VLLM_MAX_MODEL_LEN) --max-num-seqs $(VLLM_MAX_NUM_SEQS) --tensor-parallel-size $(VLLM_TP)

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
