//! The node's "app", as rabbitmqctl's `stop_app` / `start_app` see it. A stopped node
//! keeps its process and its control socket (warrenctl still answers: `status`,
//! `reset`, `start_app`, `cluster_status`), serves no client, and in a cluster neither
//! follows nor leads.
//!
//! Stopping a serving node is its graceful stop (connections closed with 320, the store
//! synced; a cluster's leader hands over first) followed by re-executing the process
//! image with [`APP_STOPPED`] set: nothing of the serving process lives on, and the pid
//! stays, so supervisors see no exit. A single node starts again by re-executing
//! without it; a cluster follower just resumes in place.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};

/// In the environment of a process image that starts stopped.
pub const APP_STOPPED: &str = "WARREN_APP_STOPPED";

/// Set for the new image when a cluster's fenced leader re-executes: the lease it led
/// under, which the new image gives up first thing (`cluster`).
pub const RESIGNED_LEASE: &str = "WARREN_RESIGNED_LEASE";

/// Variables the next image must not inherit from this one, whatever it is.
const ONE_SHOT: &[&str] = &[APP_STOPPED, RESIGNED_LEASE];

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether this image was started stopped.
pub fn started_stopped() -> bool {
    std::env::var_os(APP_STOPPED).is_some()
}

/// `stop_app` on a serving node: begin the graceful stop, as a SIGTERM would, once the
/// command's answer has gone out; main then re-executes the process stopped.
pub fn request_stop() {
    STOP_REQUESTED.store(true, Ordering::Release);
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // SAFETY: signals this process; no memory is involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    });
}

/// Whether the stop under way is `stop_app`'s (the process stays).
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::Acquire)
}

/// Re-execute this process, stopped or not, with `extra` added to the environment.
pub fn restart(stopped: bool, extra: Vec<(OsString, OsString)>) -> ! {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !ONE_SHOT.iter().any(|v| k == v))
        .collect();
    if stopped {
        env.push((APP_STOPPED.into(), "1".into()));
    }
    env.extend(extra);
    let e = exec_self(std::env::args_os().collect(), env);
    tracing::error!(error = %e, "cannot re-execute; exiting for the supervisor to restart");
    std::process::exit(70)
}

/// Replace this process with a fresh image of the running binary (`/proc/self/exe`:
/// even if its file was replaced meanwhile, an upgrade). execve(2) itself, not
/// `Command::exec`: that one first sets SIGPIPE back to its default in this process,
/// and a replication thread writing to a follower that went away in that moment kills
/// the process instead of failing one write (seen in CI).
fn exec_self(args: Vec<OsString>, env: Vec<(OsString, OsString)>) -> std::io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |b: &[u8]| CString::new(b).unwrap_or_default();
    let args: Vec<CString> = args.iter().map(|a| c(a.as_bytes())).collect();
    let env: Vec<CString> = env
        .iter()
        .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: every pointer is to a NUL-terminated string that outlives the call, and
    // both arrays end with a null pointer, as execve(2) requires.
    unsafe { libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    std::io::Error::last_os_error()
}
