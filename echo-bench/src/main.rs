//! echo-bench: a load generator for TCP echo servers. It checks every echoed byte against what was
//! sent, and reports throughput, latency percentiles, errors and, given the server's PID, the
//! server's CPU time per message and resident memory: one JSON line per run on stdout.
//!
//! `echo-bench compare` builds and starts this workspace's server, a tokio echo server and a minimal
//! epoll echo server, runs every scenario against each in interleaved rounds and prints one table.

mod compare;
mod load;
mod pattern;
mod procstat;
mod stats;
mod sys;

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use pattern::Pattern;

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
    /// Server address (IPv4).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddrV4,
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Messages in flight per connection (ping).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Connect from 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// The server's PID, to report its CPU time per message and its memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

impl Common {
    fn spec(&self, rate: Option<f64>) -> load::Spec {
        let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.0, 3600.0));
        load::Spec {
            addr: self.addr,
            conns: self.conns.max(1),
            depth: self.depth.max(1),
            size: self.size.max(1),
            duration: secs(self.duration),
            warmup: secs(self.warmup),
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
    let (kind, result) = match cli.command {
        Command::Compare(opts) => return compare::run(&opts, &pattern),
        Command::Ping(c) => ("ping", load::run_load(&c.spec(None), &pattern, "ping")),
        Command::Stream { common, rate } => (
            "stream",
            load::run_load(&common.spec(Some(rate.max(1.0))), &pattern, "stream"),
        ),
        Command::Churn(c) => ("churn", load::run_churn(&c.spec(None), &pattern, "churn")),
        Command::Idle(c) => ("idle", load::run_idle(&c.spec(None), &pattern, "idle")),
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
