//! `warrenctl`: rabbitmqctl's commands and flags for warren, so that a runbook written
//! for RabbitMQ works after replacing `rabbitmqctl` with `warrenctl`.
//!
//! It talks to the broker over the control socket in the data directory (found the way
//! the broker finds it: `--data-dir`, `-c CONFIG`, `WARREN_DATA_DIR`, `WARREN_CONFIG`).
//! RabbitMQ's node flags (`-n`, `--longnames`) are accepted and ignored: there is one
//! broker per data directory and no node names.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;
use warren_config::{Config, Override, Source};
use warren_ctl::{socket_path, Request, Response};

/// rabbitmqctl's exit codes (sysexits).
const EX_USAGE: u8 = 64;
/// `diagnostics` found something of warning level (see DIAGNOSTICS_HELP).
const EX_FINDINGS: u8 = 1;
const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;
const EX_CANTCREAT: u8 = 73;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;

/// name, arguments usage, (min, max) positional arguments, informational line (`{0}`,
/// `{1}`: arguments, `{vhost}`), summary.
type Spec = (
    &'static str,
    &'static str,
    (usize, usize),
    &'static str,
    &'static str,
);

const COMMANDS: &[Spec] = &[
    ("status", "", (0, 0), "Status of node warren ...", "Displays status of the broker"),
    ("await_startup", "", (0, 0), "", "Waits for the broker to accept commands (--timeout seconds)"),
    ("diagnostics", "[--interval <seconds>]", (0, 0), "Running diagnostics on node warren ...", "Checks listeners, alarms, queues with messages but no consumer, growing backlogs and connections with many channels, with advice; exit status 1 if anything needs a look"),
    ("doctor", "[--interval <seconds>]", (0, 0), "Running diagnostics on node warren ...", "Same as diagnostics"),
    ("add_user", "<username> <password>", (1, 2), "Adding user \"{0}\" ...", "Creates a user (password read from stdin if not given)"),
    ("delete_user", "<username>", (1, 1), "Deleting user \"{0}\" ...", "Removes a user and their permissions"),
    ("change_password", "<username> <password>", (2, 2), "Changing password for user \"{0}\" ...", "Changes a user's password"),
    ("clear_password", "<username>", (1, 1), "Clearing password for user \"{0}\" ...", "Disables password login for a user"),
    ("authenticate_user", "<username> <password>", (2, 2), "Authenticating user \"{0}\" ...", "Checks a user's password; non-zero exit if wrong"),
    ("set_user_tags", "<username> [<tag> ...]", (1, usize::MAX), "Setting tags for user \"{0}\" to [{tags}] ...", "Sets user tags (administrator, monitoring, policymaker, management, impersonator)"),
    ("list_users", "", (0, 0), "Listing users ...", "Lists users and their tags"),
    ("set_user_limits", "<username> <json>", (2, 2), "Setting user limits to \"{1}\" for user \"{0}\" ...", "Sets max-connections / max-channels for a user"),
    ("clear_user_limits", "<username> <limit>|all", (2, 2), "Clearing \"{1}\" limit for user \"{0}\" ...", "Clears user limits"),
    ("list_user_limits", "[<username>]", (0, 1), "Listing user limits ...", "Lists user limits"),
    ("add_vhost", "<vhost> [--description <d>] [--tags <t,...>]", (1, 1), "Adding vhost \"{0}\" ...", "Creates a virtual host"),
    ("delete_vhost", "<vhost>", (1, 1), "Deleting vhost \"{0}\" ...", "Deletes a virtual host, its queues and permissions"),
    ("list_vhosts", "[<column> ...]", (0, usize::MAX), "Listing vhosts ...", "Lists virtual hosts (columns: name description tags tracing)"),
    ("set_vhost_limits", "[-p <vhost>] <json>", (1, 1), "Setting vhost limits to \"{0}\" for vhost \"{vhost}\" ...", "Sets max-connections / max-queues for a vhost"),
    ("clear_vhost_limits", "[-p <vhost>]", (0, 0), "Clearing vhost \"{vhost}\" limits ...", "Clears vhost limits"),
    ("list_vhost_limits", "[-p <vhost>] [--global]", (0, 0), "Listing limits for vhost \"{vhost}\" ...", "Lists vhost limits"),
    ("set_permissions", "[-p <vhost>] <username> <conf> <write> <read>", (4, 4), "Setting permissions for user \"{0}\" in vhost \"{vhost}\" ...", "Sets a user's permissions in a vhost"),
    ("clear_permissions", "[-p <vhost>] <username>", (1, 1), "Clearing permissions for user \"{0}\" in vhost \"{vhost}\" ...", "Revokes a user's permissions in a vhost"),
    ("list_permissions", "[-p <vhost>]", (0, 0), "Listing permissions for vhost \"{vhost}\" ...", "Lists permissions in a vhost"),
    ("list_user_permissions", "<username>", (1, 1), "Listing permissions for user \"{0}\" ...", "Lists a user's permissions in every vhost"),
    ("set_topic_permissions", "[-p <vhost>] <username> <exchange> <write> <read>", (4, 4), "Setting topic permissions on \"{1}\" for user \"{0}\" in vhost \"{vhost}\" ...", "Sets topic permissions (routing-key patterns) for an exchange"),
    ("clear_topic_permissions", "[-p <vhost>] <username> [<exchange>]", (1, 2), "Clearing topic permissions for user \"{0}\" in vhost \"{vhost}\" ...", "Clears topic permissions"),
    ("list_topic_permissions", "[-p <vhost>]", (0, 0), "Listing topic permissions for vhost \"{vhost}\" ...", "Lists topic permissions in a vhost"),
    ("list_user_topic_permissions", "<username>", (1, 1), "Listing topic permissions for user \"{0}\" ...", "Lists a user's topic permissions"),
    ("list_queues", "[-p <vhost>] [<column> ...]", (0, usize::MAX), "Timeout: 60.0 seconds ...\nListing queues for vhost {vhost} ...", "Lists queues (columns: name messages messages_ready messages_unacknowledged consumers durable auto_delete exclusive arguments ...)"),
    ("list_consumers", "[-p <vhost>] [<column> ...]", (0, usize::MAX), "Listing consumers in vhost {vhost} ...", "Lists consumers (columns: queue_name channel_pid consumer_tag ack_required prefetch_count active activity_status arguments exclusive)"),
    ("list_exchanges", "[-p <vhost>] [<column> ...]", (0, usize::MAX), "Listing exchanges for vhost {vhost} ...", "Lists exchanges (columns: name type durable auto_delete internal arguments)"),
    ("list_bindings", "[-p <vhost>] [<column> ...]", (0, usize::MAX), "Listing bindings for vhost {vhost}...", "Lists bindings"),
    ("list_connections", "[<column> ...]", (0, usize::MAX), "Listing connections ...", "Lists connections (columns: pid name user_provided_name user vhost host port peer_host peer_port channels state protocol connected_at ssl ssl_protocol ssl_cipher peer_cert_subject)"),
    ("list_channels", "[<column> ...]", (0, usize::MAX), "Listing channels ...", "Lists channels (columns: pid name connection number user vhost consumer_count messages_unacknowledged prefetch_count global_prefetch_count confirm transactional ...)"),
    ("purge_queue", "[-p <vhost>] <queue>", (1, 1), "Purging queue '{0}' in vhost '{vhost}' ...", "Removes all ready messages from a queue"),
    ("delete_queue", "[-p <vhost>] <queue> [--if-empty] [--if-unused]", (1, 1), "Deleting queue '{0}' on vhost '{vhost}' ...", "Deletes a queue"),
    ("close_connection", "<pid|name> <explanation>", (1, 2), "Closing connection {0}, reason: {1}...", "Closes a connection with 320 CONNECTION_FORCED"),
    ("export_definitions", "<path>|-", (1, 1), "Exporting definitions in JSON to a file at \"{0}\" ...", "Writes users, vhosts, permissions and topology as RabbitMQ's JSON"),
    ("import_definitions", "<path>|-", (1, 1), "Importing definitions in JSON from a file at \"{0}\" ...", "Imports RabbitMQ-format definitions"),
    ("set_policy", "[-p <vhost>] [--priority <priority>] [--apply-to <apply-to>] <name> <pattern> <definition>", (3, 3), "Setting policy \"{0}\" for pattern \"{1}\" to \"{2}\" with priority \"{priority}\" for vhost \"{vhost}\" ...", "Sets or updates a policy"),
    ("clear_policy", "[-p <vhost>] <name>", (1, 1), "Clearing policy \"{0}\" on vhost \"{vhost}\" ...", "Clears (removes) a policy"),
    ("list_policies", "[-p <vhost>]", (0, 0), "Listing policies for vhost \"{vhost}\" ...", "Lists all policies in a virtual host"),
    ("set_operator_policy", "[-p <vhost>] [--priority <priority>] [--apply-to <apply-to>] <name> <pattern> <definition>", (3, 3), "Setting operator policy override \"{0}\" for pattern \"{1}\" to \"{2}\" with priority \"{priority}\" for vhost \"{vhost}\" ...", "Sets an operator policy that overrides a subset of arguments in user policies"),
    ("clear_operator_policy", "[-p <vhost>] <name>", (1, 1), "Clearing operator policy \"{0}\" on vhost \"{vhost}\" ...", "Clears an operator policy"),
    ("list_operator_policies", "[-p <vhost>]", (0, 0), "Listing operator policy overrides for vhost \"{vhost}\" ...", "Lists operator policy overrides for a virtual host"),
    ("cluster_status", "", (0, 0), "Cluster status of node warren ...", "Displays the cluster's nodes, leader, in-sync replicas and replication lag (--formatter json for a document)"),
    ("stop_app", "", (0, 0), "Stopping warren application on node warren ...", "Cluster node: stops serving clients and following (a leader hands over first); the process and its control socket stay"),
    ("start_app", "", (0, 0), "Starting node warren ...", "Cluster node: starts following (and serving clients) again after stop_app"),
    ("reset", "", (0, 0), "Resetting node warren ...", "Cluster node, app stopped: removes the node's data; it syncs everything from the leader at start_app"),
    ("force_reset", "", (0, 0), "Forcefully resetting node warren ...", "Same as reset"),
    ("join_cluster", "<node> [--ram|--disc]", (1, 1), "Clustering node warren with {0}", "Cluster node, app stopped: checks that <node> is in this node's cluster (the [cluster] section names it); start_app then syncs from the leader"),
    ("forget_cluster_node", "<node> [--offline]", (1, 1), "Removing node {0} from the cluster", "Removes a node that is down from the cluster (and its in-sync replicas)"),
    ("update_cluster_nodes", "<seed node>", (1, 1), "Will seed warren from {0} on next start", "Accepted; nothing to do: nodes find each other through etcd"),
    ("change_cluster_node_type", "<disc|ram>", (1, 1), "Turning warren into a {0} node", "Accepted; nothing to do: every warren node is a disc node"),
    ("set_cluster_name", "<name>", (1, 1), "Setting cluster name to {0} ...", "Sets the cluster's name as shown by cluster_status and the management API"),
    ("help", "[<command>]", (0, 1), "", "Displays usage information"),
];

