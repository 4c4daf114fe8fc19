# The interface to Tidings. CI runs the same targets (`.ci/run`).
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.cargo/bin:$(PATH)

STACK := deploy/dev/stack.sh
TEST_DB ?= postgres://postgres@127.0.0.1:5432/tidings_test

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install what the stack needs (tansu via cargo, PostgreSQL via apt if missing)
	@$(STACK) deps

.PHONY: up
up: ## start PostgreSQL and tansu if they are not running
	@$(STACK) up

.PHONY: down
down: ## stop the tansu this project started
	@$(STACK) down

.PHONY: build
build: ## build everything
	cargo build --workspace --all-targets

.PHONY: run
run: ## start the stack and the services; prints where to look
	@deploy/dev/run.sh

.PHONY: lint
lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

.PHONY: test
test: ## start the stack, then run every test (unit + integration)
	@# The suite's shared broker forgets on restart (tests make their own durable ones).
	@TIDINGS_DEV_KAFKA_STORAGE=$${TIDINGS_DEV_KAFKA_STORAGE:-memory} $(STACK) up
	@$(STACK) browser
	@$(STACK) s3
	@psql "$(TEST_DB)" -qtAc "SELECT 'DROP SCHEMA \"' || nspname || '\" CASCADE;' FROM pg_namespace WHERE nspname LIKE 't\_%'" | PGOPTIONS='-c client_min_messages=warning' psql "$(TEST_DB)" -q >/dev/null
	@# The chaos test runs alone after the rest: its load would be every other test's noise.
	@# It runs the services' binaries, which a test run does not necessarily build.
	cargo build --workspace --bins --quiet
	eval "$$($(STACK) env)"; DATABASE_URL=$(TEST_DB) cargo nextest run --workspace --no-fail-fast -E 'not binary(chaos)' \
		&& DATABASE_URL=$(TEST_DB) cargo nextest run -p tidings-tests -E 'binary(chaos)'

.PHONY: chaos
chaos: ## faults under steady load for CHAOS_SECONDS (120): counts lost and duplicated notifications
	@TIDINGS_DEV_KAFKA_STORAGE=$${TIDINGS_DEV_KAFKA_STORAGE:-memory} $(STACK) up
	cargo build --workspace --bins --quiet
	eval "$$($(STACK) env)"; DATABASE_URL=$(TEST_DB) TIDINGS_CHAOS_SECONDS=$${CHAOS_SECONDS:-120} \
		cargo nextest run -p tidings-tests --no-capture -E 'binary(chaos)' 2>&1 | grep -E '^chaos|^ +(PASS|FAIL) \[|panicked'

.PHONY: bench
bench: up ## benchmarks against the real stack (see README, Performance); BENCH=ticket|email|push|portal for one
	eval "$$($(STACK) env)"; for b in $${BENCH:-ticket email push portal}; do bench/$$b.sh || exit 1; done

.PHONY: fmt
fmt: ## format the code
	cargo fmt --all
