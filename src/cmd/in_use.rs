//! What to add when the echo port is taken: the hint that `--reuse-port` shares a port only where
//! sharing could work. Not when the port is this server's own `--metrics-addr`, not when
//! `--reuse-port` was given already, and not when the listener there belongs to another user (the
//! kernel shares a port only between sockets of one user). The owners come from `/proc/net/tcp`
//! and `/proc/net/tcp6`; when none is found there, no hint is given.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The words after "another socket already listens there", if any.
pub fn advice(addr: SocketAddr, reuse_port: bool, metrics: Option<SocketAddr>) -> Option<String> {
    if metrics.is_some_and(|m| m.port() == addr.port() && overlap(m.ip(), addr.ip())) {
        return Some("it is this server's own --metrics-addr".into());
    }
    if reuse_port {
        return None;
    }
    let mut tables = String::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        tables.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    hint(&listeners(&tables, addr), effective_uid(&status)?)
}

/// The hint for listeners owned by `owners`, given our effective user.
fn hint(owners: &[u32], uid: u32) -> Option<String> {
    if owners.contains(&uid) {
        Some("--reuse-port shares a port on purpose".into())
    } else {
        let other = owners.first()?;
        Some(format!(
            "it belongs to another user (uid {other}), so it cannot be shared"
        ))
    }
}

/// Whether listeners on `a` and `b` (same port) would conflict.
fn overlap(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// The owners (uids) of the listening sockets in `/proc/net/tcp*` text that conflict with `addr`.
fn listeners(tables: &str, addr: SocketAddr) -> Vec<u32> {
    const LISTEN: &str = "0A";
    tables
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, uid) = (fields.get(1)?, fields.get(3)?, fields.get(7)?);
            let (ip, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = proc_ip(ip)?;
            let conflicts = *state == LISTEN && port == addr.port() && overlap(ip, addr.ip());
            conflicts.then(|| uid.parse().ok()).flatten()
        })
        .collect()
}

/// An address as `/proc/net/tcp*` prints it: 32-bit words in hex, each in the host's byte order.
fn proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// The effective uid from `/proc/self/status` text (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two listeners on port 8080 (0x1F90): 127.0.0.1 by uid 1000, [::] by uid 0; and one
    /// connection (state 01) that must not count.
    const TABLES: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1
   1: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000  2000        0 2
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3
";

    #[test]
    fn listeners_are_read_with_their_owners() {
        let on = |s: &str| listeners(TABLES, s.parse().expect("address"));
        assert_eq!(on("127.0.0.1:8080"), vec![1000, 0]);
        assert_eq!(on("127.0.0.2:8080"), vec![0]);
        assert_eq!(on("[::1]:8080"), vec![0]);
        assert_eq!(on("127.0.0.1:8081"), Vec::<u32>::new());
    }

    #[test]
    fn the_hint_is_given_only_where_sharing_could_work() {
        assert_eq!(
            hint(&[1000], 1000).as_deref(),
            Some("--reuse-port shares a port on purpose")
        );
        let foreign = hint(&[0], 1000).expect("a word on the owner");
        assert!(foreign.contains("another user (uid 0)"), "{foreign}");
        assert_eq!(hint(&[], 1000), None);
        let addr: SocketAddr = "127.0.0.1:9100".parse().expect("address");
        assert_eq!(advice(addr, true, None), None);
        // The metrics address on another port of the same address is not what took this one.
        let other_port = Some("127.0.0.1:9101".parse().expect("address"));
        assert_eq!(advice(addr, true, other_port), None);
        let own = advice(addr, false, Some("0.0.0.0:9100".parse().expect("address")));
        assert_eq!(
            own.as_deref(),
            Some("it is this server's own --metrics-addr")
        );
    }

    #[test]
    fn addresses_read_back_as_proc_net_tcp_prints_them() {
        // The kernel's form: each 32-bit word of the address in hex, in the host's byte order.
        let proc_form = |ip: IpAddr| -> String {
            let bytes = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            bytes
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect()
        };
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "2001:db8::8:1",
            "fe80::1234:5678",
        ] {
            let ip: IpAddr = text.parse().expect("address");
            assert_eq!(proc_ip(&proc_form(ip)), Some(ip), "{text}");
        }
        assert_eq!(proc_ip("0100007"), None);
    }

    #[test]
    fn the_effective_uid_is_the_second_of_four() {
        assert_eq!(effective_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n"), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }
}
