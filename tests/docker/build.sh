#!/usr/bin/env bash
# Builds the repository's Dockerfile on a machine with no container registry and tags
# the result TAG. tests/docker/README.md says why it works this way.
#
#   tests/docker/build.sh TAG                 # the runtime stage + this host's release binaries
#   tests/docker/build.sh --from-source TAG   # the default target: the builder stage compiles
#
# 1. The base images the Dockerfile names are made locally when absent (cached by tag):
#    debian:bookworm-slim from `debootstrap --variant=minbase bookworm`, slimmed as
#    Debian's slim images are; with --from-source also rust:1-bookworm (the same root
#    filesystem + build-essential, and this host's rustup toolchain copied in).
# 2. Default mode: `cargo build --release --bins` on the host (incremental; honours
#    CARGO_TARGET_DIR; WARREN_DOCKER_PROFILE=dev takes the debug build instead), the
#    three binaries stripped of debug info into a FROM-scratch image
#    (warren-host-binaries:latest), and the Dockerfile's `prebuilt` target built with
#    BINARIES_IMAGE pointing at it. The classic builder (the only one on a Docker
#    without buildx) builds every stage before the target and none after it, so the
#    Rust builder stage, which comes after `prebuilt`, is not run.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), WARREN_DOCKER_PROFILE,
# WARREN_DOCKER_BUILD_OPTS (more `docker build` options for --from-source, e.g.
# --cpu-shares 256 to let other work on the machine go first).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

from_source=0
if [ "${1:-}" = "--from-source" ]; then from_source=1; shift; fi
TAG="${1:?usage: tests/docker/build.sh [--from-source] TAG}"

RUNTIME_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1-bookworm
BINARIES_IMAGE=warren-host-binaries:latest
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The classic builder: the Docker CLI refuses DOCKER_BUILDKIT=1 without buildx, and a
# CLI that has buildx would otherwise use BuildKit (which also works with this file).
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"

log() { printf 'docker/build: %s\n' "$*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi

# debootstrap a bookworm root into $1 (minbase: essential packages + apt).
bootstrap() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "apt-get install debootstrap"
        $SUDO apt-get install -y -q debootstrap >/dev/null 2>&1 \
            || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q debootstrap >/dev/null; }
    fi
    log "debootstrap --variant=minbase bookworm ($MIRROR)"
    $SUDO debootstrap --variant=minbase bookworm "$1" "$MIRROR" >"$1.log" 2>&1 \
        || { tail -n 20 "$1.log" >&2; return 1; }
    # As Debian's slim images (debuerreotype-slimify): no docs, man pages or locales,
    # now or from later apt-get installs; no apt lists or caches.
    $SUDO tee "$1/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    $SUDO find "$1/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    $SUDO rm -rf "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/var/cache/apt/*.bin \
        "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/var/log/*.log
    $SUDO find "$1/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    echo "deb $MIRROR bookworm main" | $SUDO tee "$1/etc/apt/sources.list" >/dev/null
}

import_root() { # dir tag
    $SUDO tar -C "$1" -c . | docker import --change 'CMD ["bash"]' - "$2" >/dev/null
}

work="$(mktemp -d)"
trap '$SUDO rm -rf "$work"' EXIT

if ! have_image "$RUNTIME_IMAGE"; then
    t0=$SECONDS
    bootstrap "$work/root"
    import_root "$work/root" "$RUNTIME_IMAGE"
    log "made $RUNTIME_IMAGE locally in $((SECONDS - t0)) s"
fi

if [ "$from_source" = 1 ]; then
    if ! have_image "$RUST_IMAGE"; then
        t0=$SECONDS
        [ -d "$work/root" ] || bootstrap "$work/root"
        log "$RUST_IMAGE: build-essential, and the host's rustup toolchain"
        $SUDO chroot "$work/root" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends build-essential ca-certificates pkg-config && rm -rf /var/lib/apt/lists/*' >"$work/apt.log" 2>&1 \
            || { tail -n 20 "$work/apt.log" >&2; exit 1; }
        # The host's CA bundle, so that cargo in the image reaches crates.io from any
        # network the host's cargo does (e.g. through a TLS-inspecting proxy).
        $SUDO cp /etc/ssl/certs/ca-certificates.crt "$work/root/etc/ssl/certs/ca-certificates.crt"
        toolchain="$(rustup show active-toolchain | cut -d' ' -f1)"
        rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
        cargo_home="${CARGO_HOME:-$HOME/.cargo}"
        $SUDO mkdir -p "$work/root/usr/local/rustup/toolchains" "$work/root/usr/local/cargo/bin"
        $SUDO cp -a "$rustup_home/toolchains/$toolchain" "$work/root/usr/local/rustup/toolchains/"
        $SUDO cp -a "$cargo_home/bin/rustup" "$work/root/usr/local/cargo/bin/"
        for p in cargo rustc rustdoc cargo-fmt cargo-clippy rustfmt clippy-driver; do
            $SUDO ln -sf rustup "$work/root/usr/local/cargo/bin/$p"
        done
        printf 'version = "12"\ndefault_toolchain = "%s"\n' "$toolchain" \
            | $SUDO tee "$work/root/usr/local/rustup/settings.toml" >/dev/null
        $SUDO tar -C "$work/root" -c . | docker import \
            --change 'ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' - "$RUST_IMAGE" >/dev/null
        log "made $RUST_IMAGE locally ($toolchain) in $((SECONDS - t0)) s"
    fi
    log "docker build -t $TAG . (the default target: compiles in the builder stage)"
    # shellcheck disable=SC2086 # options, split on purpose
    docker build ${WARREN_DOCKER_BUILD_OPTS:-} -t "$TAG" .
    exit 0
fi

# The host's binaries: release, as the image ships; WARREN_DOCKER_PROFILE=dev takes the
# debug build `cargo test` already made instead (faster after a source change, but not
# what users run).
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
profile="${WARREN_DOCKER_PROFILE:-release}"
case "$profile" in
    release) out=release ;;
    dev) out=debug ;;
    *) log "WARREN_DOCKER_PROFILE must be release or dev, not '$profile'"; exit 64 ;;
esac
log "cargo build --profile $profile --bins"
cargo build --profile "$profile" --locked --bins -q
mkdir -p "$work/bin"
for b in warren warrenctl warren-perf; do
    # The same as the builder stage does to its binaries.
    strip --strip-debug -o "$work/bin/$b" "$target_dir/$out/$b"
done
old_binaries="$(docker image inspect -f '{{.Id}}' "$BINARIES_IMAGE" 2>/dev/null || true)"
printf 'FROM scratch\nCOPY warren warrenctl warren-perf /usr/local/bin/\n' >"$work/Dockerfile"
docker build -q -t "$BINARIES_IMAGE" -f "$work/Dockerfile" "$work/bin" >/dev/null
log "docker build --target prebuilt --build-arg BINARIES_IMAGE=$BINARIES_IMAGE -t $TAG ."
old_tag="$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)"
docker build -q --target prebuilt --build-arg BINARIES_IMAGE="$BINARIES_IMAGE" -t "$TAG" . >/dev/null
# What the previous run left untagged (the old binaries and the image built on them);
# an id still tagged (nothing changed) stays.
for pair in "$old_tag|$TAG" "$old_binaries|$BINARIES_IMAGE"; do
    id="${pair%%|*}" name="${pair#*|}"
    [ -n "$id" ] || continue
    [ "$id" = "$(docker image inspect -f '{{.Id}}' "$name")" ] || docker image rm "$id" >/dev/null 2>&1 || true
done
log "$TAG: $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.1f MB", $1/1e6}')"
