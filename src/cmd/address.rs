//! Addresses on the command line: `--bind` and `--metrics-addr` take the same forms, an IPv6
//! link-local address may carry its zone by interface name or number (`fe80::1%lo`,
//! `[fe80::1%2]:9100`), and an address no TCP server can listen on (multicast, broadcast) is a
//! usage error rather than a server reported as listening where nobody can reach it.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

/// `--bind`: an address, an IPv6 one optionally with `%ZONE`; the zone as an interface index.
pub fn parse_bind(text: &str) -> Result<(IpAddr, u32), String> {
    let (ip, zone) = match text.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| {
        format!("'{text}' is not an IP address (e.g. 127.0.0.1, ::1, fe80::1%eth0)")
    })?;
    listenable(ip)?;
    let scope = match (zone, ip) {
        (None, _) => 0,
        (Some(zone), IpAddr::V6(_)) => interface_index(zone)?,
        (Some(_), IpAddr::V4(_)) => {
            return Err(format!("'{text}': only IPv6 addresses take a %zone"))
        }
    };
    Ok((ip, scope))
}

/// `--metrics-addr`: `ADDR:PORT` or `[ADDR%ZONE]:PORT`.
pub fn parse_socket(text: &str) -> Result<SocketAddr, String> {
    let bad = || format!("'{text}' is not an address and port (e.g. 127.0.0.1:9100, [::1]:9100)");
    let addr = match text.strip_prefix('[').and_then(|t| t.split_once("]:")) {
        Some((inner, port)) if inner.contains('%') => {
            let (ip, scope) = parse_bind(inner)?;
            let port: u16 = port.parse().map_err(|_| bad())?;
            match ip {
                IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)),
                IpAddr::V4(_) => return Err(bad()),
            }
        }
        _ => text.parse().map_err(|_| bad())?,
    };
    listenable(addr.ip())?;
    Ok(addr)
}

/// Refuses the addresses a TCP listener cannot serve.
fn listenable(ip: IpAddr) -> Result<(), String> {
    let why = match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => "the broadcast address",
        ip if ip.is_multicast() => "a multicast address",
        _ => return Ok(()),
    };
    Err(format!("{ip} is {why}: TCP cannot listen on it"))
}

/// An interface given by number or by name (`lo`, `eth0`), as its index.
fn interface_index(zone: &str) -> Result<u32, String> {
    if let Ok(n) = zone.parse::<u32>() {
        return Ok(n);
    }
    let unknown = || format!("'{zone}' is not a network interface of this host");
    if zone.is_empty() || zone.contains('/') || zone.starts_with('.') {
        return Err(unknown());
    }
    std::fs::read_to_string(format!("/sys/class/net/{zone}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicast_and_broadcast_are_refused() {
        for text in ["224.0.0.1", "255.255.255.255", "ff02::1"] {
            let err = parse_bind(text).expect_err(text);
            assert!(err.contains("TCP cannot listen"), "{err}");
        }
        assert!(parse_socket("224.0.0.1:9100").is_err());
        assert_eq!(
            parse_bind("127.0.0.1"),
            Ok(("127.0.0.1".parse().expect("address"), 0))
        );
    }

    #[test]
    fn a_zone_cannot_name_a_path_outside_the_interfaces() {
        // Each would reach an existing ifindex file if taken as a path.
        for zone in ["lo/../lo", "./lo", "../net/lo", ""] {
            assert!(interface_index(zone).is_err(), "{zone:?} taken");
        }
        assert!(interface_index("lo").is_ok());
    }

    #[test]
    fn a_bracketed_address_without_a_zone_is_read_as_any_other() {
        assert_eq!(
            parse_socket("[::1]:9100"),
            Ok("[::1]:9100".parse().expect("address"))
        );
        // The one message for any malformed address, zone or not.
        let e = parse_socket("[nonsense]:9100").expect_err("not an address");
        assert!(
            e.ends_with("is not an address and port (e.g. 127.0.0.1:9100, [::1]:9100)"),
            "{e}"
        );
    }

    #[test]
    fn zones_are_taken_by_number_and_by_name_in_both_flags() {
        let lo = interface_index("lo").expect("a loopback interface");
        let ip: IpAddr = "fe80::1".parse().expect("address");
        assert_eq!(parse_bind("fe80::1%lo"), Ok((ip, lo)));
        assert_eq!(parse_bind("fe80::1%7"), Ok((ip, 7)));
        let by_name = parse_socket("[fe80::1%lo]:0").expect("named zone");
        let by_number = parse_socket(&format!("[fe80::1%{lo}]:0")).expect("numbered zone");
        assert_eq!(by_name, by_number);
        assert!(parse_bind("fe80::1%no-such-if0").is_err());
        assert!(parse_bind("fe80::1%../x").is_err());
        assert!(parse_bind("127.0.0.1%lo").is_err());
    }
}
