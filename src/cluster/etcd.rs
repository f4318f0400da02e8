//! The [`Coordinator`] on etcd (3.4 and later), spoken through its v3 JSON gateway
//! (grpc-gateway) over plain HTTP/1.1, so the broker needs no gRPC stack.
//!
//! Layout under `/warren/<cluster>/`:
//! - `leader`: `{"node":..,"address":..}`, bound to the leader's lease. Its
//!   `create_revision` is the election revision (the fencing token).
//! - `isr`: `{"members":[..]}`, without a lease: it must outlive every leader, since
//!   the next one may only be chosen from it. Its `mod_revision` is [`Isr::revision`].
//! - `members/<node>`: the info string the node registered, bound to its lease.
//!
//! What the gateway wants: keys and values base64, int64s as JSON strings (they come
//! back as strings too), and it leaves out every zero value it answers with (a failed
//! txn has no `succeeded`, an expired lease's keepalive no `TTL`, an empty value no
//! `value`), so every field here defaults. A compare against revision `"0"` is honoured
//! (a missing key has revision 0), which is how "must not exist" is written. Lease
//! revoke is `/v3/lease/revoke` (3.4 also keeps the older `/v3/kv/lease/revoke`);
//! keepalive is a stream whose messages come wrapped in `{"result":..}`.
//!
//! The HTTP client is deliberately tiny: one request per connection
//! (`Connection: close`), the response read to its end (or, for the keepalive stream,
//! to its first JSON object), bodies framed by `Content-Length` or chunked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::coordinator::{CoordError, Coordinator, Fut, Isr, Leader, Member};

/// A response larger than this is refused rather than buffered (the member list is the
/// largest thing read, and is far smaller).
const MAX_RESPONSE: usize = 16 << 20;

/// gRPC status codes the gateway reports in its error bodies.
const GRPC_NOT_FOUND: i64 = 5;
/// The member that answered cannot serve (no leader, shutting down): another may.
const GRPC_UNAVAILABLE: i64 = 14;

/// A client of one etcd cluster, holding one warren cluster's keys.
pub struct Etcd {
    endpoints: Vec<Endpoint>,
    /// `/warren/<cluster>/`.
    prefix: String,
    /// The bound on each attempt (connect, request and response together).
    timeout: Duration,
    /// The endpoint that answered last: calls start there, so a dead member costs a
    /// timeout once, not on every call.
    preferred: AtomicUsize,
}

/// One configured endpoint: its URL (for messages) and where to connect, or why the URL
/// cannot be used (reported when a call reaches it, since `new` cannot fail).
struct Endpoint {
    url: String,
    target: Result<Target, String>,
}

struct Target {
    /// The `Host` header: the URL's authority as written.
    host: String,
    /// What to connect to: the authority with the default port filled in.
    connect: String,
}

/// Why one call failed.
#[derive(Debug)]
enum CallError {
    /// No endpoint gave an answer (each one's reason, on one line).
    Unreachable(String),
    /// etcd answered with an error.
    Refused { code: i64, message: String },
}

impl From<CallError> for CoordError {
    fn from(e: CallError) -> CoordError {
        match e {
            CallError::Unreachable(m) => CoordError(m),
            CallError::Refused { message, .. } => CoordError(format!("etcd: {message}")),
        }
    }
}

/// How one attempt at one endpoint ended, when not with an answer.
enum Failure {
    /// Try the next endpoint.
    Transport(String),
    /// etcd refused: the same request elsewhere would be refused too.
    Refused { code: i64, message: String },
}

