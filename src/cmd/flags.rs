//! The command line: every flag with its help, the duration syntax shared with echo-bench, and the
//! turning of flags into the library's `Config`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use epoll_echo::{Config, MAX_TIMEOUT};

use super::address::{parse_bind, parse_socket};
use cli_duration::parse_duration;

/// What `--help` ends with: how to stop the server and what its exit status means.
const AFTER_HELP: &str = "\
Signals:
  SIGINT, SIGTERM, SIGHUP  stop gracefully: stop accepting, flush, close each connection once its
                           peer holds every byte (or at --drain-timeout), print a summary
  the same signal again    within 500 ms: the same request; later: exit at once
  SIGUSR1                  print the live counters (one line per worker and a total) to stderr

Environment:
  RUST_LOG                 the log filter (default info); errors are written whatever it says
  NOTIFY_SOCKET            set by systemd for Type=notify: READY=1 once listening, STOPPING=1
  EPOLL_ECHO_FAIL_WORKER   a diagnostic: W:N makes worker W panic once it has accepted N
                           connections, to try exit status 3; read only by test builds (the sim
                           feature), ignored otherwise

Exit status:
  0    stopped gracefully
  1    could not start (the address is taken or not local, no permission, ...), or could not
       write the man page or completions
  2    bad usage: an unknown flag or a value out of range
  3    a worker failed (the others were stopped gracefully); the log says which and why
  128+N  a second signal N ended the process at once";

/// A Linux TCP echo server (RFC 862): every byte received on a connection is sent back on it, in
/// order. One listener, epoll instance and thread per worker, all on one port.
#[derive(Parser, Debug)]
// No bare `about`: it would put the crate's description first instead of the line above.
#[command(version, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// TCP port to listen on (0 picks a free port)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Worker threads, each with its own listener and epoll [default: number of CPUs]
    #[arg(long = "maxListeners", visible_alias = "max-listeners", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_listeners: Option<u32>,

    /// Address to listen on, fe80::1%eth0 for a link-local one [default: :: serving IPv4 and
    /// IPv6, or 0.0.0.0 without IPv6]
    #[arg(long, value_name = "ADDR", value_parser = parse_bind)]
    pub bind: Option<(IpAddr, u32)>,

    /// Cap on one connection's unsent echo, in bytes; at the cap the connection is not read
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub max_pending: u64,

    /// How long a graceful stop may wait for peers to take their echo (500ms, 5s, 1m, or seconds)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    pub drain_timeout: Duration,

    /// Most connections open at once over all workers; at the limit new ones are accepted and
    /// closed at once (counted as rejected) [default: no limit]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    pub max_conns: Option<u64>,

    /// Close connections with no traffic in either direction for this long (e.g. 60s, 5m; 0 = never)
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_timeout)]
    pub idle_timeout: Duration,

    /// Completed connections the kernel may queue per listener; larger values are capped by
    /// net.core.somaxconn [default: the kernel's limit, net.core.somaxconn]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1 << 30))]
    pub backlog: Option<u32>,

    /// Share the port with listeners already there (another instance during an overlapping
    /// restart) instead of refusing to start; new connections are spread over all of them
    #[arg(long)]
    pub reuse_port: bool,

    /// Restart without closing a listener: take the listeners of the instance serving at PATH (a
    /// Unix socket) if there is one, else bind; then serve them at PATH for the next instance.
    /// Stop the old instance once the new one is listening [default: off]
    #[arg(long, value_name = "PATH")]
    pub handover: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9100; port 0 picks one)
    /// [default: off]
    #[arg(long, value_name = "ADDR", value_parser = parse_socket)]
    pub metrics_addr: Option<SocketAddr>,

    /// Print completions for SHELL (bash, zsh, fish) to stdout and exit
    #[arg(long, value_name = "SHELL", hide = true, value_parser = shells())]
    pub completions: Option<clap_complete::Shell>,

    /// Print the man page (roff) to stdout and exit
    #[arg(long, hide = true)]
    pub man: bool,
}

