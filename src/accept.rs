//! What every accept loop does when accepting fails, most often because the process
//! is out of file descriptors (EMFILE) or the system is (ENFILE).
//!
//! A listener that fails keeps failing while the pending connection stays in the
//! kernel's queue: retrying at once spins a core, and logging each failure floods the
//! log. So each loop backs off, logs once per episode (and once when it ends), and,
//! out of descriptors, uses one descriptor held in reserve to take the pending
//! connection off the queue: an AMQP or HTTP client is refused at once instead of
//! hanging, and the control socket serves `warrenctl`, so that an operator can still
//! list and close connections while the limit is reached.

use std::fs::File;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

/// The descriptor held back for when the others run out.
static RESERVE: Mutex<Option<File>> = Mutex::new(None);

/// Hold the reserve descriptor (at start, and again after each use).
pub fn reserve() {
    let mut r = RESERVE.lock().unwrap_or_else(|e| e.into_inner());
    if r.is_none() {
        *r = File::open("/dev/null").ok();
    }
}

/// Give up the reserve descriptor so that one accept can succeed; false if it is in
/// use already.
pub fn release_reserve() -> bool {
    RESERVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .is_some()
}

/// Whether an accept failed for want of file descriptors.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The process's descriptor limit, for the log line.
fn descriptor_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0 {
        l.rlim_cur
    } else {
        0
    }
}

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// One accept loop's failure episode.
pub struct Failures {
    /// Which listener, for the log ("amqp", "management"...).
    what: &'static str,
    count: u64,
    pause: Duration,
}

impl Failures {
    pub fn new(what: &'static str) -> Failures {
        Failures {
            what,
            count: 0,
            pause: FIRST_PAUSE,
        }
    }

    /// The next connection on a TCP listener, riding out failures as described above.
    pub async fn next(
        &mut self,
        listener: &tokio::net::TcpListener,
    ) -> (tokio::net::TcpStream, std::net::SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    self.accepted();
                    return accepted;
                }
                Err(e) => {
                    let shed = shed(listener, &e).await;
                    self.failed(&e, shed).await;
                }
            }
        }
    }

    /// After a successful accept: ends an episode, with one line.
    pub fn accepted(&mut self) {
        if self.count > 0 {
            tracing::warn!(
                listener = self.what,
                failures = self.count,
                "accepting connections again"
            );
            self.count = 0;
            self.pause = FIRST_PAUSE;
        }
    }

    /// After a failed accept: the first failure of an episode is logged. Unless the
    /// caller took the pending connection off the queue (`shed`), wait before the next
    /// accept, longer each time while the episode lasts.
    pub async fn failed(&mut self, e: &io::Error, shed: bool) {
        if self.count == 0 {
            if out_of_descriptors(e) {
                tracing::error!(
                    listener = self.what,
                    limit = descriptor_limit(),
                    "out of file descriptors: new connections are refused until some close \
                     (raise LimitNOFILE / ulimit -n); logged once until accepting works again"
                );
            } else {
                tracing::error!(
                    listener = self.what,
                    error = %e,
                    "accept failed; logged once until accepting works again"
                );
            }
        }
        self.count += 1;
        if !shed {
            tokio::time::sleep(self.pause).await;
            self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        }
    }
}

/// Out of descriptors: accept the pending connection on the reserve descriptor and close
/// it at once, so that its client is refused now instead of waiting in the queue.
/// Whether one was shed.
async fn shed(listener: &tokio::net::TcpListener, e: &io::Error) -> bool {
    if !out_of_descriptors(e) || !release_reserve() {
        return false;
    }
    let accepted = tokio::time::timeout(FIRST_PAUSE, listener.accept()).await;
    let shed = matches!(accepted, Ok(Ok(_)));
    drop(accepted);
    reserve();
    shed
}