impl Etcd {
    /// `endpoints`: "http://host:port" URLs; `cluster`: the cluster name, keys live under `/warren/<cluster>/`.
    pub fn new(endpoints: &[String], cluster: &str, timeout: std::time::Duration) -> Etcd {
        Etcd {
            endpoints: endpoints.iter().map(|u| Endpoint::parse(u)).collect(),
            prefix: format!("/warren/{cluster}/"),
            timeout,
            preferred: AtomicUsize::new(0),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn members_prefix(&self) -> String {
        self.key("members/")
    }

    /// POSTs `body` to `path`, trying the endpoints in turn from the preferred one;
    /// the response's JSON. `stream`: the endpoint streams, take its first object.
    async fn call(&self, path: &str, body: &Value, stream: bool) -> Result<Value, CallError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(CallError::Unreachable(
                "etcd: no endpoints configured".into(),
            ));
        }
        let body = body.to_string();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let endpoint = &self.endpoints[i];
            match self.attempt(endpoint, path, &body, stream).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(Failure::Refused { code, message }) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Err(CallError::Refused { code, message });
                }
                Err(Failure::Transport(why)) => failures.push(format!("{}: {why}", endpoint.url)),
            }
        }
        Err(CallError::Unreachable(format!(
            "etcd {path}: no endpoint answered ({})",
            failures.join("; ")
        )))
    }

    /// One request to one endpoint, bounded by the timeout.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        path: &str,
        body: &str,
        stream: bool,
    ) -> Result<Value, Failure> {
        let target = endpoint
            .target
            .as_ref()
            .map_err(|e| Failure::Transport(e.clone()))?;
        let exchange = exchange(target, path, body, stream);
        let reply = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(reply) => reply.map_err(Failure::Transport)?,
            Err(_) => {
                return Err(Failure::Transport(format!(
                    "no answer within {:?}",
                    self.timeout
                )))
            }
        };
        interpret(reply)
    }

    /// A call whose answer is decoded into `T`.
    async fn call_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, CoordError> {
        let v = self.call(path, body, false).await?;
        decode(path, v)
    }

    /// The key-value at `key`, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, CoordError> {
        let body = json!({ "key": b64(key.as_bytes()) });
        let r: RangeResponse = self.call_as("/v3/kv/range", &body).await?;
        Ok(r.kvs.into_iter().next())
    }

    /// Every key-value under `prefix`, in key order.
    async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, CoordError> {
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
        });
        let r: RangeResponse = self.call_as("/v3/kv/range", &body).await?;
        Ok(r.kvs)
    }

    async fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
    ) -> Result<TxnResponse, CoordError> {
        let body = json!({ "compare": compare, "success": success });
        self.call_as("/v3/kv/txn", &body).await
    }

    async fn grant_lease(&self, ttl: u64) -> Result<i64, CoordError> {
        let body = json!({ "TTL": ttl.to_string(), "ID": "0" });
        let r: LeaseResponse = self.call_as("/v3/lease/grant", &body).await?;
        if !r.error.is_empty() {
            return Err(CoordError(format!("etcd: lease grant: {}", r.error)));
        }
        if r.id == 0 {
            return Err(CoordError(
                "etcd: lease grant answered without a lease id".into(),
            ));
        }
        Ok(r.id)
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, CoordError> {
        let body = json!({ "ID": lease.to_string() });
        let path = "/v3/lease/keepalive";
        let v = self.call(path, &body, true).await?;
        // A stream's messages are wrapped in {"result": ..}.
        let v = match v {
            Value::Object(mut o) if o.contains_key("result") => {
                o.remove("result").unwrap_or_default()
            }
            other => other,
        };
        let r: LeaseResponse = decode(path, v)?;
        Ok(r.ttl > 0)
    }

    /// An already expired (or revoked) lease is not an error: the caller wanted it gone.
    async fn revoke_lease(&self, lease: i64) -> Result<(), CoordError> {
        let body = json!({ "ID": lease.to_string() });
        match self.call("/v3/lease/revoke", &body, false).await {
            Ok(_) => Ok(()),
            Err(CallError::Refused {
                code: GRPC_NOT_FOUND,
                ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_leader(&self) -> Result<Option<Leader>, CoordError> {
        let Some(kv) = self.get(&self.key("leader")).await? else {
            return Ok(None);
        };
        let v: LeaderValue = decode_value("leader", &kv)?;
        Ok(Some(Leader {
            node: v.node,
            address: v.address,
            revision: kv.create_revision,
        }))
    }

    async fn read_isr(&self) -> Result<Option<Isr>, CoordError> {
        let Some(kv) = self.get(&self.key("isr")).await? else {
            return Ok(None);
        };
        let v: IsrValue = decode_value("isr", &kv)?;
        Ok(Some(Isr {
            members: v.members,
            revision: kv.mod_revision,
        }))
    }

    async fn run_campaign(
        &self,
        node: &str,
        address: &str,
        lease: i64,
        isr_revision: i64,
        members: &[String],
    ) -> Result<Option<i64>, CoordError> {
        let (leader, isr) = (self.key("leader"), self.key("isr"));
        let leader_value = to_json(&LeaderValue {
            node: node.into(),
            address: address.into(),
        })?;
        let isr_value = to_json(&IsrValue {
            members: members.to_vec(),
        })?;
        let compare = vec![compare_create(&leader, 0), compare_mod(&isr, isr_revision)];
        let success = vec![
            put_op(&leader, &leader_value, lease),
            put_op(&isr, &isr_value, 0),
        ];
        let r = self.txn(compare, success).await?;
        if !r.succeeded {
            return Ok(None);
        }
        // The txn's revision is the one its puts were written at: the leader key's
        // create_revision.
        match r.header.revision {
            rev if rev > 0 => Ok(Some(rev)),
            _ => Err(CoordError(
                "etcd: campaign txn answered without a revision".into(),
            )),
        }
    }

    async fn write_isr(&self, election: i64, members: &[String]) -> Result<bool, CoordError> {
        // Revision 0 would match a missing leader key: no leader may write with it.
        if election <= 0 {
            return Ok(false);
        }
        let (leader, isr) = (self.key("leader"), self.key("isr"));
        let isr_value = to_json(&IsrValue {
            members: members.to_vec(),
        })?;
        let compare = vec![compare_create(&leader, election)];
        let r = self.txn(compare, vec![put_op(&isr, &isr_value, 0)]).await?;
        Ok(r.succeeded)
    }

    async fn put_member(&self, node: &str, info: &str, lease: i64) -> Result<(), CoordError> {
        let key = format!("{}{node}", self.members_prefix());
        let body = put_request(&key, info, lease);
        self.call("/v3/kv/put", &body, false).await?;
        Ok(())
    }

    async fn read_setting(&self, name: &str) -> Result<Option<String>, CoordError> {
        let key = self.key(&format!("settings/{name}"));
        let Some(kv) = self.get(&key).await? else {
            return Ok(None);
        };
        let value = unb64(&kv.value)?;
        Ok(Some(String::from_utf8_lossy(&value).into_owned()))
    }

    async fn write_setting(&self, name: &str, value: &str) -> Result<(), CoordError> {
        let key = self.key(&format!("settings/{name}"));
        self.call("/v3/kv/put", &put_request(&key, value, 0), false)
            .await?;
        Ok(())
    }

    async fn list_settings(&self, prefix: &str) -> Result<Vec<(String, String)>, CoordError> {
        let prefix = self.key(&format!("settings/{prefix}"));
        let kvs = self.get_prefix(&prefix).await?;
        kvs.iter()
            .map(|kv| member(prefix.len(), kv).map(|m| (m.node, m.info)))
            .collect()
    }

    async fn delete_setting(&self, name: &str) -> Result<(), CoordError> {
        let key = self.key(&format!("settings/{name}"));
        let body = json!({ "key": b64(key.as_bytes()) });
        self.call("/v3/kv/deleterange", &body, false).await?;
        Ok(())
    }

    async fn list_members(&self) -> Result<Vec<Member>, CoordError> {
        let prefix = self.members_prefix();
        let kvs = self.get_prefix(&prefix).await?;
        kvs.iter().map(|kv| member(prefix.len(), kv)).collect()
    }
}

impl Coordinator for Etcd {
    fn grant(&self, ttl: u64) -> Fut<'_, i64> {
        Box::pin(self.grant_lease(ttl))
    }

    fn renew(&self, lease: i64) -> Fut<'_, bool> {
        Box::pin(self.keep_alive(lease))
    }

    fn revoke(&self, lease: i64) -> Fut<'_, ()> {
        Box::pin(self.revoke_lease(lease))
    }

    fn leader(&self) -> Fut<'_, Option<Leader>> {
        Box::pin(self.read_leader())
    }

    fn isr(&self) -> Fut<'_, Option<Isr>> {
        Box::pin(self.read_isr())
    }

    fn campaign<'a>(
        &'a self,
        node: &'a str,
        address: &'a str,
        lease: i64,
        isr_revision: i64,
        members: &'a [String],
    ) -> Fut<'a, Option<i64>> {
        Box::pin(self.run_campaign(node, address, lease, isr_revision, members))
    }

    fn set_isr<'a>(&'a self, election: i64, members: &'a [String]) -> Fut<'a, bool> {
        Box::pin(self.write_isr(election, members))
    }

    fn register<'a>(&'a self, node: &'a str, info: &'a str, lease: i64) -> Fut<'a, ()> {
        Box::pin(self.put_member(node, info, lease))
    }

    fn members(&self) -> Fut<'_, Vec<Member>> {
        Box::pin(self.list_members())
    }

    fn setting<'a>(&'a self, name: &'a str) -> Fut<'a, Option<String>> {
        Box::pin(self.read_setting(name))
    }

    fn set_setting<'a>(&'a self, name: &'a str, value: &'a str) -> Fut<'a, ()> {
        Box::pin(self.write_setting(name, value))
    }

    fn settings<'a>(&'a self, prefix: &'a str) -> Fut<'a, Vec<(String, String)>> {
        Box::pin(self.list_settings(prefix))
    }

    fn clear_setting<'a>(&'a self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(self.delete_setting(name))
    }
}

