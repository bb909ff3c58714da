# syntax=docker/dockerfile:1
# pgwarden: one static-ish binary for the proxy sidecar, the injector webhook and the CLI.
#   docker build -t ghcr.io/pgwarden/pgwarden:0.1.0 .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out of the
# cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgwarden \
    && install -D -m 0755 target/release/pgwarden /out/pgwarden

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="pgwarden" \
      org.opencontainers.image.description="PostgreSQL connection proxy sidecar: per-client caps, idle timeouts, leak detection"
COPY --from=builder /out/pgwarden /usr/local/bin/pgwarden
USER 65532:65532
# 6432: PostgreSQL clients; 9187: admin HTTP (metrics, stats, probes). The injector uses 8443.
EXPOSE 6432 9187
ENTRYPOINT ["/usr/local/bin/pgwarden"]
CMD ["proxy"]
