# syntax=docker/dockerfile:1
# Multi-stage build: a Rust toolchain builds the release binary; the final image is distroless
# (glibc, CA certificates, no shell, no package manager) and runs as a non-root user.
# Multi-arch (linux/amd64, linux/arm64): the build stage runs on the builder's own platform and
# cross-compiles for the target's, so arm64 is not built under emulation. Base images are
# arguments so a registry mirror can stand in (`make image RUST_IMAGE=... RUNTIME_IMAGE=...`).
# BINARY_FROM=from-host takes a release binary built outside (target/release/sse-relay) instead
# of the build stage, which is then skipped: how scripts/image.sh builds on a machine that can
# pull no base image (with a local runtime base made of the binary's own libraries).
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY_FROM=from-source

FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS build
ARG TARGETARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# The Rust target for the image's architecture; a C cross-compiler (ring) when it is not the
# builder's own. Debian's cross toolchain follows the base image's point release, so it is not
# pinned (a pinned version disappears from the archive at the next point release).
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# hadolint ignore=DL3008
RUN case "${TARGETARCH:-amd64}" in \
      amd64) target=x86_64-unknown-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && echo "$target" > /rust-target \
    && if [ "$(uname -m)" != "${target%%-*}" ]; then \
         [ "$target" = aarch64-unknown-linux-gnu ] || { echo "cross-compiling to $target is only set up from x86_64" >&2; exit 1; }; \
         apt-get update \
         && apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
         && rm -rf /var/lib/apt/lists/* \
         && rustup target add "$target"; \
       fi
# Dependencies first, so source edits reuse the cached dependency layer. The workspace's test
# kit and the benchmark are never built here, but cargo reads the targets the manifests declare
# (empty stand-ins, kept for the second build).
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml ./testkit/
RUN mkdir src testkit/src benches && echo 'fn main() {}' | tee src/main.rs benches/load.rs >/dev/null \
    && touch src/lib.rs testkit/src/lib.rs \
    && cargo build --release --locked --package sse-relay --target "$(cat /rust-target)" \
    && rm -rf src
COPY nats ./nats
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --package sse-relay --target "$(cat /rust-target)" \
    && cp "target/$(cat /rust-target)/release/sse-relay" /sse-relay

FROM build AS from-source

FROM scratch AS from-host
COPY target/release/sse-relay /sse-relay

# hadolint ignore=DL3006
FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="sse-relay" \
      org.opencontainers.image.description="NATS JetStream to Server-Sent Events relay with exact resume on any replica" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sse-relay/sse-relay"
COPY --from=binary /sse-relay /usr/local/bin/sse-relay
USER 65532:65532
EXPOSE 8080 9090
ENV RELAY_LISTEN=0.0.0.0:8080 RELAY_ADMIN_LISTEN=0.0.0.0:9090
ENTRYPOINT ["/usr/local/bin/sse-relay"]
CMD ["serve"]