impl Endpoint {
    fn parse(url: &str) -> Endpoint {
        Endpoint {
            url: url.to_string(),
            target: Target::parse(url),
        }
    }
}

impl Target {
    /// Only `http://` URLs: TLS to etcd would need a client this module does not have.
    fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| "only http:// endpoints are supported".to_string())?;
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() {
            return Err("no host in the URL".into());
        }
        // A port is present unless the authority ends in its host: a name, an IPv4
        // address, or a bracketed IPv6 one.
        let has_port = match host.rfind(':') {
            Some(colon) => !host[colon..].contains(']'),
            None => false,
        };
        let connect = if has_port {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Target {
            host: host.to_string(),
            connect,
        })
    }
}

// --- JSON shapes ---------------------------------------------------------------

/// The gateway writes int64s as strings; numbers are accepted too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Number(i64),
        Text(String),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
}

/// Grant and keepalive answers alike.
#[derive(Deserialize)]
struct LeaseResponse {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

#[derive(Serialize, Deserialize)]
struct LeaderValue {
    node: String,
    address: String,
}

#[derive(Serialize, Deserialize)]
struct IsrValue {
    members: Vec<String>,
}

fn decode<T: DeserializeOwned>(path: &str, v: Value) -> Result<T, CoordError> {
    serde_json::from_value(v)
        .map_err(|e| CoordError(format!("etcd {path}: unexpected answer: {e}")))
}

/// A stored value that must hold JSON (`what` names the key in the error).
fn decode_value<T: DeserializeOwned>(what: &str, kv: &KeyValue) -> Result<T, CoordError> {
    let bytes = unb64(&kv.value)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CoordError(format!("etcd: the {what} key holds no valid value: {e}")))
}

