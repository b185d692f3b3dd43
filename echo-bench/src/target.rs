//! Where the load goes: `HOST:PORT` as people write it (`localhost:8080`, `127.0.0.1:8080`,
//! `[::1]:8080`, `echo.internal:7`), resolved once when the flags are read.
//!
//! A name may resolve to several addresses (`localhost` to `::1` and `127.0.0.1`); the run uses the
//! first one that accepts a connection, so a server listening on one family only is still found.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A resolved `HOST:PORT`: the text given and every address it names, in resolver order.
#[derive(Clone, Debug)]
pub struct Target {
    pub text: String,
    pub addrs: Vec<SocketAddr>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses and resolves `HOST:PORT`; IPv6 literals go in brackets (`[::1]:8080`).
pub fn parse_target(text: &str) -> Result<Target, String> {
    let s = text.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Target {
            text: s.to_string(),
            addrs: vec![addr],
        });
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "'{text}' has no port: write HOST:PORT, e.g. localhost:8080"
        ));
    };
    if host.is_empty() {
        return Err(format!(
            "'{text}' has no host: write HOST:PORT, e.g. localhost:8080"
        ));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "'{text}': put an IPv6 address in brackets, e.g. [::1]:8080"
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{text}': the port must be a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{host}': {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("'{host}' resolves to no address"));
    }
    Ok(Target {
        text: s.to_string(),
        addrs,
    })
}

impl Target {
    /// The address to load: the only one, or the first of several that accepts a connection
    /// within `timeout`. The error names every address tried and why it failed.
    pub fn pick(&self, timeout: Duration) -> io::Result<SocketAddr> {
        if let [only] = self.addrs[..] {
            return Ok(only);
        }
        let mut failures = Vec::new();
        for addr in &self.addrs {
            match TcpStream::connect_timeout(addr, timeout) {
                Ok(_) => return Ok(*addr),
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("cannot connect to {} ({})", self.text, failures.join("; ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn literals_of_both_families() {
        let t = parse_target("127.0.0.1:8080").expect("IPv4 literal");
        assert_eq!(t.addrs, vec![SocketAddr::from(([127, 0, 0, 1], 8080))]);
        let t = parse_target("[::1]:7").expect("IPv6 literal");
        assert_eq!(
            t.addrs,
            vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 7)]
        );
        assert_eq!(t.to_string(), "[::1]:7");
    }

    #[test]
    fn names_are_resolved() {
        let t = parse_target("localhost:8080").expect("localhost resolves");
        assert!(!t.addrs.is_empty());
        assert!(t
            .addrs
            .iter()
            .all(|a| a.port() == 8080 && a.ip().is_loopback()));
        assert_eq!(t.text, "localhost:8080");
    }

    #[test]
    fn malformed_targets_say_what_is_wrong() {
        let cases = [
            ("localhost", "no port"),
            (":8080", "no host"),
            ("localhost:http", "port must be a number"),
            ("127.0.0.1:70000", "port must be a number"),
            ("::1:8080", "brackets"),
        ];
        for (text, why) in cases {
            let err = parse_target(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn pick_falls_back_to_the_address_that_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a test listener");
        let open = listener.local_addr().expect("local address");
        // A port that was just free on the same address: nothing listens there.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a second listener");
            l.local_addr().expect("local address")
        };
        let t = Target {
            text: format!("two:{}", open.port()),
            addrs: vec![closed, open],
        };
        assert_eq!(
            t.pick(Duration::from_secs(2)).expect("second answers"),
            open
        );
        let dead = Target {
            text: "dead:1".into(),
            addrs: vec![
                closed,
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), closed.port()),
            ],
        };
        let err = dead
            .pick(Duration::from_secs(2))
            .expect_err("nothing listens");
        assert!(err.to_string().contains(&closed.to_string()), "{err}");
    }
}
