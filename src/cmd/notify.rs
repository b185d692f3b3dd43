//! Notifications to a service manager through `NOTIFY_SOCKET` (systemd's `Type=notify`): ready once
//! the server serves, stopping when a stop begins. Without the variable nothing is sent.

use sd_notify::NotifyState;

/// Tells the service manager the server is serving; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager a stop has begun, so it waits for the exit instead of restarting.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A manager that cannot be told is worth a warning, never a stop: the server serves regardless.
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify the service manager: {e}");
    }
}
