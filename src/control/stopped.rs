//! A single node whose app is stopped (`warrenctl stop_app`, see [`crate::app`]): the
//! data directory locked and the control socket answering, nothing else. `start_app`
//! re-executes the process serving again; `reset` empties the store first, as
//! `rabbitmqctl stop_app; reset; start_app` does on a lone RabbitMQ node. (A cluster
//! node's stopped state is the cluster module's: it keeps its lease and membership.)

use std::path::Path;

use serde_json::json;

use super::cluster::{nothing_to_do, status_response};
use super::{Request, Response};
use crate::config::Config;

use super::{EX_SOFTWARE, EX_UNAVAILABLE};

/// Serve the control socket until `start_app` re-executes the process (or a signal,
/// which the caller waits for, ends it). An error is the exit code and the line to print.
pub async fn serve(config: &Config) -> Result<(), (u8, String)> {
    let dir = config.data_dir.clone();
    let failed = |code, message: String| (code, message);
    crate::store::files::create_dir(&dir)
        .map_err(|e| failed(73, format!("data dir {}: {e}", dir.display())))?;
    let _lock = crate::store::lock(&dir).map_err(|e| failed(73, e.to_string()))?;
    let listener = super::bind(&dir).await.map_err(|e| {
        let path = super::socket_path(&dir);
        failed(
            71,
            format!("cannot create the control socket {}: {e}", path.display()),
        )
    })?;
    tracing::info!(
        node = crate::broker::node_name(),
        "app stopped: the control socket answers (warrenctl start_app starts it)"
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let dir = dir.clone();
        tokio::spawn(async move {
            let dir = &dir;
            super::serve_requests(stream, |req| async move { answer(dir, &req) }).await
        });
    }
}

fn answer(dir: &Path, req: &Request) -> Response {
    let me = crate::broker::node_name();
    if req.command != "await_startup" {
        tracing::info!(command = %req.command, "control request (app stopped)");
    }
    match req.command.as_str() {
        "status" | "ping" | "await_startup" => Response {
            document: Some(json!({
                "pid": std::process::id(),
                "node": me,
                "role": "single",
                "app_running": false,
                "product_name": "warren",
                "product_version": env!("CARGO_PKG_VERSION"),
                "data_directory": dir.display().to_string(),
            })),
            ..Default::default()
        },
        "stop_app" => Response::default(),
        "start_app" => {
            tokio::spawn(async {
                // The answer goes out first.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                tracing::info!("start_app: restarting serving");
                crate::app::restart(false, vec![]);
            });
            Response::default()
        }
        "reset" | "force_reset" => match crate::store::wipe(dir) {
            Ok(()) => {
                tracing::warn!(dir = %dir.display(), "reset: the node's data is gone");
                Response::default()
            }
            Err(e) => Response::error(EX_SOFTWARE, format!("cannot reset: {e}")),
        },
        "cluster_status" => status_response(json!({
            "cluster_name": me,
            "disk_nodes": [me],
            "ram_nodes": [],
            "running_nodes": [],
            "versions": {me.clone(): {"warren_version": env!("CARGO_PKG_VERSION")}},
            "maintenance_status": {me.clone(): "not under maintenance"},
            "alarms": [],
            "partitions": {},
            "listeners": {},
        })),
        "update_cluster_nodes" | "change_cluster_node_type" => nothing_to_do(&req.command),
        "join_cluster" | "forget_cluster_node" => Response::error(
            EX_UNAVAILABLE,
            format!("{me} is a single node (no [cluster] section): set one up to cluster it"),
        ),
        other => Response::error(
            EX_UNAVAILABLE,
            format!("warren's app is stopped on node {me}: '{other}' needs it running (warrenctl start_app)"),
        ),
    }
}
