//! echo-bench: a load generator for TCP echo servers. It checks every echoed byte against what was
//! sent, and reports throughput, latency percentiles, errors and, given the server's PID, the
//! server's CPU time per message and resident memory: one JSON line per run on stdout.
//!
//! `echo-bench compare` builds and starts this workspace's server, a tokio echo server and a minimal
//! epoll echo server, runs every scenario against each in interleaved rounds and prints one table.

mod compare;
mod duration;
mod load;
mod pattern;
mod procstat;
mod stats;
mod sys;
mod target;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use duration::parse_duration;
use pattern::Pattern;
use target::{parse_target, Target};

#[derive(Parser)]
#[command(
    version,
    about = "Load generator for TCP echo servers; every echoed byte is checked"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed loop: each connection keeps `depth` messages in flight.
    Ping(Common),
    /// Open loop: messages sent at a fixed total rate, latency counted from the scheduled time.
    Stream {
        #[command(flatten)]
        common: Common,
        /// Messages per second across all connections.
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
    },
    /// Connect, echo one message, close; again and again.
    Churn(Common),
    /// Hold many connections open and report the server's memory per connection.
    Idle(Common),
    /// Build and start three servers and compare them in interleaved rounds.
    Compare(compare::Options),
}

#[derive(Args, Clone)]
struct Common {
    /// Server as HOST:PORT: localhost:8080, 127.0.0.1:8080 or [::1]:8080.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080", value_parser = parse_target)]
    addr: Target,
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Messages in flight per connection (ping).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Time measured: 500ms, 5s, 1m, 1h30m, or seconds (2, 0.5).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before measuring, not counted (0: none).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    warmup: Duration,
    /// Connect from 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// The server's PID, to report its CPU time per message and its memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

impl Common {
    fn spec(&self, addr: SocketAddr, rate: Option<f64>) -> load::Spec {
        load::Spec {
            addr,
            conns: self.conns.max(1),
            depth: self.depth.max(1),
            size: self.size.max(1),
            duration: self.duration,
            warmup: self.warmup,
            rate,
            sources: self.sources,
            server_pid: self.server_pid,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sys::raise_nofile();
    let pattern = Pattern::new(0x5eed);
    let (kind, common, rate) = match &cli.command {
        Command::Compare(opts) => return compare::run(opts, &pattern),
        Command::Ping(c) => ("ping", c, None),
        Command::Stream { common, rate } => ("stream", common, Some(rate.max(1.0))),
        Command::Churn(c) => ("churn", c, None),
        Command::Idle(c) => ("idle", c, None),
    };
    // A name may resolve to several addresses: the run uses the first that accepts.
    let addr = match common.addr.pick(Duration::from_secs(3)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("echo-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let spec = common.spec(addr, rate);
    let result = match kind {
        "ping" | "stream" => load::run_load(&spec, &pattern, kind),
        "churn" => load::run_churn(&spec, &pattern, kind),
        _ => load::run_idle(&spec, &pattern, kind),
    };
    match result {
        Ok(r) => {
            println!("{}", r.to_json(&[("kind", kind.into())]));
            if r.clean() && r.msgs > 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "echo-bench: {} mismatches, {} errors, {} messages",
                    r.mismatches, r.errors, r.msgs
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("echo-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
