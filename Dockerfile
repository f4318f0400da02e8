# warren in a container, run the way rabbitmq:3-management is:
#
#   docker build -t warren .
#   docker run -d --name warren --hostname warren -p 5672:5672 -p 15672:15672 \
#       -e RABBITMQ_DEFAULT_USER=app -e RABBITMQ_DEFAULT_PASS=secret \
#       -v warren-data:/var/lib/warren warren
#
# README.md ("Running in Docker") has the details. Stages:
#   runtime   Debian bookworm-slim, the warren user, the volume, ports, health check:
#             everything but the binaries
#   prebuilt  runtime + binaries from the image BINARIES_IMAGE (tests/docker/build.sh
#             uses it with binaries compiled on the host; it comes before the Rust stage
#             so that the classic builder, which builds every stage up to its target,
#             does not compile)
#   builder   compiles warren, warrenctl and warren-perf (release)
#   warren    runtime + the builder's binaries: the default target
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm
# The image the prebuilt target copies /usr/local/bin/ from (default: no binaries).
ARG BINARIES_IMAGE=runtime

FROM ${RUNTIME_IMAGE} AS runtime
# uid/gid 999 as in the rabbitmq image, so a volume moves between the two unchanged.
RUN groupadd --system --gid 999 warren \
 && useradd --system --uid 999 --gid warren --home-dir /var/lib/warren --no-create-home \
        --shell /usr/sbin/nologin warren \
 && mkdir -p /var/lib/warren /etc/warren \
 && chown warren:warren /var/lib/warren \
 && chmod 0750 /var/lib/warren
# The image's configuration file: mount yours over it (-v ./warren.toml:/etc/warren/warren.toml:ro).
COPY packaging/docker/warren.toml /etc/warren/warren.toml
# WARREN_CONFIG: warren and warrenctl (docker exec ... warrenctl) both read it.
# WARREN_DATA_DIR: the volume, whatever a mounted file says.
ENV WARREN_CONFIG=/etc/warren/warren.toml \
    WARREN_DATA_DIR=/var/lib/warren
VOLUME /var/lib/warren
WORKDIR /var/lib/warren
# amqp, amqps (when tls.certfile is set), management API and console, Prometheus.
EXPOSE 5672 5671 15672 15692
# Ready when the broker answers on its control socket, which it opens after its
# listeners are bound.
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD ["warrenctl", "--quiet", "--timeout", "3", "await_startup"]
USER warren
# warren is PID 1: it handles SIGTERM (docker stop) and SIGINT itself, closing client
# connections with 320 CONNECTION_FORCED and the store cleanly; logs go to stderr.
STOPSIGNAL SIGTERM
CMD ["warren"]

FROM ${BINARIES_IMAGE} AS host-binaries

FROM runtime AS prebuilt
COPY --from=host-binaries /usr/local/bin/ /usr/local/bin/

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY crates crates
COPY src src
# Debug info stripped (function names kept for backtraces): the release profile's line
# tables are three quarters of each binary.
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && for b in warren warrenctl warren-perf; do strip --strip-debug -o /out/$b target/release/$b; done

FROM runtime AS warren
COPY --from=builder /out/ /usr/local/bin/