/// The shells completions are made for; clap_complete's others are not offered.
fn shells() -> impl clap::builder::TypedValueParser<Value = clap_complete::Shell> {
    use clap::builder::TypedValueParser;
    use clap_complete::Shell;
    clap::builder::PossibleValuesParser::new(["bash", "zsh", "fish"]).map(|s| match s.as_str() {
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        _ => Shell::Bash,
    })
}

/// The shortest timeout the server's timers tell apart from zero (they wait in milliseconds).
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// A duration no longer than the library's bound on timeouts, and either zero or at least the
/// timers' resolution (`1e-10` must not silently mean "off").
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    let zero = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if d < TIMER_RESOLUTION && !zero.parse::<f64>().is_ok_and(|z| z == 0.0) {
        return Err(format!(
            "'{text}' is shorter than the timers' resolution, 1ms (0 means never)"
        ));
    }
    if d > MAX_TIMEOUT {
        return Err(format!(
            "'{text}' is longer than the longest timeout, 7 days"
        ));
    }
    Ok(d)
}

impl Cli {
    /// Writes the completions or the man page when asked (then nothing is served): `None` when
    /// not asked, else whether it was written, or the one line saying why not. They go straight
    /// to stdout: this is a one-shot tool run, not the server.
    pub fn generate(&self) -> Option<Result<(), String>> {
        let (what, text) = if let Some(shell) = self.completions {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut completed(), "epoll-echo", &mut text);
            ("the completions", text)
        } else if self.man {
            let mut text = Vec::new();
            // Writing into memory cannot fail.
            let _ = render_man(&mut text);
            ("the man page", text)
        } else {
            return None;
        };
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let written = out.write_all(&text).and_then(|()| out.flush());
        Some(written.map_err(|e| format!("cannot write {what} to stdout: {e}")))
    }

    /// The library's configuration for these flags.
    pub fn config(&self) -> Config {
        let addr = match self.bind {
            Some((IpAddr::V6(ip), scope)) => {
                SocketAddr::V6(SocketAddrV6::new(ip, self.port, 0, scope))
            }
            Some((ip, _)) => SocketAddr::new(ip, self.port),
            None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port),
        };
        let config = Config::new(addr)
            .max_pending(usize::try_from(self.max_pending).unwrap_or(usize::MAX))
            .drain_timeout(self.drain_timeout)
            .max_conns(
                self.max_conns
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            )
            .idle_timeout((!self.idle_timeout.is_zero()).then_some(self.idle_timeout))
            .reuse_port(self.reuse_port)
            .backlog(self.backlog);
        match self.max_listeners {
            Some(n) => config.workers(n as usize),
            None => config,
        }
    }
}

/// The `EPOLL_ECHO_FAIL_WORKER=W:N` diagnostic: worker W panics once it has accepted N connections.
/// Only builds with the `sim` feature (the crate's own test builds) read it.
#[cfg(feature = "sim")]
pub fn planted_failure() -> Option<(usize, u64)> {
    let spec = std::env::var("EPOLL_ECHO_FAIL_WORKER").ok()?;
    let (worker, after) = spec.split_once(':')?;
    Some((worker.parse().ok()?, after.parse().ok()?))
}

/// The man page: clap's sections, with the signals and exit status as sections of their own
/// (clap would fill them into one paragraph), and a short NAME line for `whatis` and `apropos`.
fn render_man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    // clap_mangen leaves visible aliases out; say them as --help does.
    let cmd = command().mut_args(|arg| {
        let aliases: Vec<String> = arg
            .get_visible_aliases()
            .unwrap_or_default()
            .iter()
            .map(|a| format!("--{a}"))
            .collect();
        match (aliases.is_empty(), arg.get_help().map(|h| h.to_string())) {
            (false, Some(help)) => arg.help(format!("{help} [aliases: {}]", aliases.join(", "))),
            _ => arg,
        }
    });
    let description = cmd.get_about().map(|a| format!("{a}.")).unwrap_or_default();
    let cmd = cmd
        .about("a Linux TCP echo server (RFC 862)")
        .long_about(description);
    let man = clap_mangen::Man::new(cmd);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(roff_sections(AFTER_HELP).as_bytes())?;
    man.render_version_section(out)
}

