//! Configuration: embedded defaults, then a TOML file, then `WARREN_*` environment
//! variables, then command-line flags, each overriding the one before. Every key, its
//! default and its environment variable are documented in `config/warren.toml`.

pub mod suites;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a consumer timeout does (`amqp.consumer_timeout_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerTimeoutAction {
    /// warren's default: the stuck delivery goes back to its queue, the channel stays open.
    Requeue,
    /// RabbitMQ's behaviour: 406 PRECONDITION_FAILED on the channel.
    CloseChannel,
}

/// `tls.verify`, RabbitMQ's `ssl_options.verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsVerify {
    /// No client certificate is asked for.
    VerifyNone,
    /// Client certificates are asked for and checked against `tls.cacertfile`.
    VerifyPeer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where durable state lives. Env: WARREN_DATA_DIR.
    pub data_dir: PathBuf,
    pub amqp: AmqpConfig,
    pub defaults: DefaultsConfig,
    pub store: StoreConfig,
    pub alarms: AlarmsConfig,
    pub definitions: DefinitionsConfig,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub metrics: MetricsConfig,
    pub management: ManagementConfig,
    pub cluster: ClusterConfig,
}

/// `[cluster]`: a replicated cluster coordinated through etcd. With no `node_name` the
/// node runs alone, exactly as without the section (no etcd, no replication).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name in the cluster, `warren@host`; empty: no cluster.
    pub node_name: String,
    /// The cluster's name: etcd keys live under `/warren/<name>/` (RabbitMQ's
    /// cluster_name).
    pub name: String,
    /// etcd client URLs, `http://host:2379`.
    pub etcd_endpoints: Vec<String>,
    /// The replication listener (followers stream the leader's log from it), host:port.
    pub replication_listen: String,
    /// The address other nodes reach `replication_listen` at; empty: that address.
    pub advertise: String,
    /// Copies (leader included) a confirm needs; below that, publishers wait.
    pub min_insync_replicas: u32,
    /// The leader's etcd lease, seconds: a leader that cannot renew it stops confirming
    /// and serving; a dead leader is replaced within about this long.
    pub lease_ttl: u64,
    /// Milliseconds an in-sync follower may fall silent before the leader drops it from
    /// the in-sync replicas (and confirms go on without it).
    pub ack_timeout_ms: u64,
    /// RabbitMQ's cluster_partition_handling: accepted and logged, without effect
    /// (warren always behaves as pause_minority).
    pub partition_handling: String,
    /// Shared by the cluster's nodes (RabbitMQ's Erlang cookie): a follower proves it
    /// knows it before the leader sends it anything. Empty: followers are not checked.
    pub secret: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_name: String::new(),
            name: "warren".to_owned(),
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            replication_listen: "0.0.0.0:25672".to_owned(),
            advertise: String::new(),
            min_insync_replicas: 2,
            lease_ttl: 3,
            ack_timeout_ms: 2000,
            partition_handling: String::new(),
            secret: String::new(),
        }
    }
}

