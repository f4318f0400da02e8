//! `warren`: the broker binary.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use warren::config::{Config, Override, Source};

/// mimalloc rather than glibc's malloc: a message is allocated on its publisher's
/// connection thread and freed on its consumer's, and glibc serialises such frees on the
/// allocating arena's lock. Under a 16-byte flood that was a quarter of the broker's CPU
/// in futex waits, and mimalloc (frees to a page's lock-free list) lifted scenario A by a
/// third.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its index in mimalloc v3's `mi_option_e` (`mimalloc.h`);
/// libmimalloc-sys names only v2's options.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Emptied pages go back to the OS 100 ms after they empty rather than mimalloc's 1 s:
/// a drained backlog is given back while the broker is still busy (RSS per queued
/// message, `1M x 16 B`, is ~72 bytes this way and ~123 with the default).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn tune_allocator() {
    // SAFETY: sets a plain integer option; called first thing in main.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 100) }
}

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "A fast, RabbitMQ-compatible AMQP 0-9-1 broker"
)]
struct Cli {
    /// Configuration file (TOML); see config/warren.toml for every key.
    #[arg(long, short = 'c', env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// AMQP listener address (amqp.listen), e.g. 127.0.0.1:5672; port 0 picks one.
    #[arg(long)]
    amqp_listen: Option<String>,
    /// Data directory (data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log filter (log.level): error, warn, info, debug, trace.
    #[arg(long)]
    log_level: Option<String>,
    /// Set any configuration key: --set amqp.heartbeat=30 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let mut overrides = Config::env_overrides(std::env::vars());
    let mut flag = |key: &str, value: String, name: &str| {
        overrides.push(Override {
            key: key.to_owned(),
            value,
            source: Source::Flag(name.to_owned()),
        })
    };
    if let Some(v) = cli.amqp_listen {
        flag("amqp.listen", v, "--amqp-listen");
    }
    if let Some(v) = cli.data_dir {
        flag("data_dir", v.to_string_lossy().into_owned(), "--data-dir");
    }
    if let Some(v) = cli.log_level {
        flag("log.level", v, "--log-level");
    }
    for kv in &cli.set {
        match kv.split_once('=') {
            Some((k, v)) => flag(k.trim(), v.to_owned(), &format!("--set {kv}")),
            None => {
                eprintln!("warren: --set expects KEY=VALUE, got '{kv}'");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren: {e}");
            return std::process::ExitCode::from(78); // EX_CONFIG
        }
    };
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let log_file = if config.log.file.is_empty() {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
        None
    } else {
        let file = match warren::logfile::LogFile::open(std::path::Path::new(&config.log.file)) {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "warren: cannot open log.file {}: {e}; create its directory and let warren's user write there, or set log.file = \"\" to log to stderr",
                    config.log.file
                );
                return std::process::ExitCode::from(73);
            }
        };
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(file.clone())
            .with_ansi(false)
            .init();
        Some(file)
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The memory alarm's release of freed memory reaches every worker here.
        .on_thread_park(warren::alarm::release_freed_memory)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    runtime.block_on(run(config, log_file))
}

/// A start-up failure: the one line printed on stderr, and the exit code.
struct Failure(u8, String);

/// A memory watermark at or below what the broker already uses once its store is
/// recovered would hold every publisher blocked from the first second: refuse to start
/// rather than run like that (RabbitMQ starts and blocks, which looks like a hang).
fn check_memory_limit(cfg: &warren::config::AlarmsConfig) -> Result<(), Failure> {
    let (Some(limit), Some(used)) = (
        warren::alarm::memory_limit(cfg),
        warren::alarm::resident_memory(),
    ) else {
        return Ok(());
    };
    if limit > used {
        return Ok(());
    }
    let mb = |b: u64| b / (1024 * 1024);
    let setting = if cfg.memory_high_watermark_absolute > 0 {
        "alarms.memory_high_watermark_absolute".to_string()
    } else {
        format!(
            "alarms.memory_high_watermark = {} of this machine's or container's memory",
            cfg.memory_high_watermark
        )
    };
    Err(Failure(
        78,
        format!(
            "not enough memory for the configured limits: the memory high watermark is {} MB \
             ({setting}) but warren already uses {} MB after start-up, so every publisher \
             would be blocked; raise the watermark or give the machine or container more memory",
            mb(limit),
            mb(used)
        ),
    ))
}

async fn run(config: Config, log_file: Option<warren::logfile::LogFile>) -> std::process::ExitCode {
    let notifier = warren::service::Notifier::from_env().map(std::sync::Arc::new);
    match serve(config, notifier.clone(), log_file).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure(code, line)) => {
            eprintln!("warren: {line}");
            if let Some(n) = &notifier {
                // systemctl status shows it next to the failed unit.
                n.notify(&format!("STATUS=failed to start: {line}"));
            }
            std::process::ExitCode::from(code)
        }
    }
}

