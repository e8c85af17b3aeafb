#!/usr/bin/env bash
# The container image, with whichever engine works on this machine: docker (with a daemon that
# answers), podman or buildah.
#   scripts/image.sh build   build the image (`make image`; IMAGE, RUST_IMAGE, RUNTIME_IMAGE
#                            override the tag and the base images, e.g. for a registry mirror)
#   scripts/image.sh check   what `make test` runs: build the image and run it where the machine
#                            can; where it cannot, say exactly why (no engine, or the base
#                            images' registries unreachable) and build nothing
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
    if [[ -z $ENGINE ]]; then
      printf 'make image: no container engine: %s\n' "${REASONS[@]}" >&2
      exit 1
    fi
    build
    ;;
  check)
    find_engine
    check_registries
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
