//! Exchanges and their bindings. One file per exchange type, each a small router behind
//! [`Router`]: bind, unbind, and route a routing key (and, for headers, the headers) to
//! destinations. The topology that owns exchanges lives in [`crate::vhost`].

mod bindings;
mod dests;
mod direct;
mod fanout;
mod headers;
mod topic;

use std::sync::Arc;

use amq_protocol::types::FieldTable;

pub use bindings::Bindings;
pub use dests::Dests;
pub use direct::DirectRouter;
pub use fanout::FanoutRouter;
pub use headers::HeadersRouter;
pub use topic::TopicRouter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads: a queue, or another exchange (exchange-to-exchange binding).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Queue(Arc<str>),
    Exchange(Arc<str>),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
}

/// A binding's identity is all four parts, as in RabbitMQ: binding twice with the same
/// key and arguments is a no-op, with different arguments it is a second binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub source: Arc<str>,
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// The per-type routing index of an exchange.
#[derive(Debug)]
pub enum Router {
    Direct(DirectRouter),
    Fanout(FanoutRouter),
    Topic(TopicRouter),
    Headers(HeadersRouter),
}

impl Router {
    fn new(kind: ExchangeKind) -> Router {
        match kind {
            ExchangeKind::Direct => Router::Direct(DirectRouter::default()),
            ExchangeKind::Fanout => Router::Fanout(FanoutRouter::default()),
            ExchangeKind::Topic => Router::Topic(TopicRouter::default()),
            ExchangeKind::Headers => Router::Headers(HeadersRouter::default()),
        }
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// `alternate-exchange`: where messages go that this exchange routes nowhere.
    pub alternate: Option<Arc<str>>,
    /// Outgoing bindings in the order they were made (for listing and unbinding).
    pub bindings: Bindings,
    router: Router,
}

impl Exchange {
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        let alternate = arguments
            .inner()
            .get("alternate-exchange")
            .and_then(crate::arguments::as_str)
            .map(Arc::from);
        Exchange {
            name: Arc::from(name),
            kind,
            durable,
            auto_delete,
            internal,
            alternate,
            arguments,
            bindings: Bindings::default(),
            router: Router::new(kind),
        }
    }

    /// Add a binding; false if an identical one exists.
    pub fn bind(&mut self, b: Binding) -> bool {
        if !self.bindings.insert(b.clone()) {
            return false;
        }
        match &mut self.router {
            Router::Direct(r) => r.bind(&b.routing_key, b.destination.clone()),
            Router::Fanout(r) => r.bind(b.destination.clone()),
            Router::Topic(r) => r.bind(&b.routing_key, b.destination.clone()),
            Router::Headers(r) => r.bind(&b.arguments, b.destination),
        }
        true
    }

    /// Remove a binding; false if there was none.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let Some(b) = self.bindings.remove(b) else {
            return false;
        };
        self.unroute(&b);
        true
    }

    fn unroute(&mut self, b: &Binding) {
        match &mut self.router {
            Router::Direct(r) => r.unbind(&b.routing_key, &b.destination),
            Router::Fanout(r) => r.unbind(&b.destination),
            Router::Topic(r) => r.unbind(&b.routing_key, &b.destination),
            Router::Headers(r) => r.unbind(&b.arguments, &b.destination),
        }
    }

    /// Remove every binding to `dest` (it is being deleted); returns how many.
    pub fn unbind_destination(&mut self, dest: &Destination) -> usize {
        let gone = self.bindings.remove_destination(dest);
        for b in &gone {
            self.unroute(b);
        }
        gone.len()
    }

    /// Refuse binding arguments this exchange type can't use.
    pub fn validate_binding(&self, arguments: &FieldTable) -> Result<(), String> {
        match self.kind {
            ExchangeKind::Headers => headers::validate_binding(arguments),
            _ => Ok(()),
        }
    }

    /// Whether routing depends on the message headers (then routes can't be cached by key).
    pub fn routes_by_headers(&self) -> bool {
        self.kind == ExchangeKind::Headers
    }

    /// Append the destinations `routing_key` (and `headers`) lead to; may repeat one.
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        match &self.router {
            Router::Direct(r) => r.route(routing_key, out),
            Router::Fanout(r) => r.route(out),
            Router::Topic(r) => r.route(routing_key, out),
            Router::Headers(r) => r.route(headers, out),
        }
    }
}
