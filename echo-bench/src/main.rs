//! echo-bench: a load generator for TCP echo servers. It checks every echoed byte against what was
//! sent and reports throughput, latency percentiles, errors and, given the server's PID, the
//! server's CPU time per message and resident memory.
//!
//! This file is the entry point: the flags are parsed (`cli.rs`), then a scenario is run
//! (`job.rs`), or `compare` (several servers in interleaved rounds) or `plot` (SVG from compare's
//! results). Output: an aligned summary by default, `--json` for one machine line, `--export-json`,
//! `--latency`, `--hdr-log`.

mod args;
mod churn;
mod cli;
mod compare;
mod idle;
mod job;
mod load;
mod pattern;
mod plot;
mod procstat;
mod report;
mod servers;
mod stats;
mod sys;
mod target;

use std::process::ExitCode;

use clap::Parser;

use args::one_line;
use cli::{Cli, Command};
use pattern::Pattern;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("echo-bench: {}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    sys::raise_nofile();
    let pattern = Pattern::new(0x5eed);
    let job = match &cli.command {
        Command::Compare(opts) => return compare::run(opts, &pattern),
        Command::Plot(opts) => return plot::run(opts),
        scenario => scenario.job().expect("every other command is a scenario"),
    };
    match job.run(&pattern) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("echo-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