/// `AFTER_HELP` as roff: a line ending in `:` starts a section, an indented `TAG  text` line an
/// entry, and a line indented further continues the entry's text.
fn roff_sections(text: &str) -> String {
    let escape = |s: &str| s.replace('\\', "\\e").replace('-', "\\-");
    let mut roff = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            let title = trimmed.trim_end_matches(':').to_uppercase();
            roff.push_str(&format!(".SH \"{}\"\n", escape(&title)));
        } else if let Some((tag, body)) = line[2..]
            .split_once("  ")
            .filter(|_| !line[2..].starts_with(' '))
        {
            let tag = escape(tag.trim());
            roff.push_str(&format!(".TP\n\\fB{tag}\\fR\n{}\n", escape(body.trim())));
        } else {
            roff.push_str(&format!("{}\n", escape(trimmed)));
        }
    }
    roff
}

/// The clap command, for generated completions and the man page.
pub fn command() -> clap::Command {
    Cli::command()
}

/// The command as completions offer it: without the hidden flags that generate these files.
fn completed() -> clap::Command {
    let full = command();
    let visible: Vec<clap::Arg> = full
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("epoll-echo")
        .version(env!("CARGO_PKG_VERSION"))
        .args(visible)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        assert!(parse_timeout("7days").is_ok());
        assert!(parse_timeout("8days").is_err());
        assert!(
            parse_timeout("1e19").is_err(),
            "overflowed the core's clock before"
        );
        for below in ["1e-10", "500us", "0.0005", "1ns"] {
            let err = parse_timeout(below).expect_err(below);
            assert!(err.contains("resolution"), "{err}");
        }
        for zero in ["0", "0s", "0.0", "0ms"] {
            assert_eq!(parse_timeout(zero), Ok(Duration::ZERO), "{zero}");
        }
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn the_default_address_serves_both_families_on_the_default_port() {
        let cli = Cli::parse_from(["epoll-echo"]);
        let addr = cli.config().addr;
        assert_eq!(addr, "[::]:8080".parse().expect("address"));
        let cli = Cli::parse_from(["epoll-echo", "--bind", "127.0.0.1", "--port", "9"]);
        assert_eq!(cli.config().addr, "127.0.0.1:9".parse().expect("address"));
        let cli = Cli::parse_from(["epoll-echo", "--bind", "fe80::1%7", "--port", "9"]);
        assert_eq!(cli.config().addr, "[fe80::1%7]:9".parse().expect("address"));
    }

    #[test]
    fn the_signals_and_exit_codes_become_man_sections() {
        let roff = roff_sections(AFTER_HELP);
        assert!(roff.starts_with(".SH \"SIGNALS\"\n.TP\n\\fBSIGINT, SIGTERM, SIGHUP\\fR\n"));
        assert!(roff.contains("\n.SH \"EXIT STATUS\"\n.TP\n\\fB0\\fR\nstopped gracefully\n"));
        // A continuation line stays in its entry; a dash is escaped.
        assert!(roff
            .contains("\npeer holds every byte (or at \\-\\-drain\\-timeout), print a summary\n"));
        assert!(roff.ends_with(".TP\n\\fB128+N\\fR\na second signal N ended the process at once\n"));
    }

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
        completed().debug_assert();
    }

    #[test]
    fn completions_offer_no_hidden_flag_and_the_man_page_shows_aliases() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut completed(), "epoll-echo", &mut text);
            let text = String::from_utf8_lossy(&text);
            for hidden in ["--completions", "--man", "elvish", "powershell"] {
                assert!(!text.contains(hidden), "{shell:?} offers {hidden}");
            }
            assert!(text.contains("max-listeners"), "{shell:?}");
        }
        let mut man = Vec::new();
        render_man(&mut man).expect("render into memory");
        let man = String::from_utf8_lossy(&man);
        assert!(man.contains("[aliases: \\-\\-max\\-listeners]"), "{man}");
    }
}
