# syntax=docker/dockerfile:1
#
# shovel container image, in two stages:
#   builder  Rust toolchain + Python 3.11 + maturin; compiles the native storage client and
#            packs it with the Python package into one wheel under /dist.
#   runtime  python:3.11-slim with that wheel installed, running as an unprivileged user.
#
# Build from the repository root:   docker build -t shovel:local .
# The build needs network access (crates.io, PyPI) and BuildKit (the default builder).
#
# Both stages are pinned to Debian bookworm on purpose: the wheel is tagged for the glibc of
# the builder, and the runtime must have the same glibc or a newer one.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------
FROM rust:1-slim-bookworm AS builder

# bookworm's python3 is 3.11, the version the runtime stage uses (cp311 wheel tag).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Debian marks its Python as externally managed, so maturin goes into a venv of its own.
RUN python3 -m venv /opt/maturin \
    && /opt/maturin/bin/pip install --no-cache-dir 'maturin>=1.9,<2'

WORKDIR /src

# Dependency manifests first, so that fetching crates is cached until they change. cargo needs
# the library's source file to exist to read the manifest; an empty stand-in will do here and is
# replaced by the real sources below (nothing is compiled before that).
COPY Cargo.toml Cargo.lock ./
COPY native/Cargo.toml native/Cargo.toml
# The workspace's other member, the NATS benchmark's baseline: only its manifest (and an empty
# stand-in), for cargo to read the workspace; the image never builds it.
COPY bench/nats-baseline/Cargo.toml bench/nats-baseline/Cargo.toml
# The crates land in this layer (not in a cache mount), so Docker's layer cache keeps them for
# as long as Cargo.lock is unchanged.
RUN mkdir -p native/src bench/nats-baseline/src \
    && touch native/src/lib.rs bench/nats-baseline/src/main.rs \
    && cargo fetch --locked

# Everything the wheel is made of (see [tool.maturin] in pyproject.toml). README.md is the
# package's readme and must be present.
COPY pyproject.toml README.md ./
COPY native native
COPY shovel shovel

# --locked: build exactly the dependency versions in Cargo.lock.
# The target directory is a cache mount, so incremental rebuilds stay fast; the wheel is written
# outside it.
RUN --mount=type=cache,target=/src/target \
    /opt/maturin/bin/maturin build --release --locked \
        --interpreter python3.11 --out /dist

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can verify it and fsGroup can match.
ARG SHOVEL_UID=10001
ARG SHOVEL_GID=10001
RUN groupadd --system --gid "${SHOVEL_GID}" shovel \
    && useradd --system --uid "${SHOVEL_UID}" --gid shovel \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin shovel

# The wheel is bind-mounted rather than copied, so it leaves no layer behind. Its Python
# dependencies (pydantic, prometheus-client, ...) come from PyPI here.
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install /dist/*.whl

# /data holds segments/, the checkpoint and the lock. It is created and owned by the service
# user before VOLUME, so a fresh Docker named volume starts out writable by that user.
RUN mkdir -p /data && chown "${SHOVEL_UID}:${SHOVEL_GID}" /data
VOLUME /data
WORKDIR /data

# The drain deadline defaults to fit `docker stop`'s default 10 s before SIGKILL (with shovel's
# 5 s margin); compose and Kubernetes raise both together (see deploy/).
ENV SHOVEL_OUTPUT_DIR=/data \
    SHOVEL_METRICS_HOST=0.0.0.0 \
    SHOVEL_GRACE_PERIOD_S=10 \
    SHOVEL_SHUTDOWN_TIMEOUT_S=5

# /metrics, /healthz, /readyz
EXPOSE 9108

USER ${SHOVEL_UID}:${SHOVEL_GID}

# /healthz answers 200 for as long as the process runs, including during the drain. slim has
# no curl, so Python's urllib does the request (urlopen raises on any non-2xx answer).
# This check assumes metrics are enabled (SHOVEL_METRICS_PORT is not 0).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SHOVEL_METRICS_PORT', '9108') + '/healthz', timeout=2)"]

# SIGTERM starts shovel's ordered stop: stop reading, store and fsync everything already read,
# commit the offset, exit 0. A second SIGTERM/SIGINT means "stop waiting for the queue".
STOPSIGNAL SIGTERM

# Exec form, no shell and no init wrapper: Python is PID 1 and gets SIGTERM directly. That is
# safe only because shovel installs its own SIGTERM and SIGINT handlers as its very first step:
# the kernel discards any signal sent to a PID namespace's init process that has no handler
# (SIGKILL and SIGSTOP aside), so without them `docker stop` would do nothing until the kill.
# shovel starts no child processes, so there are no zombies for PID 1 to reap.
#
# `docker stop` waits 10 s before SIGKILL by default, which the ENV defaults above fit. For a
# longer drain, raise all three together, for example
#   docker run --stop-timeout 45 -e SHOVEL_GRACE_PERIOD_S=45 -e SHOVEL_SHUTDOWN_TIMEOUT_S=30 ...
# shovel refuses to start if its deadline does not end 5 s before the grace period.
ENTRYPOINT ["python", "-m", "shovel"]
# No default arguments (and none inherited from the base image): configure with SHOVEL_* variables,
# or append flags such as --log-level debug to `docker run`.
CMD []