impl ClusterConfig {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        !self.node_name.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementConfig {
    /// The management HTTP API (RabbitMQ's rabbitmq_management, `/api/...`), host:port;
    /// empty: off. Env: WARREN_MANAGEMENT_LISTEN.
    pub listen: String,
    /// The same API over HTTPS with the `[tls]` certificate settings, host:port; empty:
    /// off. RabbitMQ's management.ssl.port (15671). Env: WARREN_MANAGEMENT_TLS_LISTEN.
    pub tls_listen: String,
    /// The largest request body taken, in bytes (a definitions import is the big one).
    /// RabbitMQ's management.http.max_body_size, same default.
    pub max_body_size: u64,
    /// Seconds a client has to send a request's body once its head has arrived; then
    /// 408 and the connection is closed (a body trickled a byte at a time would hold a
    /// socket and a task for ever).
    pub body_timeout: u64,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            listen: "0.0.0.0:15672".to_owned(),
            tls_listen: String::new(),
            max_body_size: 20_000_000,
            body_timeout: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus endpoint (`/metrics`, `/metrics/per-object`), host:port; empty: off.
    /// RabbitMQ's rabbitmq_prometheus port. Env: WARREN_METRICS_LISTEN.
    pub listen: String,
    /// The same endpoint over HTTPS with the `[tls]` certificate settings, host:port;
    /// empty: off. RabbitMQ's prometheus.ssl.port (15691). Env: WARREN_METRICS_TLS_LISTEN.
    pub tls_listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "0.0.0.0:15692".to_owned(),
            tls_listen: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Listener address, host:port. Env: WARREN_AMQP_LISTEN.
    pub listen: String,
    /// Highest channel number offered in connection.tune.
    pub channel_max: u16,
    /// Largest frame offered in connection.tune, bytes (min 4096).
    pub frame_max: u32,
    /// Heartbeat interval offered in connection.tune, seconds (0 disables).
    pub heartbeat: u16,
    /// Largest message body accepted, bytes (RabbitMQ 3.x default: 128 MiB).
    pub max_message_size: u64,
    /// Seconds a client has to complete the handshake.
    pub handshake_timeout: u64,
    /// Milliseconds a delivery may stay unacknowledged (RabbitMQ's consumer_timeout,
    /// default 30 minutes; 0 disables). Queues override it with `x-consumer-timeout`.
    pub consumer_timeout: u64,
    /// What a consumer timeout does.
    pub consumer_timeout_action: ConsumerTimeoutAction,
    /// Back-pressure: a connection whose publishes leave a queue with more than this
    /// many messages waiting in its mailbox (sent, not yet taken by the queue) stops
    /// being read, its state `flow`, until the mailbox is below `flow_low_messages`.
    /// 0 turns it off. See `queue/flow.rs` for the choice of defaults.
    pub flow_high_messages: u64,
    /// Where a throttled connection is read again (at most `flow_high_messages`).
    pub flow_low_messages: u64,
    /// Connections the node accepts in all (RabbitMQ's connection_max; 0 = no limit).
    /// One more is refused at connection.open with 530 NOT_ALLOWED.
    pub connection_max: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsConfig {
    pub vhost: String,
    pub user: String,
    pub password: String,
    /// Users that may only connect from loopback addresses (RabbitMQ's loopback_users).
    pub loopback_users: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefinitionsConfig {
    /// A definitions file (RabbitMQ's JSON export) imported at boot; empty for none.
    /// RabbitMQ's `load_definitions`. Env: WARREN_DEFINITIONS_LOAD_FILE.
    pub load_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmsConfig {
    /// Publishers are blocked above this fraction of the machine's (or cgroup's) memory.
    pub memory_high_watermark: f64,
    /// An absolute limit in bytes instead of the fraction (0: use the fraction).
    pub memory_high_watermark_absolute: u64,
    /// Publishers are blocked when the data directory's disk has less free space, bytes.
    pub disk_free_limit: u64,
    /// How often usage is sampled, milliseconds: at most 100, and more often while
    /// memory grows towards the watermark (see alarm.rs).
    pub check_interval_ms: u64,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        AlarmsConfig {
            memory_high_watermark: 0.6,
            memory_high_watermark_absolute: 0,
            disk_free_limit: 50_000_000,
            check_interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Sync (fdatasync) persistent messages before confirming them. Turning it off
    /// trades crash safety for speed: confirmed messages may be lost on a crash.
    pub fsync: bool,
    /// Size at which the message journal starts a new segment file, bytes.
    pub segment_size: u64,
    /// A queue keeps the bodies of about this many of its oldest ready messages in memory
    /// (more while consumers take them fast: see `queue/pace.rs`); later ones stay only on
    /// disk (an index entry in memory) and are read back as the queue drains, so a deep
    /// backlog costs disk, not RAM.
    pub resident_messages: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: true,
            segment_size: 64 * 1024 * 1024,
            resident_messages: 4096,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter: error, warn, info, debug, trace, or a full directive list.
    pub level: String,
    /// Log to this file (appending) instead of stderr; empty: stderr. SIGHUP reopens it,
    /// for log rotation. Env: WARREN_LOG_FILE.
    pub file: String,
}

/// The amqps listener, RabbitMQ's `listeners.ssl` and `ssl_options`. TLS is on when
/// `certfile` is set; the settings are checked here, the files when the broker starts
/// (and again on SIGHUP, by the broker's `tls` module).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// amqps listener address, host:port. Env: WARREN_TLS_LISTEN.
    pub listen: String,
    /// The server's certificate chain, PEM (leaf first). Empty: no TLS listener.
    pub certfile: String,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: String,
    /// CA certificates that client certificates must chain to, PEM.
    pub cacertfile: String,
    /// Whether client certificates are asked for (RabbitMQ's `ssl_options.verify`).
    pub verify: TlsVerify,
    /// With verify_peer: refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
    /// Protocol versions offered: `tlsv1.3`, `tlsv1.2`.
    pub versions: Vec<String>,
    /// Cipher suites offered (IANA or OpenSSL names); empty: rustls' defaults.
    pub ciphers: Vec<String>,
    /// The user name SASL EXTERNAL takes from a client certificate:
    /// `distinguished_name` (the subject, as RabbitMQ formats it) or `common_name`.
    pub ssl_cert_login_from: String,
    /// Seconds a client has to complete the TLS handshake (RabbitMQ: 5).
    pub handshake_timeout: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: "0.0.0.0:5671".to_owned(),
            certfile: String::new(),
            keyfile: String::new(),
            cacertfile: String::new(),
            verify: TlsVerify::VerifyNone,
            fail_if_no_peer_cert: false,
            versions: vec!["tlsv1.3".to_owned(), "tlsv1.2".to_owned()],
            ciphers: Vec::new(),
            ssl_cert_login_from: "distinguished_name".to_owned(),
            handshake_timeout: 5,
        }
    }
}

impl TlsConfig {
    /// Whether an amqps listener is configured.
    pub fn enabled(&self) -> bool {
        !self.certfile.is_empty()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            amqp: AmqpConfig::default(),
            defaults: DefaultsConfig::default(),
            store: StoreConfig::default(),
            alarms: AlarmsConfig::default(),
            definitions: DefinitionsConfig::default(),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            metrics: MetricsConfig::default(),
            management: ManagementConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            listen: "0.0.0.0:5672".to_owned(),
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            handshake_timeout: 10,
            consumer_timeout: 1_800_000,
            consumer_timeout_action: ConsumerTimeoutAction::Requeue,
            flow_high_messages: 20_000,
            flow_low_messages: 10_000,
            connection_max: 0,
        }
    }
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        DefaultsConfig {
            vhost: "/".to_owned(),
            user: "guest".to_owned(),
            password: "guest".to_owned(),
            loopback_users: vec!["guest".to_owned()],
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            file: String::new(),
        }
    }
}