/// What `help diagnostics` adds to the one-line summary.
const DIAGNOSTICS_HELP: &str = "
Options:
   --interval <seconds>   how long to watch the queues' ready counts for growing
                          backlogs (default 3; 0 skips that check)

Exit status:
   0    nothing to look at (every finding is \"ok\")
   1    at least one finding of level \"warning\" (the findings are printed)
   64   bad usage (e.g. --interval is not a number of seconds)
   69   the broker is not running (no control socket in the data directory)";

/// Commands rabbitmqctl has that warren does not (yet), so runbooks fail clearly.
const NOT_YET: &[(&str, &str)] = &[];

struct Options {
    quiet: bool,
    silent: bool,
    json: bool,
    no_headers: bool,
    timeout: Duration,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(run(argv))
}

fn run(argv: Vec<String>) -> u8 {
    let mut opts = Options {
        quiet: false,
        silent: false,
        json: false,
        no_headers: false,
        timeout: Duration::from_secs(60),
        data_dir: None,
        config: None,
    };
    let mut req = Request::default();
    let mut positional = Vec::new();
    let mut wants_help = false;
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, u8> {
            inline.clone().or_else(|| it.next()).ok_or_else(|| {
                eprintln!("Error (argument validation): {what} expects a value");
                EX_USAGE
            })
        };
        let r: Result<(), u8> = (|| {
            match name.as_str() {
                "-q" | "--quiet" => opts.quiet = true,
                "-s" | "--silent" => {
                    opts.quiet = true;
                    opts.silent = true;
                }
                "--no-table-headers" => opts.no_headers = true,
                "--formatter" => {
                    let f = value("--formatter")?;
                    match f.as_str() {
                        "json" => opts.json = true,
                        "table" | "pretty_table" | "plain" => opts.json = false,
                        other => {
                            eprintln!("Error (argument validation): unknown formatter '{other}' (json, table)");
                            return Err(EX_USAGE);
                        }
                    }
                }
                "-p" | "--vhost" => req.vhost = Some(value("-p")?),
                "-t" | "--timeout" => {
                    let t = value("--timeout")?;
                    let secs: f64 = t.parse().map_err(|_| {
                        eprintln!(
                            "Error (argument validation): --timeout expects seconds, got '{t}'"
                        );
                        EX_USAGE
                    })?;
                    opts.timeout = Duration::from_secs_f64(secs.max(0.1));
                }
                "--data-dir" => opts.data_dir = Some(PathBuf::from(value("--data-dir")?)),
                "-c" | "--config" => opts.config = Some(PathBuf::from(value("--config")?)),
                // RabbitMQ's node selection: one broker per data directory here.
                "-n" | "--node" => {
                    value("-n")?;
                }
                "-l" | "--longnames" | "--offline" | "--ram" | "--disc" => {}
                "--if-empty" | "--if-unused" | "--global" => {
                    req.flags.insert(name[2..].to_owned(), String::new());
                }
                "-h" | "--help" => wants_help = true,
                "--interval" => {
                    let v = value("--interval")?;
                    req.flags.insert("interval".to_owned(), v);
                }
                "--description" | "--tags" | "--priority" | "--apply-to" => {
                    let v = value(&name)?;
                    req.flags.insert(name[2..].to_owned(), v);
                }
                _ if name.starts_with('-') && name.len() > 1 => {
                    eprintln!("Error (argument validation): unknown option {name}");
                    return Err(EX_USAGE);
                }
                _ => positional.push(a.clone()),
            }
            Ok(())
        })();
        if let Err(code) = r {
            return code;
        }
    }
    let Some(command) = positional.first().cloned() else {
        print_help();
        return EX_USAGE;
    };
    req.command = command;
    req.args = positional.split_off(1);
    if wants_help && req.command != "help" {
        // `warrenctl <command> --help` is `warrenctl help <command>`.
        req.args = vec![std::mem::replace(&mut req.command, "help".to_owned())];
    }

    if let Some((_, why)) = NOT_YET.iter().find(|(c, _)| *c == req.command) {
        eprintln!("Error: {}: {why}", req.command);
        return EX_SOFTWARE;
    }
    let Some(spec) = COMMANDS.iter().find(|s| s.0 == req.command) else {
        eprintln!(
            "\nCommand '{}' not found. \n\nRun 'warrenctl help' for the list of commands.",
            req.command
        );
        return EX_USAGE;
    };
    let (min, max) = spec.2;
    if req.args.len() < min || req.args.len() > max {
        eprintln!(
            "Error (argument validation): {} arguments.\nUsage:\n\nwarrenctl [--data-dir <dir>] [-c <config>] [--quiet] {} {}",
            if req.args.len() < min { "not enough" } else { "too many" },
            spec.0,
            spec.1
        );
        return EX_USAGE;
    }
    if req.command == "help" {
        match req.args.first() {
            None => print_help(),
            Some(c) => match COMMANDS.iter().find(|s| s.0 == c) {
                Some(s) => {
                    println!("Usage:\n\nwarrenctl {} {}\n\n{}", s.0, s.1, s.4);
                    if s.0 == "diagnostics" || s.0 == "doctor" {
                        println!("{DIAGNOSTICS_HELP}");
                    }
                }
                None => {
                    eprintln!("Command '{c}' not found.");
                    return EX_USAGE;
                }
            },
        }
        return 0;
    }
    let vhost_for_info = req.vhost.clone().unwrap_or_else(|| "/".to_owned());

    // Inputs the CLI reads itself: a password from stdin, a definitions file.
    if req.command == "add_user" && req.args.len() == 1 {
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() {
            eprintln!("Error: could not read the password from stdin");
            return EX_NOINPUT;
        }
        req.args
            .push(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if req.command == "import_definitions" {
        let path = &req.args[0];
        let text = if path == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map(|_| s)
        } else {
            std::fs::read_to_string(path)
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                eprintln!("Error:\ncannot read definitions file {path}: {e}");
                return EX_NOINPUT;
            }
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => req.body = Some(v),
            Err(e) => {
                eprintln!("Error:\n{path} is not valid JSON: {e}");
                return EX_DATAERR;
            }
        }
    }

    let socket = match find_socket(&opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("Error: {e}");
            return EX_USAGE;
        }
    };
    // Exporting to stdout keeps stdout pure JSON.
    let to_stdout = req.command == "export_definitions" && req.args[0] == "-";
    if !opts.quiet && !spec.3.is_empty() && !to_stdout {
        let priority = req.flags.get("priority").map_or("0", String::as_str);
        println!(
            "{}",
            info_line(spec.3, &req.args, &vhost_for_info).replace("{priority}", priority)
        );
    }
    let response = if req.command == "await_startup" {
        await_startup(&socket, &req, opts.timeout)
    } else {
        call(&socket, &req, opts.timeout)
    };
    let response = match response {
        Ok(r) => r,
        Err((code, msg)) => {
            eprintln!("Error: {msg}");
            return code;
        }
    };
    if response.exit_code != 0 {
        let msg = response.message.unwrap_or_default();
        eprintln!("Error:\n{msg}");
        return response.exit_code;
    }
    // diagnostics: findings of warning level make the exit status 1, so that scripts
    // and health checks need not parse the table.
    let findings = matches!(req.command.as_str(), "diagnostics" | "doctor")
        && response
            .rows
            .iter()
            .any(|r| r.get(1).and_then(|v| v.as_str()).is_some_and(|s| s != "ok"));
    // stop_app / start_app return once the node did it: a runbook's next command
    // (reset, join_cluster) must find the node stopped, and its socket up.
    if let Some(running) = match req.command.as_str() {
        "stop_app" => Some(false),
        "start_app" => Some(true),
        _ => None,
    } {
        if let Err((code, msg)) = await_app(&socket, running, opts.timeout) {
            eprintln!("Error: {msg}");
            return code;
        }
    }
    match output(&opts, &req, response) {
        0 if findings => EX_FINDINGS,
        code => code,
    }
}

