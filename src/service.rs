//! Running under a service manager: systemd's notify protocol (`sd_notify(3)`),
//! implemented here without libsystemd.
//!
//! With `Type=notify`, systemd passes `NOTIFY_SOCKET` (a Unix datagram socket, a path or
//! an abstract name written with a leading '@') and waits for `READY=1` before it
//! counts the service as started; `STOPPING=1` tells it the stop is ours, and with
//! `WatchdogSec=` set it passes `WATCHDOG_USEC` and expects `WATCHDOG=1` more often
//! than that. Without `NOTIFY_SOCKET` every call here does nothing, so the broker
//! behaves the same under any other supervisor.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// The watchdog's pings run (started once, by the first [`Notifier::up`]).
    watchdog: std::sync::atomic::AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; None when it is unset, empty or unusable (logged).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_string_lossy().into_owned();
        if name.is_empty() {
            return None;
        }
        match Self::connect(&name) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={name} is not usable, not notifying systemd: {e}");
                None
            }
        }
    }

    fn connect(name: &str) -> std::io::Result<Notifier> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            abstract_addr(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            // sd_notify also accepts vsock addresses; warren does not run in VMs that need them.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "expected an absolute path or an abstract name starting with '@'",
            ));
        };
        let socket = UnixDatagram::unbound()?;
        // A notification must never stall the broker; a full socket drops it.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr,
            watchdog: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Send one notification: newline-separated `KEY=VALUE` assignments.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!("systemd notification failed: {e}");
        }
    }

    /// Listeners accept connections: the service is up.
    pub fn ready(&self, status: &str) {
        self.notify(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    /// The shutdown has begun (systemd then waits up to TimeoutStopSec=).
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down: closing connections");
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// recommends, if the watchdog is meant for this process (`WATCHDOG_PID`, when set).
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }

    /// The node is up (it serves, or, a cluster follower, passes clients on): `READY=1`
    /// with `status`, and the watchdog's pings from now on (once, however often it is
    /// called: a follower is up before it leads, and says so again when it leads).
    pub fn up(self: &std::sync::Arc<Self>, status: &str) {
        self.ready(status);
        if let Some(every) = Self::watchdog_interval() {
            if !self
                .watchdog
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                tokio::spawn(self.clone().watchdog(every));
            }
        }
    }

    /// Ping the watchdog forever (run as a task). Being a task on the broker's runtime,
    /// the pings stop if the runtime wedges, which is what the watchdog is for.
    pub async fn watchdog(self: std::sync::Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.notify("WATCHDOG=1");
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket names exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("warren-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.ready("ok");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(got.starts_with("READY=1\nSTATUS=ok\n"), "{got}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notifies_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("warren-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::connect(&format!("@{name}")).unwrap();
        n.stopping();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert!(buf[..len].starts_with(b"STOPPING=1\n"));
    }

    #[test]
    fn relative_names_are_refused() {
        assert!(Notifier::connect("notify.sock").is_err());
    }
}
