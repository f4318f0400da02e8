//! warren-perf against a real broker: short runs that check the tool counts right
//! (every message received, no sequence gaps, errors reported), never its speed.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The broker under test: `WARREN_TEST_AMQP_URL` if set (an external broker, e.g. a
/// RabbitMQ), else a warren started from the workspace's own build, on a free port.
struct Broker {
    child: Option<std::process::Child>,
    addr: String,
    data_dir: Option<std::path::PathBuf>,
}

impl Broker {
    fn start() -> Broker {
        if let Ok(url) = std::env::var("WARREN_TEST_AMQP_URL") {
            let addr = url
                .split_once('@')
                .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_owned())
                .expect("WARREN_TEST_AMQP_URL is amqp://user:pass@host:port/vhost");
            return Broker {
                child: None,
                addr,
                data_dir: None,
            };
        }
        // `cargo test` at the workspace root builds the broker beside this test
        // (target/debug/warren), as the root package's own integration tests need it.
        let exe = std::env::current_exe().expect("the test's path");
        let bin = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("warren"))
            .filter(|b| b.exists())
            .expect("no warren binary beside the test: run `cargo test` at the workspace root (or `cargo build` first)");
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("warren-perf-test-{}-{n}", std::process::id()));
        let mut child = Command::new(bin)
            .env("WARREN_METRICS_LISTEN", "")
            .env("WARREN_MANAGEMENT_LISTEN", "")
            .args(["--amqp-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn warren");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0);
            assert!(n > 0, "warren exited before its ready line");
            if let Some(addr) = line.trim().strip_prefix("warren ready amqp=") {
                break addr.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Broker {
            child: Some(child),
            addr,
            data_dir: Some(dir),
        }
    }

    fn url(&self) -> String {
        self.url_with("guest", "guest", "%2f")
    }

    fn url_with(&self, user: &str, pass: &str, vhost_encoded: &str) -> String {
        format!("amqp://{user}:{pass}@{}/{vhost_encoded}", self.addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run warren-perf with `args` against `broker`; kill it if it takes over 60 s.
fn perf(broker: &Broker, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren-perf"))
        .arg("--uri")
        .arg(broker.url())
        .arg("--quiet")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warren-perf");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let ereader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren-perf {args:?} did not stop by itself within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: reader.join().unwrap(),
        stderr: ereader.join().unwrap(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

/// A small strict JSON parser: enough to prove `--json` output is well-formed.
fn parse_json(s: &str) -> Result<Json, String> {
    fn ws(b: &[u8], i: &mut usize) {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    }
    fn string(b: &[u8], i: &mut usize) -> Result<String, String> {
        *i += 1;
        let mut out = String::new();
        loop {
            match b.get(*i).ok_or("unterminated string")? {
                b'"' => {
                    *i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    let c = *b.get(*i + 1).ok_or("bad escape")?;
                    *i += 2;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'u' => {
                            let h = std::str::from_utf8(b.get(*i..*i + 4).ok_or("bad \\u")?)
                                .map_err(|e| e.to_string())?;
                            let n = u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                            out.push(char::from_u32(n).ok_or("bad \\u")?);
                            *i += 4;
                        }
                        _ => return Err("bad escape".into()),
                    }
                }
                c if *c < 0x20 => return Err("control character in string".into()),
                _ => {
                    let start = *i;
                    while *i < b.len() && b[*i] != b'"' && b[*i] != b'\\' {
                        *i += 1;
                    }
                    out.push_str(std::str::from_utf8(&b[start..*i]).map_err(|e| e.to_string())?);
                }
            }
        }
    }
    fn value(b: &[u8], i: &mut usize) -> Result<Json, String> {
        ws(b, i);
        match b.get(*i).ok_or("unexpected end")? {
            b'{' => {
                *i += 1;
                let mut m = BTreeMap::new();
                ws(b, i);
                if b.get(*i) == Some(&b'}') {
                    *i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    ws(b, i);
                    if b.get(*i) != Some(&b'"') {
                        return Err(format!("expected a key at {i}"));
                    }
                    let k = string(b, i)?;
                    ws(b, i);
                    if b.get(*i) != Some(&b':') {
                        return Err(format!("expected ':' at {i}"));
                    }
                    *i += 1;
                    m.insert(k, value(b, i)?);
                    ws(b, i);
                    match b.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b'}') => {
                            *i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return Err(format!("expected ',' or '}}' at {i}")),
                    }
                }
            }
            b'[' => {
                *i += 1;
                let mut v = Vec::new();
                ws(b, i);
                if b.get(*i) == Some(&b']') {
                    *i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(value(b, i)?);
                    ws(b, i);
                    match b.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b']') => {
                            *i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => return Err(format!("expected ',' or ']' at {i}")),
                    }
                }
            }
            b'"' => Ok(Json::Str(string(b, i)?)),
            _ => {
                let start = *i;
                while *i < b.len() && !b",]} \n\t\r".contains(&b[*i]) {
                    *i += 1;
                }
                match std::str::from_utf8(&b[start..*i]).map_err(|e| e.to_string())? {
                    "null" => Ok(Json::Null),
                    "true" => Ok(Json::Bool(true)),
                    "false" => Ok(Json::Bool(false)),
                    n => n
                        .parse::<f64>()
                        .map(Json::Num)
                        .map_err(|_| format!("bad literal {n:?}")),
                }
            }
        }
    }
    let b = s.as_bytes();
    let mut i = 0;
    let v = value(b, &mut i)?;
    ws(b, &mut i);
    if i != b.len() {
        return Err(format!("trailing data at {i}"));
    }
    Ok(v)
}

/// The summary of a `--json` run, as a map.
fn summary(run: &Run) -> BTreeMap<String, Json> {
    match parse_json(run.stdout.trim()) {
        Ok(Json::Obj(m)) => m,
        other => panic!(
            "--json output is not a JSON object ({other:?}):\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        ),
    }
}

fn num(m: &BTreeMap<String, Json>, k: &str) -> f64 {
    match m.get(k) {
        Some(Json::Num(n)) => *n,
        other => panic!("{k} is {other:?} in {m:?}"),
    }
}

fn assert_clean(run: &Run, m: &BTreeMap<String, Json>) {
    assert_eq!(
        num(m, "errors"),
        0.0,
        "errors: {m:?}\nstderr: {}",
        run.stderr
    );
    assert_eq!(m.get("error_messages"), Some(&Json::Arr(vec![])));
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
}

#[test]
fn autoack_run_moves_messages_without_gaps() {
    let broker = Broker::start();
    let run = perf(&broker, &["--scenario", "A", "-z", "1.5", "--json"]);
    let m = summary(&run);
    assert_clean(&run, &m);
    assert!(num(&m, "recv_msgs") > 0.0, "{m:?}");
    assert!(num(&m, "recv_msgs_per_s") > 0.0);
    assert!(num(&m, "latency_samples") > 0.0);
    assert!(num(&m, "latency_us_p50") <= num(&m, "latency_us_p99"));
    assert!(num(&m, "latency_us_p99") <= num(&m, "latency_us_max"));
    assert_eq!(num(&m, "seq_gaps"), 0.0);
    assert_eq!(num(&m, "seq_backwards"), 0.0);
    assert_eq!(num(&m, "redelivered"), 0.0);
}

#[test]
fn manual_ack_with_confirms_settles_everything_it_counts() {
    let broker = Broker::start();
    let run = perf(
        &broker,
        &[
            "-c",
            "200",
            "-q",
            "500",
            "--multi-ack",
            "50",
            "-s",
            "1024",
            "-f",
            "persistent",
            "-z",
            "1.5",
            "--json",
        ],
    );
    let m = summary(&run);
    assert_clean(&run, &m);
    assert!(num(&m, "confirmed_msgs") > 0.0, "{m:?}");
    assert!(num(&m, "confirmed_msgs") <= num(&m, "sent_msgs"));
    assert!(num(&m, "sent_msgs") - num(&m, "confirmed_msgs") <= 200.0);
    assert!(num(&m, "recv_msgs") > 0.0);
    assert_eq!(num(&m, "nacked_msgs"), 0.0);
    assert_eq!(num(&m, "seq_gaps"), 0.0);
}

#[test]
fn message_counts_are_exact_across_queues_with_confirms() {
    let broker = Broker::start();
    let run = perf(
        &broker,
        &[
            "-x",
            "2",
            "-y",
            "2",
            "--queues",
            "2",
            "-c",
            "300",
            "-q",
            "400",
            "--multi-ack",
            "40",
            "--pmessages",
            "3000",
            "--cmessages",
            "3000",
            "--json",
        ],
    );
    let m = summary(&run);
    assert_clean(&run, &m);
    assert_eq!(num(&m, "sent_msgs"), 6000.0);
    assert_eq!(num(&m, "confirmed_msgs"), 6000.0);
    assert_eq!(num(&m, "recv_msgs"), 6000.0);
    assert_eq!(num(&m, "seq_gaps"), 0.0);
    assert_eq!(num(&m, "seq_backwards"), 0.0);
    // everything was acked before the queues were deleted
    assert_eq!(num(&m, "deleted_queue_msgs"), 0.0);
}

#[test]
fn fanout_delivers_a_copy_to_every_bound_queue() {
    let broker = Broker::start();
    let run = perf(
        &broker,
        &[
            "-x",
            "1",
            "-y",
            "3",
            "-a",
            "-t",
            "fanout",
            "--bind-count",
            "3",
            "-c",
            "500",
            "--pmessages",
            "2000",
            "--cmessages",
            "2000",
            "--json",
        ],
    );
    let m = summary(&run);
    assert_clean(&run, &m);
    assert_eq!(num(&m, "queues"), 3.0);
    assert_eq!(num(&m, "sent_msgs"), 2000.0);
    assert_eq!(num(&m, "recv_msgs"), 6000.0);
    assert_eq!(num(&m, "seq_gaps"), 0.0);
}

#[test]
fn rate_limit_paces_the_producer() {
    let broker = Broker::start();
    let run = perf(&broker, &["-a", "-r", "200", "-z", "1.5", "--json"]);
    let m = summary(&run);
    assert_clean(&run, &m);
    let sent = num(&m, "sent_msgs");
    assert!(
        (200.0..=400.0).contains(&sent),
        "sent {sent} at 200/s for 1.5 s"
    );
    assert!(num(&m, "latency_samples") > 100.0);
}

#[test]
fn human_output_has_a_summary_and_progress() {
    let broker = Broker::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren-perf"))
        .args(["--uri", &broker.url(), "-a", "-z", "1.2"])
        .output()
        .expect("run warren-perf");
    child.stdout.extend_from_slice(b"");
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "{out}\n{err}");
    assert!(
        out.lines().any(|l| l.starts_with("recv_msgs_per_s")),
        "{out}"
    );
    assert!(
        err.contains("sent") && err.contains("/s"),
        "no progress line: {err}"
    );
}

#[test]
fn a_channel_close_from_the_broker_is_reported_with_its_reply_code() {
    let broker = Broker::start();
    let run = perf(
        &broker,
        &[
            "-x",
            "1",
            "-y",
            "0",
            "-e",
            "warren-perf-no-such-exchange",
            "--no-declare",
            "-z",
            "5",
            "--json",
        ],
    );
    assert_eq!(run.code, Some(1), "stdout: {}", run.stdout);
    let m = summary(&run);
    assert_eq!(num(&m, "errors"), 1.0);
    let Some(Json::Arr(errs)) = m.get("error_messages") else {
        panic!("no error_messages in {m:?}")
    };
    let Json::Str(e) = &errs[0] else { panic!() };
    assert!(
        e.contains("reply_code=404") && e.contains("basic.publish"),
        "{e}"
    );
}

#[test]
fn bad_credentials_end_the_run_with_the_brokers_reason() {
    let broker = Broker::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren-perf"))
        .args([
            "--uri",
            &broker.url_with("guest", "wrong", "%2f"),
            "-z",
            "1",
            "--quiet",
        ])
        .output()
        .expect("run warren-perf");
    child.stdout.extend_from_slice(b"");
    let out = String::from_utf8_lossy(&child.stdout);
    assert_eq!(child.status.code(), Some(1));
    assert!(out.contains("reply_code=403"), "{out}");
}

#[test]
fn the_json_parser_used_here_rejects_garbage() {
    assert!(parse_json("{\"a\":1,}").is_err());
    assert!(parse_json("{\"a\":[1,\"x\\n\"],\"b\":null}").is_ok());
}
