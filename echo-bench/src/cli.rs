//! The command line: one subcommand per scenario (`ping`, `stream`, `churn`, `idle`), each offering
//! only the flags that mean something for it, plus `compare` and `plot`. The flags of a scenario
//! become a [`Job`]; this file parses, the runner (`job.rs`) runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::args::{count, positive_duration, positive_rate};
use crate::job::Job;
use crate::pattern::MAX_SLICE;
use crate::report::Asked;
use crate::target::{parse_target, Target};
use crate::{compare, plot};
use cli_duration::parse_duration;

/// Shown under every command's `--help`.
const EXIT_STATUS: &str = "\
Exit status:
  0  every message was echoed within --timeout, every byte matched, no connection failed
  1  a mismatch, a message never echoed, a connection error, no message echoed at all, or a
     file that could not be written
  2  bad usage: an unknown flag or a value out of range";

#[derive(Parser)]
#[command(
    version,
    about = "Load generator for TCP echo servers; every echoed byte is checked",
    after_help = EXIT_STATUS
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Closed loop: each connection keeps DEPTH messages in flight.
    ///
    /// Each connection sends its own stretch of a random byte stream and sends one more message
    /// for every message echoed; every echoed byte is compared with what was sent.
    #[command(after_help = EXIT_STATUS)]
    Ping(PingArgs),
    /// Open loop: messages at a fixed rate, latency from their scheduled send time.
    ///
    /// Messages are due on a fixed schedule spread over the connections in turn, whatever the
    /// server does; latency counts from each message's scheduled send time, so a slow server
    /// cannot hide its queueing delay (no coordinated omission).
    #[command(after_help = EXIT_STATUS)]
    Stream(StreamArgs),
    /// Connect, echo one message, close; one connection after another.
    #[command(after_help = EXIT_STATUS)]
    Churn(ChurnArgs),
    /// Hold many connections open and report the server's memory per connection.
    #[command(after_help = EXIT_STATUS)]
    Idle(IdleArgs),
    /// Start several servers and compare them in interleaved rounds.
    #[command(after_help = compare::AFTER_HELP)]
    Compare(compare::Options),
    /// Draw the SVG plot of a `compare` results file.
    #[command(after_help = EXIT_STATUS)]
    Plot(plot::Options),
}

/// Where to connect, from where, and how long an echo may take.
#[derive(Args)]
pub struct TargetArgs {
    /// Server as HOST:PORT: localhost:8080, 127.0.0.1:8080 or [::1]:8080.
    ///
    /// A name is resolved once; when it has several addresses, the first that accepts a
    /// connection is used.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080", value_parser = parse_target)]
    pub addr: Target,
    /// Connect from 127.0.0.1 ..= 127.0.0.N (IPv4 loopback targets only).
    ///
    /// Each source address has its own range of ephemeral ports, which many connections or a long
    /// churn need. Other targets are reached from the address the system chooses.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub sources: u8,
    /// Longest wait for a message's echo: a stall is an error, not a slow figure.
    ///
    /// Counted from when the message was sent (open loop: when it was due). At the end of the
    /// run nothing new is sent and the echoes in flight get until their own deadline; a message
    /// never echoed fails the run.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub timeout: Duration,
}

/// The measured phase and the warm-up before it.
#[derive(Args)]
pub struct Phase {
    /// Time measured: 500ms, 5s, 1m, 1h30m, or seconds (2, 0.5).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = positive_duration)]
    pub duration: Duration,
    /// Load before measuring, not counted (0: none).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub warmup: Duration,
}

/// What to report and where.
#[derive(Args)]
pub struct Output {
    /// The server's PID: report its CPU time per message and its memory.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub server_pid: Option<u32>,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Also print the latency distribution (into the JSON line with --json).
    #[arg(long)]
    pub latency: bool,
    /// Write the run and its latency distribution as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub export_json: Option<PathBuf>,
    /// Write an HDR histogram interval log (1 s intervals, in ns) to FILE.
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,
}

#[derive(Args)]
pub struct PingArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Connections.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = count(1, 1_000_000))]
    conns: usize,
    /// Messages in flight per connection.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = count(1, 65_536))]
    depth: usize,
    /// Message size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = count(1, 1 << 24))]
    size: usize,
    #[command(flatten)]
    phase: Phase,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
pub struct StreamArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Messages per second, in total over all connections.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 100_000.0, value_parser = positive_rate)]
    rate: f64,
    /// Connections the messages are spread over.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = count(1, 1_000_000))]
    conns: usize,
    /// Message size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = count(1, 1 << 24))]
    size: usize,
    #[command(flatten)]
    phase: Phase,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Size in bytes of the one message each connection echoes.
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = count(1, MAX_SLICE as u64))]
    size: usize,
    #[command(flatten)]
    phase: Phase,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Connections to open and hold.
    ///
    /// Each echoes one 16 B message first, so the server has surely accepted it.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = count(1, 1_000_000))]
    conns: usize,
    /// How long to hold them before reading the server's memory.
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = parse_duration)]
    duration: Duration,
    #[command(flatten)]
    output: Output,
}

