//! warrenctl on its own, without a broker: what an operator sees before anything runs.
//! (Everything it does against a running broker is tested at the workspace root, in
//! tests/it/warrenctl.rs.)

use std::process::Command;

fn warrenctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warrenctl"))
        .args(args)
        .env_remove("WARREN_DATA_DIR")
        .env_remove("WARREN_CONFIG")
        .output()
        .expect("run warrenctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No broker on the data directory: rabbitmqctl's EX_UNAVAILABLE (69), with what to do.
#[test]
fn no_broker_is_exit_69_naming_the_socket() {
    let dir = std::env::temp_dir().join(format!("warrenctl-none-{}", std::process::id()));
    let dir = dir.to_str().unwrap();
    let (code, _, err) = warrenctl(&["--data-dir", dir, "list_queues"]);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("warren is not running with data directory"),
        "{err}"
    );
    assert!(err.contains(&format!("{dir}/warren.sock")), "{err}");
}

/// An unknown command is a usage error (64), as in rabbitmqctl; help for a known one
/// shows its usage line.
#[test]
fn usage_errors_and_help() {
    let (code, _, err) = warrenctl(&["--data-dir", "/nonexistent", "frobnicate"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("Command 'frobnicate' not found"), "{err}");
    let (code, out, _) = warrenctl(&["help", "list_queues"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("warrenctl list_queues [-p <vhost>] [<column> ...]"),
        "{out}"
    );
}

/// A configuration the broker would refuse is refused here too, by the same checks
/// (warren-config), with the key that is wrong.
#[test]
fn a_bad_configuration_is_refused_with_its_key() {
    let path = std::env::temp_dir().join(format!("warrenctl-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[amqp]\nheartbeat = \"often\"\n").unwrap();
    let (code, _, err) = warrenctl(&["-c", path.to_str().unwrap(), "status"]);
    let _ = std::fs::remove_file(&path);
    assert_ne!(code, Some(0));
    assert!(err.contains("heartbeat"), "{err}");
}
