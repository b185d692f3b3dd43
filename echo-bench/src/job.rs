//! The runner of one scenario: a [`Job`] built from the command line is run against its target, its
//! result printed and written to the files asked for, and judged.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{Output, TargetArgs};
use crate::load::Spec;
use crate::pattern::Pattern;
use crate::report::{self, Asked, RunInfo};
use crate::stats::RunResult;
use crate::{churn, idle, load};

/// One scenario run as asked on the command line.
pub struct Job<'a> {
    pub asked: Asked,
    pub target: &'a TargetArgs,
    pub output: &'a Output,
}

/// Creates an output file before the run, so a bad path fails before the load rather than after.
fn create(path: &Path) -> Result<BufWriter<File>, String> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

impl Job<'_> {
    /// Runs the scenario, prints its result and writes the files asked for. `Ok(false)` when the
    /// run failed (a mismatch, a lost echo, a connection error, nothing echoed); `Err` when it
    /// could not run or a file could not be written.
    pub fn run(&self, pattern: &Pattern) -> Result<bool, String> {
        let out = self.output;
        let mut export = out.export_json.as_deref().map(create).transpose()?;
        let mut hdr = out.hdr_log.as_deref().map(create).transpose()?;
        let spec = self.spec()?;
        let result = match self.asked.kind {
            "ping" | "stream" => load::run_load(&spec, pattern, self.asked.kind),
            "churn" => churn::run_churn(&spec, pattern, self.asked.kind),
            _ => idle::run_idle(&spec, pattern, self.asked.kind),
        }
        .map_err(|e| e.to_string())?;
        let info = self.info(spec.addr);
        print(out, &info, &result);
        if let Some(w) = &mut export {
            let written = report::export_json(w, &info, &result).and_then(|()| w.flush());
            named(&out.export_json, written)?;
        }
        if let Some(w) = &mut hdr {
            let written = report::write_hdr_log(w, &info, &result).and_then(|()| w.flush());
            named(&out.hdr_log, written)?;
        }
        Ok(verdict(&result, spec.addr))
    }

    /// The load's specification, with the target resolved to the address that accepts.
    fn spec(&self) -> Result<Spec, String> {
        let (target, out) = (self.target, self.output);
        let addr = target
            .addr
            .pick(Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        Ok(Spec {
            addr,
            conns: self.asked.conns,
            depth: self.asked.depth,
            size: self.asked.size,
            duration: self.asked.duration,
            warmup: self.asked.warmup,
            rate: self.asked.rate,
            sources: target.sources,
            server_pid: out.server_pid,
            intervals: out.hdr_log.is_some(),
            timeout: target.timeout,
        })
    }

    /// What the reports say about the run.
    fn info(&self, addr: SocketAddr) -> RunInfo {
        RunInfo {
            asked: self.asked,
            target: self.target.addr.text.clone(),
            addr,
        }
    }
}

/// The summary (with the distribution under `--latency`) or, with `--json`, one JSON line.
fn print(out: &Output, info: &RunInfo, result: &RunResult) {
    let mut stdout = std::io::stdout().lock();
    let printed = if out.json {
        writeln!(stdout, "{}", report::run_json(info, result, out.latency))
    } else {
        let mut text = report::summary(info, result);
        if let (true, Some(h)) = (out.latency, &result.hist) {
            text.push('\n');
            text.push_str(&report::distribution_table(h));
        }
        write!(stdout, "{text}")
    };
    // A closed stdout (a pipe into `head`) is not the run's failure.
    let _ = printed.and_then(|()| stdout.flush());
}

/// A write error as the message that names the file.
fn named(path: &Option<PathBuf>, res: std::io::Result<()>) -> Result<(), String> {
    res.map_err(|e| {
        let p = path.as_deref().unwrap_or(Path::new("-"));
        format!("cannot write {}: {e}", p.display())
    })
}

/// Whether the run passed; says why on stderr when it did not, and what was never sent.
fn verdict(result: &RunResult, addr: SocketAddr) -> bool {
    if result.not_sent > 0 {
        eprintln!("echo-bench: {}", report::not_sent(result));
    }
    if !result.clean() {
        eprintln!("echo-bench: {}", report::failures(result));
        return false;
    }
    if result.msgs == 0 {
        eprintln!("echo-bench: {addr} echoed no message while measuring");
        return false;
    }
    true
}
