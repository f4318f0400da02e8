//! Command-line flags (PerfTest's and lavinmqperf's names) and the scenario presets.

use clap::{ArgAction, Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "warren-perf",
    version,
    about = "Load generator for AMQP 0-9-1 brokers (warren, RabbitMQ, ...)",
    // `-h` is PerfTest's URI flag; help is `--help` only.
    disable_help_flag = true,
    // A preset's flags come first on the command line; later flags override them.
    args_override_self = true
)]
pub struct Args {
    /// Broker URI; the tool connects nowhere else.
    #[arg(
        long,
        short = 'h',
        default_value = "amqp://guest:guest@127.0.0.1:5672/"
    )]
    pub uri: String,
    /// Producers (each on its own connection).
    #[arg(short = 'x', long = "producers", default_value_t = 1)]
    pub producers: u32,
    /// Consumers (each on its own connection).
    #[arg(short = 'y', long = "consumers", default_value_t = 1)]
    pub consumers: u32,
    /// Message body size in bytes (at least 16: send time and sequence number).
    #[arg(short = 's', long = "size", default_value_t = 16)]
    pub size: usize,
    /// Consumers use autoack (no-ack).
    #[arg(short = 'a', long = "autoack")]
    pub autoack: bool,
    /// Consumer prefetch (basic.qos); 0 = unlimited.
    #[arg(short = 'q', long = "qos", default_value_t = 0)]
    pub prefetch: u16,
    /// Manual ack: one basic.ack(multiple) per N deliveries (capped at -q).
    #[arg(long = "multi-ack", default_value_t = 1)]
    pub multi_ack: u64,
    /// Publisher confirms with at most N unconfirmed per producer (0 = off).
    #[arg(short = 'c', long = "confirm", default_value_t = 0)]
    pub confirm: u64,
    /// `persistent`: delivery-mode 2 and durable queues/exchange.
    #[arg(short = 'f', long = "flag")]
    pub flag: Option<String>,
    /// Durable queues and exchange without persistent messages.
    #[arg(long)]
    pub durable: bool,
    /// Queue name (default: unique per run, deleted at the end); with several queues
    /// the names are NAME-0..NAME-(N-1).
    #[arg(short = 'u', long = "queue")]
    pub queue: Option<String>,
    /// Number of queues: producer i publishes to queue i%N, consumer j reads queue j%N.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Exchange to publish through (default: the default exchange, or a generated
    /// one for -t fanout/topic/headers).
    #[arg(short = 'e', long = "exchange")]
    pub exchange: Option<String>,
    /// Exchange type.
    #[arg(short = 't', long = "type", value_enum, default_value_t = ExchangeType::Direct)]
    pub exchange_type: ExchangeType,
    /// Queues bound to a fanout/headers exchange (each gets a copy of every message).
    #[arg(long = "bind-count", alias = "fanout")]
    pub bind_count: Option<u32>,
    /// Rate limit per producer, messages/s (0 = unlimited).
    #[arg(short = 'r', long = "rate", default_value_t = 0.0)]
    pub rate: f64,
    /// Run time in seconds, warm-up included (default 10, or until the counts are
    /// reached when --pmessages/--cmessages are given).
    #[arg(short = 'z', long = "time")]
    pub time: Option<f64>,
    /// Seconds at the start left out of the rates and the latency.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Messages per producer.
    #[arg(short = 'C', long = "pmessages", default_value_t = 0)]
    pub pmessages: u64,
    /// Messages per consumer.
    #[arg(short = 'D', long = "cmessages", default_value_t = 0)]
    pub cmessages: u64,
    /// Publish everything first, then start the consumers (backlog then drain).
    #[arg(long)]
    pub drain: bool,
    /// Extra idle connections (one channel each) held open for the run; with
    /// --broker-pid the report has the broker's RSS per connection.
    #[arg(long, default_value_t = 0)]
    pub idle: u32,
    /// The broker's PID on this host: CPU% from /proc/PID/stat, RSS from /proc/PID/status.
    #[arg(long = "broker-pid")]
    pub broker_pid: Option<u32>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// A preset from the scenario table (other flags override it).
    #[arg(long, value_enum, ignore_case = true)]
    pub scenario: Option<Scenario>,
    /// Run the same flags against this second broker too and print the ratios.
    #[arg(long)]
    pub compare: Option<String>,
    /// The second broker's PID (for its CPU and RSS).
    #[arg(long = "compare-pid")]
    pub compare_pid: Option<u32>,
    /// auto: delete generated queues/exchange; yes: also named ones; no: keep all.
    #[arg(long, value_enum, default_value_t = Cleanup::Auto)]
    pub cleanup: Cleanup,
    /// Use existing queues and exchange as they are.
    #[arg(long = "no-declare")]
    pub no_declare: bool,
    /// Producer write size in bytes (several messages per write).
    #[arg(long = "batch-bytes", default_value_t = 64 * 1024)]
    pub batch_bytes: usize,
    /// Consumer read buffer in bytes.
    #[arg(long = "read-bytes", default_value_t = 256 * 1024)]
    pub read_bytes: usize,
    /// Seconds to wait for a connection, an RPC answer, a confirm or (with counts)
    /// a delivery before giving up.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeType {
    pub fn name(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
            ExchangeType::Headers => "headers",
        }
    }
    /// Every bound queue gets every message (the routing key plays no part).
    pub fn broadcasts(self) -> bool {
        matches!(self, ExchangeType::Fanout | ExchangeType::Headers)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    Auto,
    Yes,
    No,
}

