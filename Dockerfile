# Multi-stage build: compile in the Rust image, run in a slim Debian image as
# a non-root user. Build: docker build -t cutover .
# Run:   docker run -v $PWD/config:/etc/cutover -p 6400:6400 cutover
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin cutover

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home cutover \
    && mkdir -p /etc/cutover && chown cutover /etc/cutover
COPY --from=build /src/target/release/cutover /usr/local/bin/cutover
COPY config/cutover.toml /etc/cutover/cutover.toml
USER cutover
EXPOSE 6400
# The example config listens on loopback; in a container set
# CUTOVER_LISTEN__ADDRESS=0.0.0.0:6400 (or mount a config that does).
ENV CUTOVER_LISTEN__ADDRESS=0.0.0.0:6400
ENTRYPOINT ["cutover"]
CMD ["serve", "--config", "/etc/cutover/cutover.toml"]