async fn serve(
    config: Config,
    notifier: Option<std::sync::Arc<warren::service::Notifier>>,
    log_file: Option<warren::logfile::LogFile>,
) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let mut signals = Signals::install()
        .map_err(|e| Failure(71, format!("cannot install signal handlers: {e}")))?;
    // Opening the store takes the data directory's lock: nothing else in it (the
    // control socket) is touched before that.
    let broker = warren::broker::Broker::open(config).map_err(|e| Failure(73, e.to_string()))?; // EX_CANTCREAT
    load_definitions(&broker).map_err(|e| Failure(78, e))?; // EX_CONFIG
    check_memory_limit(&broker.config.alarms)?;
    // One descriptor held back for the accept loops (see accept.rs).
    warren::accept::reserve();
    let control = warren::control::bind(&broker.config.data_dir)
        .await
        .map_err(|e| {
            Failure(
                71,
                format!(
                    "cannot create the control socket {}: {e}",
                    warren::control::socket_path(&broker.config.data_dir).display()
                ),
            )
        })?;
    // The plain listener, unless amqp.listen is "" (TLS only; config.rs checked).
    let listener = if broker.config.amqp.listen.is_empty() {
        None
    } else {
        Some(warren::server::bind(&broker).await.map_err(|e| {
            Failure(
                71,
                warren::server::bind_error(&broker.config.amqp.listen, &e),
            )
        })?)
    };
    let addr = listener.as_ref().map(|l| {
        warren::server::local_addr(l)
            .map(|a| a.to_string())
            .unwrap_or_else(|| broker.config.amqp.listen.clone())
    });
    // amqps: the certificate files are read (and refused, naming the key and file)
    // before the listener is bound.
    let tls = if broker.config.tls.enabled() {
        let tls = warren::tls::Tls::load(&broker.config.tls).map_err(|e| Failure(78, e))?;
        let listener = warren::server::bind_tls(&broker).await.map_err(|e| {
            Failure(
                71,
                warren::server::bind_error_for("tls.listen", &broker.config.tls.listen, &e),
            )
        })?;
        let addr = warren::server::local_addr(&listener)
            .map(|a| a.to_string())
            .unwrap_or_else(|| broker.config.tls.listen.clone());
        Some((tls, listener, addr))
    } else {
        None
    };
    // The Prometheus endpoint, if configured: a port in use is a start-up failure too.
    let metrics = if broker.config.metrics.listen.is_empty() {
        None
    } else {
        let listen = &broker.config.metrics.listen;
        let l = bind_http("metrics.listen", listen).await?;
        Some(l)
    };
    if let Some(l) = metrics {
        let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("Prometheus metrics on http://{at}/metrics");
        // Before the ready line, so tests that wait for it know this port.
        announce(&broker, "prometheus", &at);
        tokio::spawn(warren::metrics::http::serve(broker.clone(), l));
    }
    // The same over HTTPS, with the [tls] certificate (config.rs made sure it is set).
    if let (false, Some((tls, _, _))) = (broker.config.metrics.tls_listen.is_empty(), &tls) {
        let listen = &broker.config.metrics.tls_listen;
        let l = bind_http("metrics.tls_listen", listen).await?;
        let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("Prometheus metrics on https://{at}/metrics");
        announce(&broker, "prometheus_tls", &at);
        tokio::spawn(warren::metrics::http::serve_tls(
            broker.clone(),
            l,
            tls.clone(),
        ));
    }
    // The management API, if configured, likewise; over HTTPS with the [tls] certificate.
    let management = if broker.config.management.listen.is_empty() {
        None
    } else {
        let listen = &broker.config.management.listen;
        let l = bind_http("management.listen", listen).await?;
        let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("management API on http://{at}/api/, web console on http://{at}/");
        announce(&broker, "management", &at);
        Some(l)
    };
    let management_tls = match (broker.config.management.tls_listen.is_empty(), &tls) {
        (false, Some((tls, _, _))) => {
            let listen = &broker.config.management.tls_listen;
            let l = bind_http("management.tls_listen", listen).await?;
            let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!("management API on https://{at}/api/, web console on https://{at}/");
            announce(&broker, "management_tls", &at);
            Some((l, tls.clone()))
        }
        _ => None,
    };
    if management.is_some() || management_tls.is_some() {
        // Connections are named "peer -> local": the plain listener's address, or the
        // TLS one's when there is only TLS.
        let local = addr
            .clone()
            .or_else(|| tls.as_ref().map(|t| t.2.clone()))
            .unwrap_or_default();
        tokio::spawn(warren::management::serve(
            broker.clone(),
            management,
            management_tls,
            local,
        ));
    }
    broker.start_alarm_monitor();
    let server = listener.map(|l| tokio::spawn(warren::server::serve(broker.clone(), l)));
    let (tls, tls_server, tls_addr) = match tls {
        Some((tls, listener, addr)) => {
            let server = tokio::spawn(warren::server::serve_tls(
                broker.clone(),
                listener,
                tls.clone(),
            ));
            (Some(tls), Some(server), Some(addr))
        }
        None => (None, None, None),
    };
    // For the log and systemd's status, and the ready line's "amqp=X amqps=Y".
    let listening = match (&addr, &tls_addr) {
        (Some(a), None) => format!("AMQP listening on {a}"),
        (Some(a), Some(t)) => format!("AMQP listening on {a}, AMQP/TLS on {t}"),
        (None, Some(t)) => format!("AMQP/TLS listening on {t}"),
        (None, None) => unreachable!("config.rs requires a listener"),
    };
    let ready: String = [("amqp", &addr), ("amqps", &tls_addr)]
        .iter()
        .filter_map(|(k, a)| a.as_ref().map(|a| format!(" {k}={a}")))
        .collect();
    let control = tokio::spawn(warren::control::serve(broker.clone(), control));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %broker.config.data_dir.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "warren started; {listening}"
    );
    // One machine-readable line on stdout for scripts and tests (amqp=… unless the
    // plain listener is off, amqps=… only with TLS).
    for (key, at) in [("amqp", &addr), ("amqps", &tls_addr)] {
        if let Some(at) = at {
            broker.add_listener(key, at);
        }
    }
    println!("warren ready{ready}");
    let _ = std::io::stdout().flush();
    if let Some(n) = &notifier {
        n.ready(&listening);
        if let Some(every) = warren::service::Notifier::watchdog_interval() {
            tokio::spawn(n.clone().watchdog(every));
        }
    }

    signals
        .shutdown_requested(log_file.as_ref(), tls.as_deref())
        .await;
    tracing::info!("shutting down");
    if let Some(n) = &notifier {
        n.stopping();
    }
    broker.freeze_store();
    broker.shut_down();
    if let Some(s) = server {
        let _ = s.await;
    }
    if let Some(s) = tls_server {
        let _ = s.await;
    }
    let _ = control.await;
    // Give connections a moment to deliver their close frames.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while broker.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    broker.close_store();
    tracing::info!("stopped");
    Ok(())
}