/// The scenario table of issue #9.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "UPPER")]
pub enum Scenario {
    A,
    B,
    C,
    D,
    E,
    F,
    G,
    H,
    I,
}

impl Scenario {
    /// The preset's flags; they are placed before the user's, which win.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            // throughput, 16 B, 1 -> 1, autoack
            Scenario::A => &["-x1", "-y1", "-s16", "-a"],
            // throughput, 1 KB
            Scenario::B => &["-x1", "-y1", "-s1024", "-a"],
            // manual ack, one ack per 100, prefetch 1000
            Scenario::C => &["-x1", "-y1", "-s16", "-q1000", "--multi-ack", "100"],
            // persistent 1 KB with confirms, manual ack
            Scenario::D => &[
                "-x1",
                "-y1",
                "-s1024",
                "-f",
                "persistent",
                "-c1000",
                "-q1000",
                "--multi-ack",
                "100",
            ],
            // fanout to 10 queues, one consumer each
            Scenario::E => &[
                "-x1",
                "-y10",
                "-s16",
                "-a",
                "-t",
                "fanout",
                "--bind-count",
                "10",
            ],
            // 100 producers, 100 queues, 100 consumers at 100 msg/s each
            Scenario::F => &["-x100", "-y100", "--queues", "100", "-s16", "-a", "-r100"],
            // latency at 1000 msg/s
            Scenario::G => &["-x1", "-y1", "-s16", "-a", "-r1000"],
            // idle connections: broker RSS per connection (RabbitMQ's default fd
            // limit allows ~800 connections, so 500)
            Scenario::H => &["-x0", "-y0", "--idle", "500", "-z5"],
            // 1M x 16 B backlog, then drain: RSS per message and drain rate
            Scenario::I => &[
                "-x1",
                "-y1",
                "-s16",
                "-c1000",
                "-q1000",
                "--multi-ack",
                "100",
                "--pmessages",
                "1000000",
                "--cmessages",
                "1000000",
                "--drain",
                "--timeout",
                "30",
            ],
        }
    }
}

/// Find `--scenario X` (or `--scenario=X`) in the raw arguments.
fn scenario_in(args: &[String]) -> Option<Scenario> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = if a == "--scenario" {
            it.next().map(String::as_str)
        } else {
            a.strip_prefix("--scenario=")
        };
        if let Some(v) = v {
            return Scenario::from_str(v, true).ok();
        }
    }
    None
}

impl Args {
    /// Parse `argv` (program name first), expanding a `--scenario` preset in front of
    /// the user's own flags so that those override it.
    pub fn parse_with_presets(argv: Vec<String>) -> Result<Args, clap::Error> {
        let mut full: Vec<String> = argv.iter().take(1).cloned().collect();
        if let Some(s) = scenario_in(&argv) {
            full.extend(s.flags().iter().map(|f| f.to_string()));
        }
        full.extend(argv.into_iter().skip(1));
        let args = Args::try_parse_from(full)?;
        args.validate()
            .map_err(|m| clap::Error::raw(clap::error::ErrorKind::ValueValidation, m + "\n"))?;
        Ok(args)
    }

    fn validate(&self) -> Result<(), String> {
        if self.size < 16 {
            return Err(
                "-s must be at least 16 (the body carries a timestamp and a sequence number)"
                    .into(),
            );
        }
        if let Some(f) = &self.flag {
            if f != "persistent" {
                return Err(format!("-f {f:?}: only `persistent` is supported"));
            }
        }
        if self.multi_ack == 0 {
            return Err("--multi-ack must be at least 1".into());
        }
        if self.queues == 0 || self.bind_count == Some(0) {
            return Err("--queues and --bind-count must be at least 1".into());
        }
        if self.producers > 65_535 {
            return Err("at most 65535 producers (the id is 16 bits of the stamp)".into());
        }
        if self.rate < 0.0 || self.warmup < 0.0 || self.time.is_some_and(|t| t <= 0.0) {
            return Err("-r, -z and --warmup must be positive".into());
        }
        if self.time.is_some_and(|t| t <= self.warmup) {
            return Err("-z must be longer than --warmup".into());
        }
        if self.timeout <= 0.0 {
            return Err("--timeout must be positive".into());
        }
        Ok(())
    }

