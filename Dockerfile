# hookgate container image: a release build, then a minimal non-root runtime (distroless: glibc, CA certificates,
# no shell). The Helm chart's default image (helm/hookgate/values.yaml) is this one:
#   docker build -t hookgate:0.1.0 .        # tag = Cargo.toml version = the chart's appVersion
# tests/deploy/image.sh checks that this file and the chart agree (user, ports, binary, config path, version).

# The toolchain the project is built and tested with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin hookgate \
 && install -m 0755 target/release/hookgate /hookgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /hookgate /usr/local/bin/hookgate
# 65532 = distroless "nonroot"; the chart runs the pod as this user, with a read-only root filesystem.
USER 65532:65532
# 8443: the public listener (providers). 9090: the admin listener (/metrics, /healthz, /readyz).
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/hookgate"]
CMD ["run", "--config", "/etc/hookgate/config/hookgate.toml"]