fn to_json<T: Serialize>(v: &T) -> Result<String, CoordError> {
    serde_json::to_string(v).map_err(|e| CoordError(format!("etcd: cannot encode a value: {e}")))
}

fn member(prefix_len: usize, kv: &KeyValue) -> Result<Member, CoordError> {
    let key = unb64(&kv.key)?;
    let node = key.get(prefix_len..).unwrap_or_default();
    Ok(Member {
        node: String::from_utf8_lossy(node).into_owned(),
        info: String::from_utf8_lossy(&unb64(&kv.value)?).into_owned(),
    })
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, CoordError> {
    B64.decode(s)
        .map_err(|e| CoordError(format!("etcd: bad base64 in an answer: {e}")))
}

/// The end of the range holding every key that starts with `prefix`: the prefix with
/// its last byte below 0xff incremented (what clientv3's WithPrefix sends).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): "\0" means every key from `prefix` on.
    vec![0]
}

/// A put (as a txn op's `request_put` or the body of `/v3/kv/put`); lease 0 is none.
fn put_request(key: &str, value: &str, lease: i64) -> Value {
    let mut put = json!({ "key": b64(key.as_bytes()), "value": b64(value.as_bytes()) });
    if lease != 0 {
        put["lease"] = json!(lease.to_string());
    }
    put
}

fn put_op(key: &str, value: &str, lease: i64) -> Value {
    json!({ "request_put": put_request(key, value, lease) })
}

/// `key`'s create revision equals `revision` (0: the key does not exist).
fn compare_create(key: &str, revision: i64) -> Value {
    json!({
        "key": b64(key.as_bytes()),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": revision.to_string(),
    })
}

/// `key`'s mod revision equals `revision` (0: the key does not exist).
fn compare_mod(key: &str, revision: i64) -> Value {
    json!({
        "key": b64(key.as_bytes()),
        "target": "MOD",
        "result": "EQUAL",
        "mod_revision": revision.to_string(),
    })
}

// --- HTTP ----------------------------------------------------------------------

/// A response: its status and the first JSON value of its body (or why there is none).
struct Reply {
    status: u16,
    json: Result<Value, String>,
}

/// An answer's JSON, or why it is not one: the gateway's error bodies
/// (`{"error":"..","message":"..","code":N}`, or for streams
/// `{"error":{"grpc_code":N,"message":".."}}`) become refusals, except Unavailable,
/// which another member may not share.
fn interpret(reply: Reply) -> Result<Value, Failure> {
    let v = reply
        .json
        .map_err(|e| Failure::Transport(format!("HTTP {}: {e}", reply.status)))?;
    if let Some((code, message)) = gateway_error(&v) {
        return Err(match code {
            GRPC_UNAVAILABLE => Failure::Transport(message),
            _ => Failure::Refused { code, message },
        });
    }
    if !(200..300).contains(&reply.status) {
        let message = format!("HTTP {}: {v}", reply.status);
        return Err(Failure::Refused { code: 0, message });
    }
    Ok(v)
}

