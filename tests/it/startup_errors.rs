//! A broker that cannot start says why in one line on stderr (what is wrong and what to
//! do) and exits non-zero, so that systemd's journal and a shell user both see the
//! cause. The README's "When warren does not start" table lists these messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run warren expecting it to fail at start: (exit code, the one `warren:` line).
fn start_fails(data_dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warren: "))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one error line: {stderr}");
    let code = out.status.code().expect("exited, not killed");
    assert_ne!(code, 0, "{stderr}");
    (code, lines[0].to_owned())
}

#[test]
fn port_in_use_names_the_address_and_what_to_do() {
    if is_external() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = scratch("warren-port");
    let set = format!("amqp.listen={addr}");
    let (code, line) = start_fails(&dir, &["--set", &set]);
    assert_eq!(code, 71);
    assert!(
        line.contains(&format!("cannot listen on {addr} (amqp.listen)")),
        "{line}"
    );
    assert!(line.contains("set amqp.listen to a free port"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_data_dir_that_cannot_be_created_is_refused() {
    if is_external() {
        return;
    }
    let dir = scratch("warren-datadir");
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let (code, line) = start_fails(&file.join("data"), &[]);
    assert_eq!(code, 73);
    assert!(line.contains("is not writable"), "{line}");
    assert!(line.contains("set data_dir to"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_read_only_data_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if is_external() {
        return;
    }
    let dir = scratch("warren-readonly");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
    // root writes anyway: nothing to refuse then.
    if std::fs::write(data.join("probe"), "").is_ok() {
        eprintln!("skipped: running as root, permissions do not stop writes");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let (code, line) = start_fails(&data, &[]);
    assert_eq!(code, 73);
    assert!(line.contains("is not writable"), "{line}");
    assert!(line.contains("Permission denied"), "{line}");
    assert!(
        line.contains("give the user warren runs as write access"),
        "{line}"
    );
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_config_key_names_file_line_and_key() {
    if is_external() {
        return;
    }
    let dir = scratch("warren-badkey");
    let config = dir.join("warren.toml");
    std::fs::write(&config, "[amqp]\nheartbeat = 30\nlisten_port = 5673\n").unwrap();
    let (code, line) = start_fails(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    assert_eq!(code, 78);
    assert!(
        line.contains("line 3: amqp.listen_port: unknown field"),
        "{line}"
    );
    assert!(line.contains("remove or fix the key"), "{line}");
    // The same from the environment and the command line.
    let (code, line) = start_fails(&dir.join("data"), &["--set", "amqp.nope=1"]);
    assert_eq!(code, 78);
    assert!(
        line.contains("unknown configuration key 'amqp.nope'"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_value_of_the_wrong_type_names_the_key_and_type() {
    if is_external() {
        return;
    }
    let dir = scratch("warren-badtype");
    let config = dir.join("warren.toml");
    std::fs::write(&config, "[store]\nfsync = \"yes\"\n").unwrap();
    let (code, line) = start_fails(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    assert_eq!(code, 78);
    assert!(line.contains("line 2: store.fsync: invalid type"), "{line}");
    assert!(line.contains("expected a boolean"), "{line}");
    let (code, line) = start_fails(&dir.join("data"), &["--set", "amqp.heartbeat=soon"]);
    assert_eq!(code, 78);
    assert!(
        line.contains("invalid value 'soon' for amqp.heartbeat: expected an integer"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn data_from_a_newer_warren_is_refused() {
    if is_external() {
        return;
    }
    let dir = scratch("warren-newer");
    std::fs::write(dir.join("meta.toml"), "format = 99\nnode_id = \"x\"\n").unwrap();
    let (code, line) = start_fails(&dir, &[]);
    assert_eq!(code, 73);
    assert!(
        line.contains("was written by a newer warren (format 99)"),
        "{line}"
    );
    assert!(
        line.contains("Run the newer version, or point data_dir elsewhere"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_memory_watermark_below_what_warren_uses_is_refused() {
    if is_external() {
        return;
    }
    let dir = scratch("warren-memory");
    // 1 MB: less than any broker's resident memory once started.
    let (code, line) = start_fails(
        &dir,
        &["--set", "alarms.memory_high_watermark_absolute=1048576"],
    );
    assert_eq!(code, 78);
    assert!(
        line.contains("not enough memory for the configured limits"),
        "{line}"
    );
    assert!(line.contains("watermark is 1 MB"), "{line}");
    assert!(line.contains("raise the watermark"), "{line}");
    // A fraction of a machine's memory that is too small says which setting it came from.
    let (code, line) = start_fails(&dir, &["--set", "alarms.memory_high_watermark=0.00001"]);
    assert_eq!(code, 78);
    assert!(
        line.contains("alarms.memory_high_watermark = 0.00001"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
