//! A running node: the broker opened on its data directory, with every listener bound
//! (AMQP, AMQP/TLS, the control socket, the management API and Prometheus over HTTP and
//! HTTPS) and served. The `warren` binary starts one and stops it on SIGTERM; a test can
//! start one inside its own process, on port 0.
//!
//! Binding happens in a fixed order, each failure one line with its exit code
//! (sysexits): the data directory (73), `definitions.load_file` (78), the memory limit
//! (78), the control socket (71), the AMQP listener (71), the TLS files (78) and
//! listener (71), then the HTTP listeners (71).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Config;
use crate::tls::Tls;

/// Why a node did not start: the one line for stderr, and the process's exit code.
#[derive(Debug)]
pub struct StartError {
    pub code: u8,
    pub message: String,
}

/// The plain AMQP listener and its address, unless amqp.listen is "" (TLS only;
/// config.rs checked that one of the two is on).
async fn bind_amqp(broker: &Broker) -> Result<(Option<TcpListener>, Option<String>), StartError> {
    let listen = &broker.config.amqp.listen;
    if listen.is_empty() {
        return Ok((None, None));
    }
    let l = crate::server::bind(broker)
        .await
        .map_err(|e| failed(71, crate::server::bind_error(listen, &e)))?;
    let addr = crate::server::local_addr(&l)
        .map(|a| a.to_string())
        .unwrap_or_else(|| listen.clone());
    Ok((Some(l), Some(addr)))
}

/// With `[tls]`: the certificate files (read first, and refused naming the key and
/// file), then the amqps listener and its address.
async fn bind_amqps(
    broker: &Broker,
) -> Result<Option<(Arc<Tls>, TcpListener, String)>, StartError> {
    if !broker.config.tls.enabled() {
        return Ok(None);
    }
    let tls = Tls::load(&broker.config.tls).map_err(|e| failed(78, e))?;
    let listen = &broker.config.tls.listen;
    let l = crate::server::bind_tls(broker)
        .await
        .map_err(|e| failed(71, crate::server::bind_error_for("tls.listen", listen, &e)))?;
    let addr = crate::server::local_addr(&l)
        .map(|a| a.to_string())
        .unwrap_or_else(|| listen.clone());
    Ok(Some((tls, l, addr)))
}

/// The Prometheus endpoint over HTTP and, with the `[tls]` certificate, HTTPS, each if
/// configured: a port in use is a start-up failure too.
async fn serve_metrics(broker: &Arc<Broker>, tls: Option<&Arc<Tls>>) -> Result<(), StartError> {
    let m = &broker.config.metrics;
    if !m.listen.is_empty() {
        let l = bind_http("metrics.listen", &m.listen).await?;
        let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("Prometheus metrics on http://{at}/metrics");
        // Before the ready line, so tests that wait for it know this port.
        announce(broker, "prometheus", &at);
        tokio::spawn(crate::prometheus::http::serve(broker.clone(), l));
    }
    if let (false, Some(tls)) = (m.tls_listen.is_empty(), tls) {
        let l = bind_http("metrics.tls_listen", &m.tls_listen).await?;
        let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("Prometheus metrics on https://{at}/metrics");
        announce(broker, "prometheus_tls", &at);
        tokio::spawn(crate::prometheus::http::serve_tls(
            broker.clone(),
            l,
            tls.clone(),
        ));
    }
    Ok(())
}

/// The management API (and web console) over HTTP and HTTPS, each if configured.
async fn serve_management(
    broker: &Arc<Broker>,
    tls: Option<&Arc<Tls>>,
    local: String,
) -> Result<(), StartError> {
    let m = &broker.config.management;
    let plain = if m.listen.is_empty() {
        None
    } else {
        let l = bind_http("management.listen", &m.listen).await?;
        let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("management API on http://{at}/api/, web console on http://{at}/");
        announce(broker, "management", &at);
        Some(l)
    };
    let secure = match (m.tls_listen.is_empty(), tls) {
        (false, Some(tls)) => {
            let l = bind_http("management.tls_listen", &m.tls_listen).await?;
            let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!("management API on https://{at}/api/, web console on https://{at}/");
            announce(broker, "management_tls", &at);
            Some((l, tls.clone()))
        }
        _ => None,
    };
    if plain.is_some() || secure.is_some() {
        tokio::spawn(crate::management::serve(
            broker.clone(),
            plain,
            secure,
            local,
        ));
    }
    Ok(())
}

fn failed(code: u8, message: String) -> StartError {
    StartError { code, message }
}

pub struct Node {
    pub broker: Arc<Broker>,
    /// The plain AMQP listener's address (None: TLS only).
    pub amqp: Option<String>,
    /// The amqps listener's address, with TLS configured.
    pub amqps: Option<String>,
    tls: Option<Arc<Tls>>,
    server: Option<JoinHandle<()>>,
    tls_server: Option<JoinHandle<()>>,
    control: JoinHandle<()>,
}