/// Wait until the node's status says its app runs (or not).
fn await_app(socket: &PathBuf, running: bool, timeout: Duration) -> Result<(), (u8, String)> {
    let deadline = Instant::now() + timeout;
    let status = Request {
        command: "status".into(),
        ..Default::default()
    };
    loop {
        // A single node has no app_running: it runs.
        let now = call(socket, &status, timeout).ok().map(|r| {
            r.document
                .and_then(|d| d.get("app_running").and_then(Value::as_bool))
                .unwrap_or(true)
        });
        if now == Some(running) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err((
                EX_TEMPFAIL,
                format!(
                    "the node's app is still {} after {:.1} seconds (--timeout)",
                    if running { "stopped" } else { "running" },
                    timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_help() {
    println!("Usage:\n\nwarrenctl [--data-dir <dir>] [-c <config>] [--quiet] [--formatter json] <command> [<command options>]\n\nCommands:\n");
    for s in COMMANDS {
        println!("   {:<28} {}", s.0, s.4);
    }
    println!("\nUse 'warrenctl help <command>' to learn more about a specific command");
}

fn info_line(template: &str, args: &[String], vhost: &str) -> String {
    let mut s = template.replace("{vhost}", vhost);
    s = s.replace(
        "{tags}",
        &args.iter().skip(1).cloned().collect::<Vec<_>>().join(", "),
    );
    for (i, a) in args.iter().enumerate().take(3) {
        s = s.replace(&format!("{{{i}}}"), a);
    }
    s.replace("{2}", "").replace("{1}", "").replace("{0}", "")
}

/// The socket in the data directory, resolved like the broker resolves its data_dir.
fn find_socket(opts: &Options) -> Result<PathBuf, String> {
    let mut overrides = Config::env_overrides(std::env::vars());
    if let Some(d) = &opts.data_dir {
        overrides.push(Override {
            key: "data_dir".into(),
            value: d.to_string_lossy().into_owned(),
            source: Source::Flag("--data-dir".into()),
        });
    }
    let config_file = opts
        .config
        .clone()
        .or_else(|| std::env::var_os("WARREN_CONFIG").map(PathBuf::from));
    let config = Config::load(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
    Ok(socket_path(&config.data_dir))
}

fn connect(socket: &PathBuf) -> Result<UnixStream, (u8, String)> {
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => (
            EX_NOPERM,
            format!(
                "permission denied opening the control socket {}.\nRun warrenctl as the user that runs warren (the socket is mode 0600), or as root.",
                socket.display()
            ),
        ),
        _ => (
            EX_UNAVAILABLE,
            format!(
                "unable to perform an operation on the broker: warren is not running with data directory {} ({}: {e}).\n\
                 Start it (warren --data-dir DIR), or point warrenctl at its data directory with --data-dir, -c CONFIG or WARREN_DATA_DIR.",
                socket.parent().map(|p| p.display().to_string()).unwrap_or_default(),
                socket.display()
            ),
        ),
    })
}

fn call(socket: &PathBuf, req: &Request, timeout: Duration) -> Result<Response, (u8, String)> {
    let mut stream = connect(socket)?;
    let _ = stream.set_read_timeout(Some(timeout));
    let mut line = serde_json::to_vec(req).map_err(|e| (EX_SOFTWARE, e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| {
        (
            EX_UNAVAILABLE,
            format!("lost the broker's control socket: {e}"),
        )
    })?;
    let mut answer = String::new();
    match BufReader::new(stream).read_line(&mut answer) {
        Ok(0) => Err((
            EX_UNAVAILABLE,
            "the broker closed the control socket without answering".into(),
        )),
        Ok(_) => serde_json::from_str(&answer).map_err(|e| {
            (
                EX_SOFTWARE,
                format!("malformed answer from the broker: {e}"),
            )
        }),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err((
                EX_TEMPFAIL,
                format!(
                    "no answer within {:.1} seconds (--timeout)",
                    timeout.as_secs_f64()
                ),
            ))
        }
        Err(e) => Err((
            EX_UNAVAILABLE,
            format!("lost the broker's control socket: {e}"),
        )),
    }
}

/// Retry until the broker answers or the timeout passes.
fn await_startup(
    socket: &PathBuf,
    req: &Request,
    timeout: Duration,
) -> Result<Response, (u8, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        match call(socket, req, timeout) {
            Ok(r) => {
                return Ok(Response {
                    document: None,
                    ..r
                })
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn output(opts: &Options, req: &Request, r: Response) -> u8 {
    if let Some(doc) = r.document {
        if req.command == "export_definitions" {
            let text = match serde_json::to_string_pretty(&doc) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return EX_SOFTWARE;
                }
            };
            let path = &req.args[0];
            if path == "-" {
                println!("{text}");
            } else if let Err(e) = std::fs::write(path, text + "\n") {
                eprintln!("Error:\ncannot write {path}: {e}");
                return EX_CANTCREAT;
            }
            return 0;
        }
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        } else if let Some(text) = &r.message {
            // A document with its own rendering (cluster_status).
            println!("{text}");
        } else if let Some(m) = doc.as_object() {
            for (k, v) in m {
                println!("{k}: {}", cell("", v));
            }
        }
        return 0;
    }
    if let Some(m) = &r.message {
        if !opts.silent {
            println!("{m}");
        }
    }
    if r.columns.is_empty() {
        return 0;
    }
    if opts.json {
        let rows: Vec<Value> = r
            .rows
            .iter()
            .map(|row| Value::Object(r.columns.iter().cloned().zip(row.iter().cloned()).collect()))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return 0;
    }
    let mut out = std::io::stdout().lock();
    if !opts.no_headers && !opts.silent {
        let _ = writeln!(out, "{}", r.columns.join("\t"));
    }
    for row in &r.rows {
        let cells: Vec<String> = r.columns.iter().zip(row).map(|(c, v)| cell(c, v)).collect();
        let _ = writeln!(out, "{}", cells.join("\t"));
    }
    0
}

/// A value as rabbitmqctl's table prints it: tags as `[a, b]`, arguments as Erlang
/// proplists `[{"k","v"}]`, limits as JSON.
fn cell(column: &str, v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(|x| cell("", x)).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) if column == "limits" || column.is_empty() => {
            serde_json::to_string(&Value::Object(m.clone())).unwrap_or_default()
        }
        Value::Object(m) => {
            let entries: BTreeMap<&String, String> = m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => format!("\"{s}\""),
                        other => cell("", other),
                    };
                    (k, v)
                })
                .collect();
            format!(
                "[{}]",
                entries
                    .iter()
                    .map(|(k, v)| format!("{{\"{k}\",{v}}}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        other => other.to_string(),
    }
}