/// Where an override came from, for error messages.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(v) => write!(f, "command-line flag {v}"),
        }
    }
}

#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A `key = value` override with a dotted key (`amqp.frame_max`).
pub struct Override {
    pub key: String,
    pub value: String,
    pub source: Source,
}

impl Config {
    /// Load: defaults, then `file`, then `overrides` in order (env first, then flags).
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        let mut table = match file {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| file_error(path, &text, &e))?;
                // Type and unknown-key errors, reported against the file itself.
                toml::from_str::<Config>(&text).map_err(|e| file_error(path, &text, &e))?;
                table
            }
        };
        let defaults =
            toml::Table::try_from(Config::default()).map_err(|e| ConfigError(e.to_string()))?;
        for o in overrides {
            apply(&mut table, &defaults, o)?;
            // A value of the right TOML type can still be refused (a name none of a
            // setting's choices has): say which setting, as for a type error.
            if let Err(e) = toml::Value::Table(table.clone()).try_into::<Config>() {
                return Err(ConfigError(format!(
                    "{}: invalid value '{}' for {}: {}",
                    o.source,
                    o.value,
                    o.key,
                    e.message()
                )));
            }
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("invalid configuration: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad =
            |key: &str, why: &str| Err(ConfigError(format!("invalid value for {key}: {why}")));
        if self.cluster.enabled() {
            if self.cluster.etcd_endpoints.is_empty() {
                return bad("cluster.etcd_endpoints", "a cluster needs at least one");
            }
            if self.cluster.min_insync_replicas == 0 {
                return bad("cluster.min_insync_replicas", "must be at least 1");
            }
            if self.cluster.lease_ttl < 2 {
                return bad("cluster.lease_ttl", "must be at least 2 seconds");
            }
        }
        if self.amqp.frame_max != 0 && self.amqp.frame_max < warren_protocol::frame::FRAME_MIN_SIZE
        {
            return bad(
                "amqp.frame_max",
                "must be at least 4096 (or 0 for no limit)",
            );
        }
        if self.amqp.listen.is_empty() {
            // RabbitMQ's `listeners.tcp = none`: TLS only.
            if !self.tls.enabled() {
                return bad(
                    "amqp.listen",
                    "empty turns the plain AMQP listener off, which needs TLS (tls.certfile) on",
                );
            }
        } else if self.amqp.listen.parse::<std::net::SocketAddr>().is_err()
            && !self.amqp.listen.contains(':')
        {
            return bad("amqp.listen", "expected host:port");
        }
        if !self.metrics.listen.is_empty() && !self.metrics.listen.contains(':') {
            return bad(
                "metrics.listen",
                "expected host:port, or empty to turn it off",
            );
        }
        if !self.management.listen.is_empty() && !self.management.listen.contains(':') {
            return bad(
                "management.listen",
                "expected host:port, or empty to turn it off",
            );
        }
        for (key, listen) in [
            ("metrics.tls_listen", &self.metrics.tls_listen),
            ("management.tls_listen", &self.management.tls_listen),
        ] {
            if listen.is_empty() {
                continue;
            }
            if !listen.contains(':') {
                return bad(key, "expected host:port, or empty to turn it off");
            }
            if !self.tls.enabled() {
                return bad(
                    key,
                    "HTTPS uses the [tls] certificate: set tls.certfile and tls.keyfile",
                );
            }
        }
        if self.amqp.max_message_size == 0 || self.amqp.max_message_size > 512 * 1024 * 1024 {
            return bad(
                "amqp.max_message_size",
                "must be between 1 and 536870912 bytes",
            );
        }
        if !(4096..=1 << 30).contains(&self.store.segment_size) {
            return bad(
                "store.segment_size",
                "must be between 4096 and 1073741824 bytes",
            );
        }
        if self.store.resident_messages == 0 {
            return bad("store.resident_messages", "must be at least 1");
        }
        if self.defaults.vhost.is_empty() {
            return bad("defaults.vhost", "must not be empty");
        }
        self.validate_tls()
    }

    /// The `[tls]` settings that can be judged without reading the files.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| {
            Err(ConfigError(format!("invalid value for tls.{key}: {why}")))
        };
        let t = &self.tls;
        if !["distinguished_name", "common_name"].contains(&t.ssl_cert_login_from.as_str()) {
            return bad(
                "ssl_cert_login_from",
                format!(
                    "'{}': expected distinguished_name or common_name",
                    t.ssl_cert_login_from
                ),
            );
        }
        if let Err(e) = crate::suites::protocol_versions(&t.versions) {
            return bad("versions", e);
        }
        if let Err(e) = crate::suites::cipher_suites(&t.ciphers, &t.versions) {
            return bad("ciphers", e);
        }
        if t.handshake_timeout == 0 {
            return bad("handshake_timeout", "must be at least 1 second".to_owned());
        }
        if !t.enabled() {
            return Ok(());
        }
        if t.listen.parse::<std::net::SocketAddr>().is_err() && !t.listen.contains(':') {
            return bad("listen", format!("'{}': expected host:port", t.listen));
        }
        if t.keyfile.is_empty() {
            return bad("keyfile", "required when tls.certfile is set".to_owned());
        }
        if t.verify == TlsVerify::VerifyPeer && t.cacertfile.is_empty() {
            return bad(
                "cacertfile",
                "required with tls.verify = \"verify_peer\" (the CAs client certificates must chain to)".to_owned(),
            );
        }
        if t.fail_if_no_peer_cert && t.verify != TlsVerify::VerifyPeer {
            return bad(
                "fail_if_no_peer_cert",
                "true needs tls.verify = \"verify_peer\" (with verify_none no certificate is asked for)".to_owned(),
            );
        }
        Ok(())
    }

    /// `WARREN_<SECTION>_<KEY>` (or `WARREN_<KEY>` for top-level keys) for every key the
    /// configuration has, plus RabbitMQ's RABBITMQ_DEFAULT_USER/PASS/VHOST.
    pub fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<Override> {
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        let mut known: Vec<(String, String)> = Vec::new();
        for (k, v) in &defaults {
            match v {
                toml::Value::Table(t) => {
                    for sub in t.keys() {
                        known.push((
                            format!("WARREN_{}_{}", k, sub).to_uppercase(),
                            format!("{k}.{sub}"),
                        ));
                    }
                }
                _ => known.push((format!("WARREN_{k}").to_uppercase(), k.clone())),
            }
        }
        let rabbit = [
            ("RABBITMQ_DEFAULT_USER", "defaults.user"),
            ("RABBITMQ_DEFAULT_PASS", "defaults.password"),
            ("RABBITMQ_DEFAULT_VHOST", "defaults.vhost"),
        ];
        let vars: Vec<(String, String)> = vars.collect();
        let mut out = Vec::new();
        // RabbitMQ's names first so that WARREN_* wins when both are set.
        for (var, key) in rabbit {
            if let Some((_, v)) = vars.iter().find(|(n, _)| n == var) {
                out.push(Override {
                    key: key.to_owned(),
                    value: v.clone(),
                    source: Source::Env(var.to_owned()),
                });
            }
        }
        for (name, value) in &vars {
            if let Some((_, key)) = known.iter().find(|(env, _)| env == name) {
                out.push(Override {
                    key: key.clone(),
                    value: value.clone(),
                    source: Source::Env(name.clone()),
                });
            }
        }
        out
    }
}

