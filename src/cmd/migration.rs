//! What an overlapping restart (`--reuse-port`) needs from the kernel, said where an operator sees
//! it. When the old instance closes its listener, Linux resets the connections still queued on it
//! (completed after its stop, or half-open) unless `net.ipv4.tcp_migrate_req` is 1 (Linux 5.14),
//! which hands them to another listener on the same port.

use std::path::Path;

/// Where the kernel keeps the setting (for the process's network namespace).
const SETTING: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// The warning for a server that shares its port, or `None` when the kernel migrates requests.
pub fn warning() -> Option<String> {
    warning_for(read(Path::new(SETTING)))
}

/// The setting as the kernel reports it: `Some(true)` on, `Some(false)` off, `None` unreadable
/// (an older kernel, or `/proc/sys` hidden, as systemd's `ProcSubset=pid` does).
fn read(path: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn warning_for(migrate: Option<bool>) -> Option<String> {
    let what = match migrate {
        Some(true) => return None,
        Some(false) => "net.ipv4.tcp_migrate_req is 0",
        None => "net.ipv4.tcp_migrate_req cannot be read",
    };
    Some(format!(
        "--reuse-port: {what}, so when an instance sharing this port stops, the connections still \
         queued on its listener are reset; hand the listeners over instead (--handover), so none \
         closes, or set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_names_the_setting_unless_the_kernel_migrates() {
        assert_eq!(warning_for(Some(true)), None);
        for state in [Some(false), None] {
            let line = warning_for(state).expect("a warning");
            assert!(line.contains("tcp_migrate_req"), "{line}");
            assert!(line.contains("--handover"), "{line}");
            assert!(
                line.contains("sysctl -w net.ipv4.tcp_migrate_req=1"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_setting_is_read_as_the_kernel_writes_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("tcp_migrate_req");
        for (text, want) in [("0\n", Some(false)), ("1\n", Some(true)), ("2\n", None)] {
            std::fs::write(&file, text).expect("write");
            assert_eq!(read(&file), want, "{text:?}");
        }
        assert_eq!(read(&dir.path().join("missing")), None);
    }
}
