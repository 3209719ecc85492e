# restock: all service binaries in one small runtime image.
#
#   docker build -t restock .
#   docker run --rm restock                      # purchase-arbiter
#   docker run --rm restock stock-watcher --help # any other binary by name
#
# With registry access the FROM images are pulled as usual. Without one (see README,
# "Offline / no registry"), run scripts/offline-base-images.sh first: it puts both FROM images
# into the local image store and vendors the crates into ./vendor; when the build context has a
# vendor/ folder, the build stage points cargo at it, so this file builds unchanged and offline.
# Without vendor/ (the usual case) cargo downloads crates as always.
#
# Only classic-builder syntax (no RUN --mount, no "# syntax=" line): `docker build` on Docker
# 20.10 hosts without buildx, and docker-compose v1, use the classic builder.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /app
# The image needs no line tables (they are for profiling on the host): a
# faster build and smaller binaries.
ENV CARGO_PROFILE_RELEASE_DEBUG=false
COPY . .
RUN set -eu; \
    if [ -d vendor ]; then \
        mkdir -p .cargo; \
        printf '\n[source.crates-io]\nreplace-with = "vendored-sources"\n\n[source.vendored-sources]\ndirectory = "vendor"\n' \
            >> .cargo/config.toml; \
    fi; \
    cargo build --release --locked \
        -p purchase-arbiter -p stock-watcher -p store-sim -p restockctl -p restock-notifier
RUN mkdir -p /out \
    && cp target/release/purchase-arbiter target/release/stock-watcher \
          target/release/store-sim target/release/restockctl \
          target/release/restock-notifier /out/

FROM debian:${DEBIAN_RELEASE}-slim
# CA bundle from the build stage (rust:*-slim carries ca-certificates), so no apt is needed here.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN useradd --uid 10001 --user-group --no-create-home --no-log-init \
        --home-dir /var/lib/restock --shell /usr/sbin/nologin restock \
    && install -d -o restock -g restock -m 0750 /var/lib/restock /var/lib/restock/data
COPY --from=build /out/ /usr/local/bin/
# The services resolve their default paths (config/..., data/...) against the working directory;
# data/ exists and belongs to restock so a fresh named volume mounted there is writable.
WORKDIR /var/lib/restock
COPY config/ config/
USER 10001:10001
EXPOSE 50051 50053 8081
CMD ["purchase-arbiter"]
