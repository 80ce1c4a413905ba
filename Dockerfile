# One image for every service: build once, pick the binary with the container command
# (command-api, query-api, projectors, saga-orchestrator).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin command-api --bin query-api --bin projectors --bin saga-orchestrator \
    && mkdir /out \
    && cp target/release/command-api target/release/query-api target/release/projectors \
          target/release/saga-orchestrator /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home app
COPY --from=build /out/ /usr/local/bin/
USER 10001
ENV RUST_LOG=info,rdkafka=warn
# command-api 8080, query-api 8081, projectors 8082, saga-orchestrator 8083
EXPOSE 8080 8081 8082 8083
CMD ["command-api"]