/// The code and message of a gateway error body. Every etcd answer carries a header
/// (a stream's inside its `result`), so an `error` without one is the gateway's.
fn gateway_error(v: &Value) -> Option<(i64, String)> {
    if v.get("header").is_some() || v.get("result").is_some() {
        return None;
    }
    let error = v.get("error")?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let (code, message) = match error {
        Value::Object(_) => (error.get("grpc_code"), text(error.get("message"))),
        _ => (
            v.get("code"),
            text(v.get("message")).or_else(|| text(Some(error))),
        ),
    };
    let code = code.and_then(Value::as_i64).unwrap_or(0);
    Some((code, message.unwrap_or_else(|| error.to_string())))
}

/// One request on a fresh connection; the response read to its end (`stream`: to the
/// first complete JSON value of the body, since a stream does not end by itself).
async fn exchange(target: &Target, path: &str, body: &str, stream: bool) -> Result<Reply, String> {
    let mut conn = TcpStream::connect(&target.connect)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.host,
        body.len()
    );
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return parse_response(&buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(format!("response larger than {MAX_RESPONSE} bytes"));
        }
        if stream {
            if let Some(reply) = first_message(&buf) {
                return Ok(reply);
            }
        }
    }
}

/// The response's head: status and body framing.
struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

/// Splits the head off `buf`; `None` while it is incomplete.
fn split_head(buf: &[u8]) -> Option<Result<(Head, &[u8]), String>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&buf[..end]);
    Some(parse_head(&text).map(|head| (head, &buf[end + 4..])))
}

fn parse_head(text: &str) -> Result<Head, String> {
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| format!("not an HTTP response: {:?}", truncate(status_line)))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-length" => head.content_length = value.parse().ok(),
            _ => {}
        }
    }
    Ok(head)
}

/// The body received so far, de-chunked, and whether it is complete.
fn body(head: &Head, rest: &[u8]) -> Result<(Vec<u8>, bool), String> {
    if head.chunked {
        return dechunk(rest);
    }
    match head.content_length {
        Some(len) if rest.len() >= len => Ok((rest[..len].to_vec(), true)),
        Some(_) => Ok((rest.to_vec(), false)),
        None => Ok((rest.to_vec(), false)),
    }
}

/// Decodes a chunked body as far as it has arrived; complete once the last (empty)
/// chunk is seen (trailers after it are ignored).
fn dechunk(mut rest: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok((out, false));
        };
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {:?}", truncate(&line)))?;
        if size == 0 {
            return Ok((out, true));
        }
        let data = &rest[eol + 2..];
        if data.len() < size {
            out.extend_from_slice(data);
            return Ok((out, false));
        }
        out.extend_from_slice(&data[..size]);
        rest = data.get(size + 2..).unwrap_or_default();
    }
}

/// The whole response, once the connection has closed.
fn parse_response(buf: &[u8]) -> Result<Reply, String> {
    let (head, rest) = match split_head(buf) {
        Some(parsed) => parsed?,
        None if buf.is_empty() => return Err("connection closed without a response".into()),
        None => return Err("connection closed inside the response head".into()),
    };
    let (body, complete) = body(&head, rest)?;
    let framed = head.chunked || head.content_length.is_some();
    if framed && !complete {
        return Err("connection closed inside the response body".into());
    }
    let json = match first_json(&body) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("bad JSON body: {e}")),
        None => Err("empty body".into()),
    };
    Ok(Reply {
        status: head.status,
        json,
    })
}

/// The first message of a streamed response, once it has arrived whole.
fn first_message(buf: &[u8]) -> Option<Reply> {
    let (head, rest) = match split_head(buf)? {
        Ok(parsed) => parsed,
        Err(e) => {
            return Some(Reply {
                status: 0,
                json: Err(e),
            })
        }
    };
    let json = match body(&head, rest) {
        Ok((body, _)) => first_json(&body)?,
        Err(e) => Err(e),
    };
    Some(Reply {
        status: head.status,
        json,
    })
}

/// The first JSON value in `body`: `None` if it has not fully arrived (or the body is
/// empty), an error if what is there is not JSON.
fn first_json(body: &[u8]) -> Option<Result<Value, String>> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    match values.next()? {
        Ok(v) => Some(Ok(v)),
        Err(e) if e.is_eof() => None,
        Err(e) => Some(Err(e.to_string())),
    }
}

