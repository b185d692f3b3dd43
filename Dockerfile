# Build the release binary, then run it alone on a slim image as an unprivileged user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin epoll-echo

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin epoll-echo
COPY --from=build /src/target/release/epoll-echo /usr/local/bin/epoll-echo
USER epoll-echo
EXPOSE 8080
# Flags given to `docker run` are appended, e.g. `--maxListeners 4`.
ENTRYPOINT ["/usr/local/bin/epoll-echo"]
