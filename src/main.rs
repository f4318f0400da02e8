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
    if !config.cluster.enabled() && warren::app::started_stopped() {
        // warrenctl stop_app re-executed this process: the control socket alone, until
        // start_app re-executes it serving (or a signal ends it). Still up for systemd
        // (the process is), its watchdog pinged.
        if let Some(n) = &notifier {
            n.up("app stopped (warrenctl start_app starts it)");
        }
        tokio::select! {
            r = warren::control::stopped::serve(&config) => {
                return r.map_err(|(code, line)| Failure(code, line));
            }
            _ = signals.shutdown_requested(log_file.as_ref(), None) => return Ok(()),
        }
    }
    let node = if config.cluster.enabled() {
        // A cluster node follows until it leads; a stop request meanwhile just ends it.
        // It is up for systemd as soon as it follows (it passes clients on to the
        // leader): a follower that waited for READY until it leads would be killed by
        // TimeoutStartSec, and never ping the watchdog.
        let up = {
            let notifier = notifier.clone();
            move |status: &str| {
                if let Some(n) = &notifier {
                    n.up(status);
                }
            }
        };
        tokio::select! {
            node = warren::cluster::start(config, up) => node,
            _ = signals.shutdown_requested(log_file.as_ref(), None) => return Ok(()),
        }
    } else {
        warren::node::Node::start(config).await
    }
    .map_err(|e| Failure(e.code, e.message))?;
    let listening = node.listening();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %node.broker.config.data_dir.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "warren started; {listening}"
    );
    // One machine-readable line on stdout for scripts and tests (amqp=… unless the
    // plain listener is off, amqps=… only with TLS).
    println!("warren ready{}", node.ready_fields());
    let _ = std::io::stdout().flush();
    if let Some(n) = &notifier {
        n.up(&listening);
    }

    signals
        .shutdown_requested(log_file.as_ref(), node.tls())
        .await;
    tracing::info!("shutting down");
    if let Some(n) = &notifier {
        if warren::app::stop_requested() {
            // warrenctl stop_app: the process stays (re-executed, stopped).
            n.notify(
                "STATUS=app stopped (warrenctl stop_app): handing over and restarting stopped",
            );
        } else {
            n.stopping();
        }
    }
    warren::cluster::fence_for_stop();
    node.stop().await;
    warren::cluster::resign().await;
    if warren::app::stop_requested() {
        // warrenctl stop_app: the process stays, stopped, its control socket up.
        tracing::info!("app stopped: restarting with only the control socket up");
        warren::app::restart(true, vec![]);
    }
    tracing::info!("stopped");
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