    /// The URI with the password masked, for reports.
    pub fn uri_without_password(&self) -> String {
        match (self.uri.find("://"), self.uri.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let userinfo = &self.uri[s + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{}{user}:***{}", &self.uri[..s + 3], &self.uri[at..])
            }
            _ => self.uri.clone(),
        }
    }

    pub fn persistent(&self) -> bool {
        self.flag.as_deref() == Some("persistent")
    }

    /// Messages are counted rather than timed.
    pub fn counted(&self) -> bool {
        (self.producers == 0 || self.pmessages > 0)
            && (self.consumers == 0 || self.cmessages > 0)
            && (self.pmessages > 0 || self.cmessages > 0)
    }

    /// The run time: -z, else 10 s unless the run is counted (then unbounded; each
    /// role still gives up after --timeout without progress).
    pub fn run_time(&self) -> Option<f64> {
        match self.time {
            Some(t) => Some(t),
            None if self.counted() => None,
            None => Some(10.0),
        }
    }

    /// How many queues the run uses.
    pub fn queue_count(&self) -> u32 {
        if self.exchange_type.broadcasts() {
            self.bind_count.unwrap_or(self.queues)
        } else {
            self.queues
        }
    }

    /// Manual-ack batch, capped at the prefetch so a consumer never waits for itself.
    pub fn effective_multi_ack(&self) -> u64 {
        if self.prefetch > 0 {
            self.multi_ack.min(self.prefetch as u64)
        } else {
            self.multi_ack
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, clap::Error> {
        let mut v = vec!["warren-perf".to_string()];
        v.extend(s.split_whitespace().map(String::from));
        Args::parse_with_presets(v)
    }

    #[test]
    fn perftest_short_flags() {
        let a = parse("-h amqp://u:p@h:1/ -x2 -y 3 -s 1024 -a -q 100 -c 50 -f persistent -u q -z 5 -r 10.5 -C 7 -D 8").unwrap();
        assert_eq!(a.uri, "amqp://u:p@h:1/");
        assert_eq!((a.producers, a.consumers, a.size), (2, 3, 1024));
        assert!(a.autoack && a.persistent());
        assert_eq!((a.prefetch, a.confirm, a.rate), (100, 50, 10.5));
        assert_eq!((a.queue.as_deref(), a.time), (Some("q"), Some(5.0)));
        assert_eq!((a.pmessages, a.cmessages), (7, 8));
    }

    #[test]
    fn defaults_run_ten_seconds_one_to_one() {
        let a = parse("").unwrap();
        assert_eq!((a.producers, a.consumers, a.size), (1, 1, 16));
        assert_eq!(a.run_time(), Some(10.0));
        assert_eq!(a.exchange_type, ExchangeType::Direct);
        assert!(!a.counted());
        let a = parse("--pmessages 10 --cmessages 10").unwrap();
        assert!(a.counted());
        assert_eq!(a.run_time(), None);
        // a count for one side only is still timed
        assert!(!parse("--pmessages 10").unwrap().counted());
        assert!(parse("-y0 --pmessages 10").unwrap().counted());
    }

    #[test]
    fn scenario_presets_yield_to_explicit_flags() {
        let a = parse("--scenario E").unwrap();
        assert_eq!((a.consumers, a.exchange_type), (10, ExchangeType::Fanout));
        assert_eq!(a.queue_count(), 10);
        let a = parse("--scenario C -q 50").unwrap();
        assert_eq!((a.prefetch, a.multi_ack), (50, 100));
        assert_eq!(a.effective_multi_ack(), 50);
        let a = parse("--scenario=h --idle 20").unwrap();
        assert_eq!((a.idle, a.producers, a.time), (20, 0, Some(5.0)));
        let a = parse("--scenario I").unwrap();
        assert!(a.drain && a.counted());
        assert_eq!(a.scenario, Some(Scenario::I));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse("-s 8").is_err());
        assert!(parse("-f transient").is_err());
        assert!(parse("-t nonsense").is_err());
        assert!(parse("--multi-ack 0").is_err());
        assert!(parse("-z 1 --warmup 2").is_err());
        assert!(parse("--scenario Z").is_err());
    }
}
