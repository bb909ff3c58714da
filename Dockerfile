# syntax=docker/dockerfile:1
# pgwarden: one binary for the proxy sidecar, the injector webhook and the CLI.
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/pgwarden/pgwarden:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 --target dist --output type=local,dest=dist .
# The builder runs on the build machine's platform and cross-compiles for each target platform
# (scripts/build-release.sh), so the arm64 image needs no emulation. `dist` holds the stripped binary and
# its debug information, the release assets; the image carries the stripped binary.

FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS builder
ARG TARGETARCH
# Debian's cross gcc (and the Rust target) only when the target architecture is not the builder's.
# hadolint ignore=DL3008
RUN set -eux; \
    case "$TARGETARCH" in \
      amd64) gcc=gcc-x86-64-linux-gnu libc=libc6-dev-amd64-cross triple=x86_64-unknown-linux-gnu ;; \
      arm64) gcc=gcc-aarch64-linux-gnu libc=libc6-dev-arm64-cross triple=aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    if [ "$(dpkg --print-architecture)" != "$TARGETARCH" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "$gcc" "$libc"; \
      rm -rf /var/lib/apt/lists/*; \
      rustup target add "$triple"; \
    fi
WORKDIR /src
COPY . .
# Cache mounts keep the registry and each architecture's target dir between builds; the binaries are
# written out of the cached target dir in the same step.
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=pgwarden-target-${TARGETARCH},target=/src/target \
    bash scripts/build-release.sh /out "$TARGETARCH"

FROM scratch AS dist
COPY --from=builder /out/pgwarden /out/pgwarden.debug /

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pgwarden" \
      org.opencontainers.image.description="PostgreSQL connection proxy sidecar: per-client caps, idle timeouts, leak detection" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/pgwarden /usr/local/bin/pgwarden
USER 65532:65532
# 6432: PostgreSQL clients; 9187: admin HTTP (metrics, stats, probes). The injector uses 8443.
EXPOSE 6432 9187
ENTRYPOINT ["/usr/local/bin/pgwarden"]
CMD ["proxy"]