/// definitions.load_file: import at boot, before clients can connect. Items that cannot
/// be applied stop the boot (as in RabbitMQ); unknown keys are only reported.
fn load_definitions(broker: &warren::broker::Broker) -> Result<(), String> {
    let path = &broker.config.definitions.load_file;
    if path.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read definitions.load_file {path}: {e}"))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("definitions.load_file {path}: invalid JSON: {e}"))?;
    let report = warren::definitions::import(broker, &doc);
    for w in &report.warnings {
        tracing::warn!("definitions.load_file {path}: {w}");
    }
    if !report.errors.is_empty() {
        return Err(format!(
            "definitions.load_file {path}: {}",
            report.errors.join("; ")
        ));
    }
    tracing::info!("imported definitions from {path}");
    Ok(())
}

/// The signals the broker handles, installed before it reports ready: until a handler
/// is installed, SIGHUP and SIGTERM would kill the process outright (their default
/// action), so a supervisor signalling right after readiness would see a crash.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Wait for SIGTERM or SIGINT (shut down). SIGHUP reopens `log.file` (log rotation)
    /// and re-reads the TLS certificate files; it never stops the broker.
    async fn shutdown_requested(
        &mut self,
        log_file: Option<&warren::logfile::LogFile>,
        tls: Option<&warren::tls::Tls>,
    ) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => reload(log_file, tls),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (log_file, tls);
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGHUP: reopen the log file, reload TLS certificates. Existing connections keep
/// their TLS sessions; new ones get the new certificates. A bad new file is logged and
/// the previous configuration stays in use.
#[cfg_attr(not(unix), allow(dead_code))]
fn reload(log_file: Option<&warren::logfile::LogFile>, tls: Option<&warren::tls::Tls>) {
    if let Some(f) = log_file {
        match f.reopen() {
            Ok(()) => tracing::info!("SIGHUP received: reopened log file {}", f.path().display()),
            Err(e) => tracing::error!(
                "SIGHUP received: cannot reopen log file {}: {e}; still writing to the old one",
                f.path().display()
            ),
        }
    }
    if let Some(t) = tls {
        match t.reload() {
            Ok(()) => tracing::info!(
                "SIGHUP received: reloaded TLS certificate {}, key and CA files; new connections use them",
                t.settings().certfile
            ),
            Err(e) => tracing::error!(
                "SIGHUP received: cannot reload the TLS configuration: {e}; still using the previous one"
            ),
        }
    }
    if log_file.is_none() && tls.is_none() {
        tracing::info!("SIGHUP received; nothing to reload (no log.file or TLS is configured)");
    }
}

/// A listener other than AMQP is up: tell scripts and tests (stdout, before the ready
/// line) and remember it for `warrenctl diagnostics`.
fn announce(broker: &warren::broker::Broker, key: &str, at: &str) {
    println!("warren listening {key}={at}");
    broker.add_listener(key, at);
}

/// Bind an HTTP listener (metrics, management); a failure is one line naming `key`.
async fn bind_http(key: &str, listen: &str) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure(71, warren::server::bind_error_for(key, listen, &e)))
}

#[cfg(test)]
mod tests {
    /// The option index is mimalloc v3's purge delay: the only option whose default is
    /// 1000 (ms). Fails if a mimalloc upgrade renumbers its options.
    #[test]
    fn purge_delay_option_index() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads a plain integer option.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(v, 1000);
    }
}
