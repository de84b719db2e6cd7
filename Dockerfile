# syntax=docker/dockerfile:1
#
# The `orderflow` binary in a small Debian image.
#
#   docker build -t orderflow .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -e ORDERFLOW_ADMIN_EMAIL=you@example.com -e ORDERFLOW_ADMIN_PASSWORD='a long password' \
#     orderflow                                                  # whole pipeline, embedded broker
#   docker run --rm orderflow process payment --brokers HOST:9092  # one stage against a cluster
#
# In a container the API listens on 0.0.0.0, so `orderflow run` treats it as reachable from
# other hosts: no demo accounts (their passwords are published), the first admin from
# ORDERFLOW_ADMIN_EMAIL / ORDERFLOW_ADMIN_PASSWORD, access tokens signed with a secret generated
# into the data dir (or ORDERFLOW_JWT_SECRET). The embedded broker has no authentication and
# stays on the container's loopback: for Kafka clients outside, run Redpanda or Kafka.
#
# Built with default features, so `orderflow run` (embedded tansu broker) works in the image;
# `--build-arg ORDERFLOW_FEATURES=otlp` adds OTLP trace export (OTEL_EXPORTER_OTLP_ENDPOINT).
# The cache mounts below need BuildKit (the default builder of Docker 23+ and Compose v2).

# --- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# What the C parts of the dependency tree need: librdkafka (rdkafka-sys runs its `./configure`
# and `make`: gcc, g++, make, perl, python3), zlib (found by libz-sys through pkg-config),
# OpenSSL (librdkafka's TLS and SASL, ScyllaDB's TLS; through pkg-config), and the cc builds of
# SQLite (libsql), lz4 and zstd. The rust image ships most of this already; listing it
# keeps the build honest if the base changes. No cmake: nothing needs it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential perl python3 pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Extra cargo features, e.g. `otlp` (empty: the defaults).
ARG ORDERFLOW_FEATURES=""

# The crate registry, git checkouts and target/ live in BuildKit cache mounts: a source change
# recompiles only the workspace crates, not librdkafka and the other dependencies. The binary
# is copied out of the cache mount, which does not end up in the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin orderflow --features "$ORDERFLOW_FEATURES" \
 && install -m 0755 target/release/orderflow /usr/local/bin/orderflow

# --- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates for TLS clients; libssl3 for librdkafka's and ScyllaDB's TLS; curl for
# container healthchecks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid so volumes and Kubernetes securityContexts can rely on it.
RUN groupadd --gid 10001 orderflow \
 && useradd --uid 10001 --gid orderflow --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin orderflow \
 && mkdir -p /data \
 && chown orderflow:orderflow /data

COPY --from=builder /usr/local/bin/orderflow /usr/local/bin/orderflow

# The embedded store, the embedded broker's log and the file sink live here; mount a volume.
ENV ORDERFLOW_DATA_DIR=/data
WORKDIR /data
USER 10001:10001

# 8080: HTTP API (`run`, `ingest`). 9464: /metrics and /healthz of `process` and `bridge`.
EXPOSE 8080 9464

# No HEALTHCHECK here: which port answers depends on the subcommand. Services that run the API
# (`run`, `ingest`) check `curl -fsS http://localhost:8080/readyz`, `process` and `bridge`
# `http://localhost:9464/healthz` (see docker-compose.yml).
ENTRYPOINT ["orderflow"]
CMD ["run", "--http", "0.0.0.0:8080"]
