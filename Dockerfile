# Build the release binary, then run it alone on a slim image as an unprivileged user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# The dependencies first, in a layer of their own that only a change to a manifest or the lock
# invalidates. Each workspace member needs its manifest and a placeholder target.
COPY Cargo.toml Cargo.lock ./
COPY echo-bench/Cargo.toml echo-bench/
# The binary's duration parser: a small crate of its own, copied whole (it rarely changes).
COPY cli-duration cli-duration
RUN mkdir -p src echo-bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > echo-bench/src/main.rs \
    && cargo build --release --locked --bin epoll-echo \
    && rm -r src

# Then the server's sources. COPY keeps their old modification times, so the crate roots are
# touched to make cargo rebuild them over the placeholders.
COPY src src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin epoll-echo

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin epoll-echo
COPY --from=build /src/target/release/epoll-echo /usr/local/bin/epoll-echo
USER epoll-echo
EXPOSE 8080
# SIGTERM (docker stop) drains gracefully within --drain-timeout; keep docker's stop timeout
# (10 s by default) above it. Flags given to `docker run` are appended, e.g. `--maxListeners 4`.
ENTRYPOINT ["/usr/local/bin/epoll-echo"]
