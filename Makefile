# One place for the commands that the README, CI and developers run.
# `make run` and `make test` work on a fresh machine with Python 3.11+ and a Rust toolchain:
# they create .venv, install shovel (building the native module) and its tools, and rebuild
# the native module whenever a Rust source or build file changes. Development builds include
# the fault-injection hooks the crash tests use; `make wheel` (and pip install .) do not.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NATIVE_INPUTS := $(shell find native/src -name '*.rs') native/Cargo.toml Cargo.toml Cargo.lock pyproject.toml
INSTALLED := $(VENV)/.installed

.PHONY: run test test-python test-rust lint fmt bench wheel clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'maturin>=1.9,<2'

$(INSTALLED): $(NATIVE_INPUTS) | $(BIN)/python
	$(BIN)/maturin develop --release --extras dev --features extension-module,fault-injection
	touch $@

run: $(INSTALLED)
	$(BIN)/python -m shovel

test: test-rust test-python

test-rust:
	cargo test --locked --features fault-injection

test-python: $(INSTALLED)
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check shovel tests bench
	$(BIN)/ruff format --check shovel tests bench
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest shovel._native
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo clippy --locked --all-targets --features python,fault-injection -- -D warnings

fmt: $(INSTALLED)
	$(BIN)/ruff format shovel tests bench
	$(BIN)/ruff check --fix shovel tests bench
	cargo fmt

bench: $(INSTALLED)
	$(BIN)/python bench/throughput.py

wheel: | $(BIN)/python
	$(BIN)/maturin build --release --out dist

clean:
	rm -rf $(VENV) target dist shovel/*.so
