//! `warren`: the broker binary.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use warren::config::{Config, Override, Source};

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
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> std::process::ExitCode {
    let started = std::time::Instant::now();
    // Opening the store takes the data directory's lock: nothing else in it (the
    // control socket) is touched before that.
    let broker = match warren::broker::Broker::open(config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("warren: {e}");
            return std::process::ExitCode::from(73); // EX_CANTCREAT
        }
    };
    if let Err(e) = broker.restore_access() {
        eprintln!("warren: {e}");
        return std::process::ExitCode::from(73);
    }
    if let Err(e) = load_definitions(&broker) {
        eprintln!("warren: {e}");
        return std::process::ExitCode::from(78); // EX_CONFIG
    }
    broker.save_access();
    let control = match warren::control::bind(&broker.config.data_dir).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "warren: cannot create the control socket {}: {e}",
                warren::control::socket_path(&broker.config.data_dir).display()
            );
            return std::process::ExitCode::from(71);
        }
    };
    let listener = match warren::server::bind(&broker).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "warren: cannot listen on {} (amqp.listen): {e}",
                broker.config.amqp.listen
            );
            return std::process::ExitCode::from(71);
        }
    };
    let addr = warren::server::local_addr(&listener)
        .map(|a| a.to_string())
        .unwrap_or_else(|| broker.config.amqp.listen.clone());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %broker.config.data_dir.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "warren started; AMQP listening on {addr}"
    );
    // One machine-readable line on stdout for scripts and tests.
    println!("warren ready amqp={addr}");
    let _ = std::io::stdout().flush();

    let server = tokio::spawn(warren::server::serve(broker.clone(), listener));
    let control = tokio::spawn(warren::control::serve(broker.clone(), control));
    wait_for_signal().await;
    tracing::info!("shutting down");
    broker.freeze_store();
    broker.shut_down();
    let _ = server.await;
    let _ = control.await;
    // Give connections a moment to deliver their close frames.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while broker.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    broker.close_store();
    std::process::ExitCode::SUCCESS
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

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