impl Node {
    /// Open the data directory, bind every configured listener and start serving. Must
    /// run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        Self::start_shipped(config, None).await
    }

    /// [`Node::start`] for a cluster's leader: the store's changes go to `shipping`.
    pub async fn start_shipped(
        config: Config,
        shipping: Option<Arc<crate::store::shipping::Shipping>>,
    ) -> Result<Node, StartError> {
        // Opening the store takes the data directory's lock: nothing else in it (the
        // control socket) is touched before that.
        let broker = Broker::open_shipped(config, shipping.clone())
            .map_err(|e| failed(73, e.to_string()))?; // EX_CANTCREAT
        load_definitions(&broker).map_err(|e| failed(78, e))?; // EX_CONFIG
        check_memory_limit(&broker.config.alarms)?;
        // One descriptor held back for the accept loops (see accept.rs).
        crate::accept::reserve();
        let control = crate::control::bind(&broker.config.data_dir)
            .await
            .map_err(|e| {
                let path = crate::control::socket_path(&broker.config.data_dir);
                failed(
                    71,
                    format!("cannot create the control socket {}: {e}", path.display()),
                )
            })?;
        if let Some(s) = &shipping {
            // Start-up's own changes are done; a client's wait for the followers.
            s.arm();
        }
        let (listener, addr) = bind_amqp(&broker).await?;
        let amqps = bind_amqps(&broker).await?;
        let tls = amqps.as_ref().map(|(tls, _, _)| tls.clone());
        serve_metrics(&broker, tls.as_ref()).await?;
        // Management lists connections as "peer -> local": the plain listener's
        // address, or the TLS one's when there is only TLS.
        let local = addr
            .clone()
            .or_else(|| amqps.as_ref().map(|t| t.2.clone()))
            .unwrap_or_default();
        serve_management(&broker, tls.as_ref(), local).await?;
        broker.start_alarm_monitor();
        let server = listener.map(|l| tokio::spawn(crate::server::serve(broker.clone(), l)));
        let (tls_server, tls_addr) = match amqps {
            Some((tls, listener, addr)) => {
                let serve = crate::server::serve_tls(broker.clone(), listener, tls);
                (Some(tokio::spawn(serve)), Some(addr))
            }
            None => (None, None),
        };
        let control = tokio::spawn(crate::control::serve(broker.clone(), control));
        for (key, at) in [("amqp", &addr), ("amqps", &tls_addr)] {
            if let Some(at) = at {
                broker.add_listener(key, at);
            }
        }
        Ok(Node {
            broker,
            amqp: addr,
            amqps: tls_addr,
            tls,
            server,
            tls_server,
            control,
        })
    }

    /// The TLS configuration in use (SIGHUP reloads its files).
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_deref()
    }

    /// For the log and systemd's status: "AMQP listening on X[, AMQP/TLS on Y]".
    pub fn listening(&self) -> String {
        match (&self.amqp, &self.amqps) {
            (Some(a), None) => format!("AMQP listening on {a}"),
            (Some(a), Some(t)) => format!("AMQP listening on {a}, AMQP/TLS on {t}"),
            (None, Some(t)) => format!("AMQP/TLS listening on {t}"),
            (None, None) => unreachable!("config.rs requires a listener"),
        }
    }

    /// The ready line's fields: " amqp=X" unless the plain listener is off, " amqps=Y"
    /// only with TLS.
    pub fn ready_fields(&self) -> String {
        [("amqp", &self.amqp), ("amqps", &self.amqps)]
            .iter()
            .filter_map(|(k, a)| a.as_ref().map(|a| format!(" {k}={a}")))
            .collect()
    }

    /// A graceful stop: stop recording what closing connections let go of, close every
    /// connection with 320 CONNECTION_FORCED, give them a moment to deliver their close
    /// frames, then write and sync what is pending.
    pub async fn stop(self) {
        let broker = self.broker;
        broker.freeze_store();
        broker.shut_down();
        if let Some(s) = self.server {
            let _ = s.await;
        }
        if let Some(s) = self.tls_server {
            let _ = s.await;
        }
        let _ = self.control.await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while broker.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        broker.close_store();
    }
}

/// definitions.load_file: import at boot, before clients can connect. Items that cannot
/// be applied stop the boot (as in RabbitMQ); unknown keys are only reported.
fn load_definitions(broker: &crate::broker::Broker) -> Result<(), String> {
    let path = &broker.config.definitions.load_file;
    if path.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read definitions.load_file {path}: {e}"))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("definitions.load_file {path}: invalid JSON: {e}"))?;
    let report = crate::definitions::import(broker, &doc);
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

/// A memory watermark at or below what the broker already uses once its store is
/// recovered would hold every publisher blocked from the first second: refuse to start
/// rather than run like that (RabbitMQ starts and blocks, which looks like a hang).
fn check_memory_limit(cfg: &crate::config::AlarmsConfig) -> Result<(), StartError> {
    let (Some(limit), Some(used)) = (
        crate::alarm::memory_limit(cfg),
        crate::alarm::resident_memory(),
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
    Err(failed(
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

/// A listener other than AMQP is up: tell scripts and tests (stdout, before the ready
/// line) and remember it for `warrenctl diagnostics`.
fn announce(broker: &crate::broker::Broker, key: &str, at: &str) {
    println!("warren listening {key}={at}");
    broker.add_listener(key, at);
}

/// Bind an HTTP listener (metrics, management); a failure is one line naming `key`.
async fn bind_http(key: &str, listen: &str) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| failed(71, crate::server::bind_error_for(key, listen, &e)))
}
