//! What the control socket, the management API and Prometheus may ask about the cluster
//! this node serves, without depending on the cluster module: that one starts the node
//! (it sits above them), so it installs its answers here once the node leads. A single
//! node has none installed, and each asker answers for a cluster of one.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use serde_json::Value;
use warren_ctl::{Request, Response};

use crate::broker::Broker;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The cluster as the management API shows it (`/api/nodes`, `/api/overview`).
pub struct ApiView {
    pub cluster_name: String,
    /// warren's fields for this (the leader's) node object.
    pub leader: Value,
    /// The other known nodes: RabbitMQ's node fields the leader knows, and warren's.
    pub others: Vec<Value>,
}

/// One `warrenctl diagnostics` finding: status ("ok", "warning"), detail, advice.
pub type Finding = (&'static str, String, &'static str);

pub trait Membership: Send + Sync {
    /// "leader" (a follower's control socket answers for itself).
    fn role(&self) -> &'static str;
    /// A cluster command (cluster_status, stop_app, forget_cluster_node, ...).
    fn command<'a>(&'a self, broker: &'a Broker, req: &'a Request) -> BoxFuture<'a, Response>;
    fn api_view(&self) -> BoxFuture<'_, ApiView>;
    fn findings(&self) -> BoxFuture<'_, Vec<Finding>>;
    /// The cluster's Prometheus families, appended to a scrape.
    fn render_metrics(&self, out: &mut String);
}

static INSTALLED: OnceLock<Box<dyn Membership>> = OnceLock::new();

/// Installed once, when the process starts leading (it leads until it exits or
/// re-executes).
pub fn install(m: Box<dyn Membership>) {
    let _ = INSTALLED.set(m);
}

/// The cluster this node leads; `None` on a single node.
pub fn get() -> Option<&'static dyn Membership> {
    INSTALLED.get().map(|m| m.as_ref())
}
