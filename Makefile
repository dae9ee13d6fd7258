# execgate developer tasks. `make help` lists them.
# Everything runs in a project-local virtualenv (.venv) that `make` creates.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deps-installed
TEST_DEPS := maturin>=1.7,<2 pytest>=8 ruff>=0.6 mypy>=1.10 regopy>=1.5 pydantic>=2 cryptography>=42 pynacl>=1.5 langchain>=1.0 langgraph>=1.0 langchain-tests>=1.0 openai-agents>=0.24 pydantic-ai-slim>=2.68 google-adk>=2.13 mcp>=2.3,<3 mcp-server-time>=2026.10 hypothesis>=6 pytest-timeout>=2 h11>=0.16 opentelemetry-api>=1.27 opentelemetry-sdk>=1.27 psycopg[binary]>=3.2

.DEFAULT_GOAL := help
.PHONY: help develop release test test-rust test-python lint fmt bench demo clean fuzz-smoke fuzz servers strace

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(foreach d,$(TEST_DEPS),"$(d)")
	touch $(STAMP)

develop: $(STAMP) ## build the extension (debug) into .venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop --quiet

release: $(STAMP) ## build the extension (release, fat LTO) into .venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop --quiet --release

test: test-rust test-python ## install test deps, build, run cargo test and pytest

test-rust: ## Rust unit and integration tests of the pure core (built without Python)
	cargo test --quiet --no-default-features

test-python: develop servers strace ## pytest against the freshly built extension
	$(BIN)/pytest -q

# The servers the tests start themselves on free ports and unix sockets in temporary
# directories (tests/redis_server.py, tests/postgres_server.py), from Debian's packages
# when missing; quiet and idempotent. Root, or sudo. Where apt is not available the tests
# that need a missing server are skipped (with CI=true they fail).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
servers: ## install the servers the tests need (Debian: redis-server, postgresql) if missing
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || \
	  missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "not installed:$$missing (no apt-get): the tests needing them are skipped (CI=true: fail)"; \
	  exit 0; \
	fi; \
	echo "installing$$missing (apt)"; \
	$(SUDO) apt-get update -qq >/dev/null && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	  $$missing >/dev/null

# The crash tests kill a writer at a chosen system call (strace -e inject).
strace: ## install strace (Debian's package) for the crash tests, if missing
	@command -v strace >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing strace (apt)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq >/dev/null && \
		apt-get install -y -qq --no-install-recommends strace >/dev/null; \
	else \
		echo "strace is not installed: the crash-at-every-step tests will be skipped"; \
	fi

lint: develop ## clippy, rustfmt, ruff, mypy and stubtest
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy python/execgate
	$(BIN)/python -m mypy.stubtest execgate._core

fuzz-smoke: ## run each fuzz target (tests/fuzz.rs) briefly over its seed corpus and random inputs
	cargo test --quiet --no-default-features --test fuzz

# Stable toolchain: with --sanitizer none cargo-fuzz passes only stable rustc flags
# (-Cpasses=sancov-module, -Cllvm-args=...). --codegen-units 16 overrides its
# one-unit default, which with the instrumented regorus made the build take an hour.
FUZZ_TARGET  ?= verify_log
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := --sanitizer none --codegen-units 16
fuzz: ## coverage-guided libFuzzer run of one target: make fuzz FUZZ_TARGET=bundle FUZZ_SECONDS=1800
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	mkdir -p fuzz/corpus/$(FUZZ_TARGET)
	cd fuzz && cargo fuzz run $(FUZZ_BUILD) $(FUZZ_TARGET) corpus/$(FUZZ_TARGET) \
		../tests/fuzz_corpus/$(FUZZ_TARGET) -- -max_total_time=$(FUZZ_SECONDS)

fmt: $(STAMP) ## format Rust and Python sources
	cargo fmt
	$(BIN)/ruff format python tests benches

bench: release servers ## criterion bench of the core, then the Python benchmarks
	cargo bench --bench core
	$(BIN)/python benches/bench.py
	$(BIN)/python benches/bench_fleet.py

demo: develop ## run `execgate demo` from the development build
	$(BIN)/execgate demo

clean: ## remove build products and the virtualenv
	cargo clean
	rm -rf $(VENV) python/execgate/*.so
