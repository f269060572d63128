# tickforge container image.
#
#   docker build -t tickforge .
#   docker run --rm -p 4433:4433/udp -p 9100:9100 tickforge
#
# Stages:
#   build             compiles the `tickforge` binary with cargo (needs the
#                     Rust image from a registry).
#   runtime           the default target: Debian slim, the binary, its
#                     configuration, a non-root user.
#   runtime-prebuilt  the same runtime from a binary compiled on the host
#                     (`cargo build --release --bin tickforge`) and a base
#                     image given as RUNTIME_PREBUILT_BASE; for machines that
#                     cannot pull images or run the build stage (this
#                     repository's CI makes its base image locally, see
#                     .ci/run). The base must hold the binary's shared
#                     libraries, /etc/passwd with user `tickforge` (uid
#                     10001), /tmp, and /var/lib/tickforge owned by 10001.
#
# Configuration: /etc/tickforge/tickforge.toml (assets/docker/tickforge.toml)
# plus the environment: REDIS_URL, STORAGE_BACKEND, TICKFORGE_SECRET.
# Ports: 4433/udp (QUIC), 9100/tcp (/healthz, /readyz, /metrics).

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
ARG RUNTIME_PREBUILT_BASE=localhost/tickforge-runtime-base:latest

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY assets assets
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tickforge \
 && cp target/release/tickforge /usr/local/bin/tickforge

FROM ${RUNTIME_PREBUILT_BASE} AS runtime-prebuilt
# Relative to the build context; .dockerignore lets only this path through.
ARG TICKFORGE_BINARY=target/release/tickforge
COPY ${TICKFORGE_BINARY} /usr/local/bin/tickforge
COPY assets/docker/tickforge.toml /etc/tickforge/tickforge.toml
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 10001:10001
WORKDIR /var/lib/tickforge
EXPOSE 4433/udp 9100/tcp
ENTRYPOINT ["tickforge"]
CMD ["serve", "--config", "/etc/tickforge/tickforge.toml"]

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: the system roots rediss:// URLs are checked against.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 tickforge \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/tickforge \
      --shell /usr/sbin/nologin tickforge \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/tickforge
COPY --from=build /usr/local/bin/tickforge /usr/local/bin/tickforge
COPY assets/docker/tickforge.toml /etc/tickforge/tickforge.toml
USER 10001:10001
WORKDIR /var/lib/tickforge
EXPOSE 4433/udp 9100/tcp
ENTRYPOINT ["tickforge"]
CMD ["serve", "--config", "/etc/tickforge/tickforge.toml"]
