#!/usr/bin/env bash
# Prepares this machine to build and run the real shovel image, then builds it as
# localhost/shovel:test from the repository's Dockerfile, unmodified.
# (Background and the reasons for each step: design/CONTAINER.md.)
#
# Idempotent: packages, the podman configuration and the base-image stand-ins are only made
# when missing; the shovel image itself is always rebuilt from the current source.
#
#   deploy/container/setup.sh            everything
#   SHOVEL_IMAGE=NAME deploy/container/setup.sh    another tag for the shovel image
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
IMAGE="${SHOVEL_IMAGE:-localhost/shovel:test}"
# The names the Dockerfile's FROM lines ask for. No image registry is reachable from here, so
# these are local stand-ins; podman resolves the short names to localhost/ images first.
DEBIAN_BASE=localhost/debian:bookworm-slim
RUST_BASE=localhost/rust:1-slim-bookworm
PYTHON_BASE=localhost/python:3.11-slim-bookworm
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf 'setup: %s\n' "$*" >&2; }

# Microseconds since the epoch, from bash itself (no date/bc round trips).
now_us() { echo "${EPOCHREALTIME/./}"; }
# Prints microseconds as seconds with one decimal.
seconds() { printf '%d.%d' $(($1 / 1000000)) $(($1 % 1000000 / 100000)); }

# Runs "$@" and reports how long it took: the whole run should take ~3-5 min cold, and knowing
# which phase is slow is the first question when it does not.
phase() {
    local name=$1 start
    shift
    start=$(now_us)
    "$@"
    log "$(printf 'phase %-40s %6ss' "$name" "$(seconds $(($(now_us) - start)))")"
}

# Temporary directories (a debootstrap rootfs holds device nodes and root-owned files): removed
# on any exit, failures included.
TMP_DIRS=()
cleanup() { ((${#TMP_DIRS[@]} == 0)) || rm -rf "${TMP_DIRS[@]}"; }
trap cleanup EXIT

if [[ $EUID -ne 0 ]]; then
    # Rootful podman, apt-get and debootstrap all need root. The pytest module skips with the
    # same reason, so `make container-test` says plainly that nothing was checked.
    log "skipped: not root (rootful podman, apt-get and debootstrap need root)"
    exit 0
fi

install_packages() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    # The test module uses fsfreeze/losetup (util-linux) and mkfs.ext4 (e2fsprogs), which a
    # minimal Debian may lack.
    command -v fsfreeze >/dev/null || missing+=(util-linux)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    if ((${#missing[@]} == 0)); then
        log "packages present"
        return
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_containers_conf() {
    local conf=/etc/containers/containers.conf want
    # - The sandbox lacks CAP_SYS_RESOURCE, so podman's default ulimits (1048576) cannot be
    #   set; these are the highest that work. A --ulimit on a command line replaces this list.
    # - crun refuses this host's hybrid cgroup layout; runc accepts it.
    want='# Written by shovel deploy/container/setup.sh (see design/CONTAINER.md).
[containers]
# The sandbox lacks CAP_SYS_RESOURCE: podman'"'"'s default ulimits (1048576) cannot be set.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
# crun 1.8 refuses this host'"'"'s hybrid cgroup layout; runc accepts it.
runtime = "runc"'
    if [[ -f $conf && "$(cat "$conf")" == "$want" ]]; then
        log "$conf is up to date"
        return
    fi
    mkdir -p /etc/containers
    if [[ -f $conf ]]; then
        # Someone else's configuration: keep it where it can be found again.
        cp -p "$conf" "$conf.before-shovel.$(date +%s)"
        log "kept the previous $conf as $conf.before-shovel.*"
    fi
    printf '%s\n' "$want" >"$conf"
    log "wrote $conf"
}

# The mirror the host uses (the only one reachable): the first URIs line of its deb822 sources.
host_mirror() {
    awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources
}

make_debian_base() {
    if podman image exists "$DEBIAN_BASE"; then
        log "$DEBIAN_BASE exists"
        return
    fi
    local rootfs
    rootfs=$(mktemp -d /var/tmp/shovel-rootfs.XXXXXX)
    TMP_DIRS+=("$rootfs")
    log "debootstrap bookworm from $(host_mirror)"
    debootstrap --variant=minbase bookworm "$rootfs" "$(host_mirror)" >/dev/null
    # debootstrap writes a sources.list with the main suite only; the host's deb822 file also
    # names bookworm-updates and bookworm-security (where rustc-web comes from).
    rm -f "$rootfs/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
    # What the official Debian images carry: apt deletes downloaded .debs after each install,
    # so no layer keeps 100-250 MB of archives; no translations either.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    # An imported image has no Env at all; RUN lines need a PATH.
    tar --numeric-owner -C "$rootfs" -c . |
        podman import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' \
            - "$DEBIAN_BASE" >/dev/null
    log "made $DEBIAN_BASE"
}

# Builds a stand-in from a Containerfile given on stdin (no context is needed).
build_stand_in() {
    local name=$1
    if podman image exists "$name"; then
        log "$name exists"
        cat >/dev/null
        return
    fi
    local dir
    dir=$(mktemp -d)
    TMP_DIRS+=("$dir")
    cat >"$dir/Containerfile"
    podman build --quiet --format docker -t "$name" -f "$dir/Containerfile" "$dir" >/dev/null
    log "made $name"
}

make_python_base() {
    # python:3.11-slim-bookworm runs `python` and a bare `pip install` as root. bookworm's
    # python3 is 3.11.2 with glibc 2.36; `python` comes only from python-is-python3, and pip
    # refuses to install into an "externally managed" interpreter unless that marker is gone.
    build_stand_in "$PYTHON_BASE" <<EOF
FROM $DEBIAN_BASE
RUN apt-get update \\
    && apt-get install -y --no-install-recommends \\
        python3 python3-pip python-is-python3 ca-certificates \\
    && rm -rf /var/lib/apt/lists/* \\
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \\
    && ln -s /usr/bin/pip3 /usr/local/bin/pip
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
}

make_rust_base() {
    # Debian's plain rustc is 1.63, too old for the lockfile; rustc-web (bookworm-security)
    # is current. The official image keeps cargo's home in /usr/local/cargo.
    build_stand_in "$RUST_BASE" <<EOF
FROM $DEBIAN_BASE
RUN apt-get update \\
    && apt-get install -y --no-install-recommends \\
        gcc libc6-dev rustc-web cargo-web ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
}

build_shovel_image() {
    # --no-cache: buildah can reuse a stale layer for `RUN --mount=type=bind,from=builder`, so
    #   an edited source would silently ship the old wheel. The cargo target cache mount
    #   survives it, so a rebuild stays short.
    # --format docker: the OCI format drops HEALTHCHECK, which the tests check.
    # The CA bundle: outbound TLS is re-signed by a local CA only the host trusts; pip and
    #   cargo inside the build need it.
    podman build --no-cache --format docker \
        -v "$CA_BUNDLE:$CA_BUNDLE:ro" \
        -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO"
    # Intermediate images of earlier builds (the builder stage) are untagged: drop them so
    # repeated runs do not fill the disk.
    podman image prune -f >/dev/null
}

total_start=$(now_us)
phase packages install_packages
phase containers.conf write_containers_conf
phase "base $DEBIAN_BASE" make_debian_base
phase "base $PYTHON_BASE" make_python_base
phase "base $RUST_BASE" make_rust_base
phase "build $IMAGE" build_shovel_image
log "setup took $(seconds $(($(now_us) - total_start)))s"
