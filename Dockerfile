# syntax=docker/dockerfile:1
# Multi-stage build: a Rust toolchain builds the release binary; the final image is distroless
# (glibc, CA certificates, no shell, no package manager) and runs as a non-root user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY nats ./nats
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && cp target/release/sse-relay /sse-relay

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sse-relay" \
      org.opencontainers.image.description="NATS JetStream to Server-Sent Events relay with exact resume on any replica" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /sse-relay /usr/local/bin/sse-relay
USER 65532:65532
EXPOSE 8080 9090
ENV RELAY_LISTEN=0.0.0.0:8080 RELAY_ADMIN_LISTEN=0.0.0.0:9090
ENTRYPOINT ["/usr/local/bin/sse-relay"]
CMD ["serve"]