/// A TOML error in the config file as one line: the file, the line, the dotted key, what
/// is wrong, and where every key is documented. (toml's own Display spans several lines
/// with a source excerpt, which reads badly in the journal.)
fn file_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim_end_matches('.');
    let Some(span) = e.span() else {
        return ConfigError(format!("config file {}: {message}", path.display()));
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    // The key on that line, qualified by the [section] above it.
    let section = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !line.starts_with('['));
    let what = match (section, key) {
        (Some(s), Some(k)) => format!("{s}.{k}: "),
        (None, Some(k)) => format!("{k}: "),
        _ => String::new(),
    };
    let hint = if message.starts_with("unknown field") {
        "remove or fix the key"
    } else {
        "fix the value"
    };
    ConfigError(format!(
        "config file {} line {line_no}: {what}{message}; {hint} (config/warren.toml documents every key and its type)",
        path.display()
    ))
}

/// Set one dotted key, typed after the default value of that key.
fn apply(table: &mut toml::Table, defaults: &toml::Table, o: &Override) -> Result<(), ConfigError> {
    let unknown = || {
        ConfigError(format!(
            "{}: unknown configuration key '{}'",
            o.source, o.key
        ))
    };
    let (section, key) = match o.key.split_once('.') {
        Some((s, k)) => (Some(s), k),
        None => (None, o.key.as_str()),
    };
    let default = match section {
        Some(s) => defaults
            .get(s)
            .and_then(|t| t.as_table())
            .and_then(|t| t.get(key)),
        None => defaults.get(key).filter(|v| !v.is_table()),
    }
    .ok_or_else(unknown)?;
    let bad = |what: &str| {
        ConfigError(format!(
            "{}: invalid value '{}' for {}: expected {what}",
            o.source, o.value, o.key
        ))
    };
    let value = match default {
        toml::Value::Integer(_) => {
            toml::Value::Integer(o.value.trim().parse().map_err(|_| bad("an integer"))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(o.value.trim().parse().map_err(|_| bad("a number"))?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(o.value.trim().parse().map_err(|_| bad("true or false"))?)
        }
        toml::Value::Array(_) => toml::Value::Array(
            o.value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(o.value.clone()),
    };
    let target = match section {
        Some(s) => table
            .entry(s.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| bad("a table"))?,
        None => table,
    };
    target.insert(key.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<Override> {
        Config::env_overrides(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    #[test]
    fn defaults_match_rabbitmq() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(
            (c.amqp.channel_max, c.amqp.frame_max, c.amqp.heartbeat),
            (2047, 131072, 60)
        );
        assert_eq!(c.defaults.loopback_users, vec!["guest"]);
    }

    #[test]
    fn env_overrides_are_typed_and_named() {
        let c = Config::load(
            None,
            &env(&[("WARREN_AMQP_HEARTBEAT", "5"), ("WARREN_DATA_DIR", "/x")]),
        )
        .unwrap();
        assert_eq!(c.amqp.heartbeat, 5);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        let e = Config::load(None, &env(&[("WARREN_AMQP_HEARTBEAT", "soon")])).unwrap_err();
        assert!(
            e.0.contains("WARREN_AMQP_HEARTBEAT") && e.0.contains("amqp.heartbeat"),
            "{e}"
        );
    }

    #[test]
    fn settings_with_a_set_of_names_are_typed_and_a_wrong_name_is_named() {
        let c = Config::load(
            None,
            &env(&[
                ("WARREN_AMQP_CONSUMER_TIMEOUT_ACTION", "close_channel"),
                ("WARREN_TLS_VERIFY", "verify_peer"),
                ("WARREN_TLS_CACERTFILE", "/ca.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.amqp.consumer_timeout_action, c.tls.verify),
            (ConsumerTimeoutAction::CloseChannel, TlsVerify::VerifyPeer)
        );
        let e = Config::load(None, &env(&[("WARREN_TLS_VERIFY", "verify_maybe")])).unwrap_err();
        assert!(
            e.0.contains("WARREN_TLS_VERIFY")
                && e.0.contains("tls.verify")
                && e.0.contains("verify_none"),
            "{e}"
        );
    }

    #[test]
    fn float_settings_can_be_overridden() {
        let c = Config::load(
            None,
            &env(&[("WARREN_ALARMS_MEMORY_HIGH_WATERMARK", "0.4")]),
        )
        .unwrap();
        assert_eq!(c.alarms.memory_high_watermark, 0.4);
        let e = Config::load(
            None,
            &env(&[("WARREN_ALARMS_MEMORY_HIGH_WATERMARK", "lots")]),
        )
        .unwrap_err();
        assert!(e.0.contains("expected a number"), "{e}");
    }

    #[test]
    fn rabbitmq_default_user_is_honoured_but_warren_wins() {
        let c = Config::load(None, &env(&[("RABBITMQ_DEFAULT_USER", "bob")])).unwrap();
        assert_eq!(c.defaults.user, "bob");
        let c = Config::load(
            None,
            &env(&[
                ("RABBITMQ_DEFAULT_USER", "bob"),
                ("WARREN_DEFAULTS_USER", "amy"),
            ]),
        )
        .unwrap();
        assert_eq!(c.defaults.user, "amy");
    }

    #[test]
    fn bad_file_names_the_key_and_file() {
        let dir = std::env::temp_dir().join(format!("warren-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[amqp]\nframe_maxx = 3\n").unwrap();
        let e = Config::load(Some(&path), &[]).unwrap_err();
        assert!(
            e.0.contains("frame_maxx") && e.0.contains("bad.toml"),
            "{e}"
        );
        assert!(
            e.0.contains("line 2: amqp.frame_maxx: unknown field"),
            "{e}"
        );
        assert!(!e.0.contains('\n'), "one line: {e}");
        std::fs::write(&path, "[amqp]\n# comment\nheartbeat = \"soon\"\n").unwrap();
        let e = Config::load(Some(&path), &[]).unwrap_err();
        assert!(e.0.contains("line 3: amqp.heartbeat: invalid type"), "{e}");
        assert!(!e.0.contains('\n'), "one line: {e}");
        std::fs::write(&path, "data_dirr = \"/x\"\n").unwrap();
        let e = Config::load(Some(&path), &[]).unwrap_err();
        assert!(e.0.contains("line 1: data_dirr: unknown field"), "{e}");
        std::fs::write(&path, "[amqp]\nframe_max = 100\n").unwrap();
        let e = Config::load(Some(&path), &[]).unwrap_err();
        assert!(e.0.contains("amqp.frame_max"), "{e}");
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        // The annotated file at the workspace root.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/warren.toml");
        let c = Config::load(Some(&path), &[]).unwrap();
        assert_eq!(
            toml::to_string(&c).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
    }
}