/// Size of the message each idle connection echoes.
const IDLE_MESSAGE: usize = 16;

impl Command {
    /// The scenario these flags ask for; `None` for `compare` and `plot`, which run themselves.
    pub fn job(&self) -> Option<Job<'_>> {
        let (asked, target, output) = match self {
            Command::Compare(_) | Command::Plot(_) => return None,
            Command::Ping(a) => {
                let asked = Asked {
                    conns: a.conns,
                    depth: a.depth,
                    size: a.size,
                    ..a.phase.asked("ping")
                };
                (asked, &a.target, &a.output)
            }
            Command::Stream(a) => {
                let asked = Asked {
                    conns: a.conns,
                    size: a.size,
                    rate: Some(a.rate),
                    ..a.phase.asked("stream")
                };
                (asked, &a.target, &a.output)
            }
            Command::Churn(a) => {
                let asked = Asked {
                    size: a.size,
                    ..a.phase.asked("churn")
                };
                (asked, &a.target, &a.output)
            }
            Command::Idle(a) => {
                let asked = Asked {
                    conns: a.conns,
                    size: IDLE_MESSAGE,
                    duration: a.duration,
                    ..Asked::of("idle")
                };
                (asked, &a.target, &a.output)
            }
        };
        Some(Job {
            asked,
            target,
            output,
        })
    }
}

impl Phase {
    /// A `kind` run measured and warmed up as these flags say.
    fn asked(&self, kind: &'static str) -> Asked {
        Asked {
            duration: self.duration,
            warmup: self.warmup,
            ..Asked::of(kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::one_line;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("echo-bench").chain(args.iter().copied()))
    }

    fn usage_error(args: &[&str]) -> (ErrorKind, String) {
        match parse(args) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(e) => (e.kind(), one_line(&e.render().to_string())),
        }
    }

    #[test]
    fn durations_take_units_and_bare_seconds() {
        let Ok(Cli {
            command: Command::Ping(a),
        }) = parse(&["ping", "--duration", "1h30m", "--warmup", "0.25"])
        else {
            panic!("ping parses");
        };
        assert_eq!(a.phase.duration, Duration::from_secs(5400));
        assert_eq!(a.phase.warmup, Duration::from_millis(250));
        let (kind, msg) = usage_error(&["ping", "--duration", "0"]);
        assert_eq!(kind, ErrorKind::ValueValidation);
        assert!(msg.contains("longer than zero"), "{msg}");
        let (_, msg) = usage_error(&["stream", "--warmup=-1"]);
        assert!(msg.contains("not a duration"), "{msg}");
    }

    #[test]
    fn zero_and_nonsense_counts_are_errors() {
        for args in [
            &["ping", "--conns", "0"][..],
            &["ping", "--depth", "0"],
            &["ping", "--size", "0"],
            &["stream", "--rate", "0"],
            &["stream", "--rate", "NaN"],
            &["churn", "--size", "65537"],
            &["idle", "--conns", "-3"],
            &["ping", "--sources", "0"],
            &["ping", "--server-pid", "0"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn flags_that_mean_nothing_for_a_scenario_are_not_offered() {
        for args in [
            &["idle", "--depth", "4"][..],
            &["idle", "--warmup", "1"],
            &["idle", "--size", "64"],
            &["churn", "--depth", "4"],
            &["churn", "--conns", "4"],
            &["stream", "--depth", "4"],
            &["ping", "--rate", "100"],
        ] {
            let (kind, msg) = usage_error(args);
            assert_eq!(kind, ErrorKind::UnknownArgument, "{args:?}");
            assert!(msg.contains(args[1]), "{msg}");
        }
    }

    #[test]
    fn targets_are_resolved_when_parsed() {
        let Ok(Cli {
            command: Command::Churn(a),
        }) = parse(&["churn", "--addr", "[::1]:9000"])
        else {
            panic!("churn parses");
        };
        assert_eq!(
            a.target.addr.addrs,
            vec!["[::1]:9000".parse().expect("literal")]
        );
        let (kind, msg) = usage_error(&["ping", "--addr", "localhost"]);
        assert_eq!(kind, ErrorKind::ValueValidation);
        assert!(msg.contains("no port"), "{msg}");
    }

    #[test]
    fn a_usage_error_is_one_line_with_the_valid_values() {
        let (kind, msg) = usage_error(&["compare", "--setup", "pinnned"]);
        assert_eq!(kind, ErrorKind::InvalidValue);
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.contains("[possible values: pinned, unpinned, both]"),
            "{msg}"
        );
        assert!(msg.starts_with("invalid value 'pinnned'"), "{msg}");
    }

    #[test]
    fn every_flag_has_help_text() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} --{id} has no help",
                    sub.get_name()
                );
            }
        }
    }
}
