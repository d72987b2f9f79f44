# token-sweeper container image: a static-ish binary on a distroless base,
# running as a non-root user, configured through the environment.
#
#   docker build -t token-sweeper .
#   docker run -e TOKEN_SWEEPER__REDIS__URL=redis://redis:6379 -p 9898:9898 token-sweeper

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin token-sweeper

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/token-sweeper /usr/local/bin/token-sweeper
COPY config/default.toml /etc/token-sweeper/config.toml
# Listen on all interfaces so Prometheus and the kubelet can reach /metrics
# and the health endpoints; JSON logs for log shippers. (DL3064 reads "TOKEN"
# in the product's variable prefix as a secret; these two are not.)
# hadolint ignore=DL3064
ENV TOKEN_SWEEPER__METRICS__LISTEN=0.0.0.0:9898 \
    TOKEN_SWEEPER__LOG__FORMAT=json
EXPOSE 9898
# The distroless "nonroot" user.
USER 65532:65532
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/token-sweeper", "--config", "/etc/token-sweeper/config.toml", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/token-sweeper", "--config", "/etc/token-sweeper/config.toml"]
CMD ["run"]