/// A bounded excerpt of something received, for an error message.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    /// A single-member etcd on free local ports in its own directory; killed (and its
    /// directory removed) on drop.
    struct Server {
        child: Child,
        dir: PathBuf,
        url: String,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Where etcd is; a test without it fails, since CI installs it.
    fn etcd_binary() -> PathBuf {
        let on_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("etcd"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        std::iter::once(PathBuf::from("/usr/bin/etcd"))
            .chain(on_path)
            .find(|p| p.is_file())
            .expect(
                "etcd not found (neither /usr/bin/etcd nor etcd on PATH): these tests need a real \
                 etcd; CI installs it with `apt-get install etcd-server`",
            )
    }

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("local address").port()
    }

    fn temp_dir() -> PathBuf {
        use std::sync::atomic::AtomicU32;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("warren-etcd-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        dir
    }

    impl Server {
        async fn start() -> Server {
            let binary = etcd_binary();
            let dir = temp_dir();
            let (client, peer) = (free_port(), free_port());
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.join("etcd.log")).expect("create the log");
            let child = Command::new(binary)
                .args(["--name", "t", "--data-dir"])
                .arg(dir.join("data"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("t={peer_url}")])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd");
            let mut server = Server { child, dir, url };
            server.wait_ready().await;
            server
        }

        async fn wait_ready(&mut self) {
            let client = self.client("ready", Duration::from_secs(1));
            let deadline = Instant::now() + Duration::from_secs(30);
            while client.leader().await.is_err() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("etcd exited ({status}): {}", read_log(&self.dir));
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd did not answer: {}",
                    read_log(&self.dir)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        fn client(&self, cluster: &str, timeout: Duration) -> Etcd {
            Etcd::new(std::slice::from_ref(&self.url), cluster, timeout)
        }
    }

    fn read_log(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
    }

    const T: Duration = Duration::from_secs(5);

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The leader key's create_revision, read straight from etcd.
    async fn leader_create_revision(etcd: &Etcd) -> i64 {
        let kv = etcd
            .get(&etcd.key("leader"))
            .await
            .unwrap()
            .expect("leader key");
        kv.create_revision
    }

    #[tokio::test]
    async fn grant_renew_revoke() {
        let server = Server::start().await;
        let etcd = server.client("c", T);
        let lease = etcd.grant(30).await.unwrap();
        assert!(lease != 0);
        assert!(etcd.renew(lease).await.unwrap());
        etcd.revoke(lease).await.unwrap();
        assert!(
            !etcd.renew(lease).await.unwrap(),
            "a revoked lease cannot be renewed"
        );
        etcd.revoke(lease)
            .await
            .expect("revoking twice is not an error");
    }

    #[tokio::test]
    async fn campaign_wins_once() {
        let server = Server::start().await;
        let etcd = server.client("c", T);
        assert_eq!(etcd.leader().await.unwrap(), None);
        assert_eq!(etcd.isr().await.unwrap(), None);

        let a = etcd.grant(30).await.unwrap();
        let won = etcd
            .campaign("a", "10.0.0.1:5680", a, 0, &names(&["a"]))
            .await
            .unwrap();
        let election = won.expect("the first campaign wins");
        assert_eq!(election, leader_create_revision(&etcd).await);
        let leader = etcd.leader().await.unwrap().expect("a leader");
        assert_eq!(
            leader,
            Leader {
                node: "a".into(),
                address: "10.0.0.1:5680".into(),
                revision: election
            }
        );
        let isr = etcd.isr().await.unwrap().expect("an ISR");
        assert_eq!(
            isr,
            Isr {
                members: names(&["a"]),
                revision: election
            }
        );

        let b = etcd.grant(30).await.unwrap();
        let lost = etcd
            .campaign("b", "10.0.0.2:5680", b, isr.revision, &names(&["b"]))
            .await;
        assert_eq!(lost.unwrap(), None, "the leader key is held");
        assert_eq!(
            etcd.leader().await.unwrap().map(|l| l.node),
            Some("a".into())
        );
        assert_eq!(etcd.isr().await.unwrap(), Some(isr));
    }

    #[tokio::test]
    async fn set_isr_is_fenced_on_the_election() {
        let server = Server::start().await;
        let etcd = server.client("c", T);
        let a = etcd.grant(30).await.unwrap();
        let ea = etcd
            .campaign("a", "a:1", a, 0, &names(&["a"]))
            .await
            .unwrap()
            .unwrap();
        assert!(etcd.set_isr(ea, &names(&["a", "b"])).await.unwrap());
        let isr = etcd.isr().await.unwrap().unwrap();
        assert_eq!(isr.members, names(&["a", "b"]));
        assert!(isr.revision > ea);

        etcd.revoke(a).await.unwrap();
        assert_eq!(etcd.leader().await.unwrap(), None);
        let b = etcd.grant(30).await.unwrap();
        let stale = etcd
            .campaign("b", "b:1", b, ea, &names(&["b"]))
            .await
            .unwrap();
        assert_eq!(stale, None, "the ISR moved on since revision {ea}");
        let eb = etcd
            .campaign("b", "b:1", b, isr.revision, &names(&["b"]))
            .await
            .unwrap();
        let eb = eb.expect("b wins with the current ISR revision");
        assert!(eb > ea);

        assert!(
            !etcd.set_isr(ea, &names(&["a"])).await.unwrap(),
            "a's term is over"
        );
        assert!(!etcd.set_isr(0, &names(&["a"])).await.unwrap());
        assert!(etcd.set_isr(eb, &names(&["b", "a"])).await.unwrap());
        assert_eq!(
            etcd.isr().await.unwrap().unwrap().members,
            names(&["b", "a"])
        );
    }

    #[tokio::test]
    async fn the_leader_key_goes_with_its_lease() {
        let server = Server::start().await;
        let etcd = server.client("c", T);
        let lease = etcd.grant(2).await.unwrap();
        etcd.campaign("a", "a:1", lease, 0, &names(&["a"]))
            .await
            .unwrap()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while etcd.leader().await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "the leader key outlived its lease"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!etcd.renew(lease).await.unwrap());
        assert!(etcd.isr().await.unwrap().is_some(), "the ISR has no lease");
    }

    #[tokio::test]
    async fn members_lists_the_registered_nodes() {
        let server = Server::start().await;
        let etcd = server.client("c", T);
        let other = server.client("c2", T);
        let lease = etcd.grant(30).await.unwrap();
        assert_eq!(etcd.members().await.unwrap(), vec![]);
        etcd.register("b", r#"{"version":"1"}"#, lease)
            .await
            .unwrap();
        etcd.register("a", "", lease).await.unwrap();
        other.register("x", "{}", lease).await.unwrap();
        let members = etcd.members().await.unwrap();
        let expected = vec![
            Member {
                node: "a".into(),
                info: "".into(),
            },
            Member {
                node: "b".into(),
                info: r#"{"version":"1"}"#.into(),
            },
        ];
        assert_eq!(members, expected);
        etcd.revoke(lease).await.unwrap();
        assert_eq!(etcd.members().await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn settings_are_the_clusters_own_and_outlive_leases() {
        let server = Server::start().await;
        let etcd = server.client("c", T);
        let other = server.client("c2", T);
        assert_eq!(etcd.setting("cluster_name").await.unwrap(), None);
        etcd.set_setting("cluster_name", "prod-mq").await.unwrap();
        etcd.set_setting("cluster_name", "prod-mq-2").await.unwrap();
        assert_eq!(
            etcd.setting("cluster_name").await.unwrap().as_deref(),
            Some("prod-mq-2")
        );
        assert_eq!(other.setting("cluster_name").await.unwrap(), None);
        etcd.set_setting("nodes/warren@b", "").await.unwrap();
        etcd.set_setting("nodes/warren@a", "").await.unwrap();
        let nodes = etcd.settings("nodes/").await.unwrap();
        let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["warren@a", "warren@b"]);
        etcd.clear_setting("nodes/warren@a").await.unwrap();
        assert_eq!(etcd.settings("nodes/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_gateway_error_is_an_err_with_its_message() {
        let server = Server::start().await;
        let etcd = server.client("c", T);
        let lease = etcd.grant(30).await.unwrap();
        etcd.revoke(lease).await.unwrap();
        let err = etcd
            .campaign("a", "a:1", lease, 0, &names(&["a"]))
            .await
            .unwrap_err();
        assert!(err.0.contains("lease not found"), "{err}");
        let err = etcd.register("a", "", lease).await.unwrap_err();
        assert!(err.0.contains("lease not found"), "{err}");
    }

    /// A listener that accepts connections (the kernel does) and never answers.
    fn silent_endpoint() -> (std::net::TcpListener, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (listener, url)
    }

    #[tokio::test]
    async fn calls_fail_over_and_stay_with_the_endpoint_that_answered() {
        let server = Server::start().await;
        let (_silent, silent) = silent_endpoint();
        let timeout = Duration::from_secs(1);
        let etcd = Etcd::new(&[silent, server.url.clone()], "c", timeout);
        let first = Instant::now();
        etcd.grant(30).await.expect("the second endpoint answers");
        assert!(
            first.elapsed() >= timeout,
            "the silent endpoint was tried first"
        );
        let second = Instant::now();
        etcd.leader().await.unwrap();
        assert!(
            second.elapsed() < timeout,
            "the next call starts at the endpoint that answered"
        );
    }

    #[tokio::test]
    async fn unreachable_endpoints_fail_within_the_timeout() {
        let (_silent, silent) = silent_endpoint();
        let refused = format!("http://127.0.0.1:{}", free_port());
        let timeout = Duration::from_millis(300);
        let endpoints = [
            refused.clone(),
            silent.clone(),
            "https://127.0.0.1:1".to_string(),
        ];
        let etcd = Etcd::new(&endpoints, "c", timeout);
        let start = Instant::now();
        let err = etcd.renew(1).await.unwrap_err();
        assert!(
            start.elapsed() < timeout * 2 + Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(err.0.contains(&refused) && err.0.contains(&silent), "{err}");
        assert!(!err.0.contains('\n'), "one line: {err}");
        let none = Etcd::new(&[], "c", timeout);
        assert!(none.leader().await.is_err());
    }

    #[test]
    fn dechunks_bodies_with_trailers() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n\
                    5\r\n{\"a\":\r\n3;ext=1\r\n 1}\r\n0\r\nX: y\r\n\r\n";
        let reply = parse_response(raw).unwrap();
        assert_eq!(reply.status, 404);
        assert_eq!(reply.json.unwrap(), json!({"a": 1}));
        let truncated = &raw[..raw.len() - 20];
        assert!(parse_response(truncated).is_err());
    }

    #[test]
    fn reads_content_length_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{\"a\":1}  trailing";
        assert_eq!(parse_response(raw).unwrap().json.unwrap(), json!({"a": 1}));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}").is_err());
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        let unframed = parse_response(b"HTTP/1.0 200 OK\r\n\r\n[1]").unwrap();
        assert_eq!(unframed.json.unwrap(), json!([1]));
    }

    #[test]
    fn a_stream_is_read_to_its_first_message() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut buf = head.clone();
        buf.extend_from_slice(b"10\r\n{\"result\":{\"TTL\"");
        assert!(first_message(&buf).is_none(), "not whole yet");
        let mut buf = head;
        buf.extend_from_slice(b"12\r\n{\"result\":{\"x\":1}}\r\n5\r\n{\"res");
        let reply = first_message(&buf).expect("the first message");
        assert_eq!(reply.json.unwrap(), json!({"result": {"x": 1}}));
    }

    #[test]
    fn gateway_errors_are_recognised() {
        let unary = json!({"error": "etcdserver: requested lease not found", "message": "etcdserver: requested lease not found", "code": 5});
        assert_eq!(
            gateway_error(&unary),
            Some((5, "etcdserver: requested lease not found".into()))
        );
        let stream = json!({"error": {"grpc_code": 14, "http_code": 503, "message": "no leader"}});
        assert_eq!(gateway_error(&stream), Some((14, "no leader".into())));
        assert!(matches!(
            interpret(Reply {
                status: 503,
                json: Ok(stream)
            }),
            Err(Failure::Transport(_))
        ));
        let answer = json!({"header": {"revision": "3"}, "ID": "7", "TTL": "5", "error": ""});
        assert_eq!(gateway_error(&answer), None);
        let r: LeaseResponse = decode("p", answer).unwrap();
        assert_eq!((r.id, r.ttl), (7, 5));
        assert!(decode::<LeaseResponse>("p", json!({"ID": "x"})).is_err());
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(
            prefix_end(b"/warren/c/members/"),
            b"/warren/c/members0".to_vec()
        );
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn endpoints_parse() {
        let t = Target::parse("http://127.0.0.1:2379/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.connect.as_str()),
            ("127.0.0.1:2379", "127.0.0.1:2379")
        );
        assert_eq!(Target::parse("http://etcd").unwrap().connect, "etcd:80");
        assert_eq!(Target::parse("http://[::1]").unwrap().connect, "[::1]:80");
        assert_eq!(
            Target::parse("http://[::1]:2379").unwrap().connect,
            "[::1]:2379"
        );
        assert!(Target::parse("https://etcd:2379").is_err());
        assert!(Target::parse("http://").is_err());
    }
}
