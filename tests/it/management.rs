//! The management HTTP API (port 15672 in RabbitMQ): paths, JSON fields, status codes
//! and error bodies as rabbitmq_management's, checked against real AMQP traffic.
use crate::common::*;

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{json, Value};

/// One HTTP response: status code, headers (lowercased names), body as JSON (Null
/// when empty or not JSON).
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    json: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// A blocking HTTP/1.1 request with basic auth (`None`: no Authorization header).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&Value>,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to the management port");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        req.push_str(&format!("Authorization: Basic {}\r\n", basic(u, p)));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// The API of one broker, as guest (an administrator on loopback).
struct Api {
    addr: String,
}

impl Api {
    fn of(broker: &Broker) -> Api {
        Api {
            addr: broker.management_addr().to_owned(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.call_as(("guest", "guest"), method, path, body).await
    }

    async fn call_as(
        &self,
        who: (&str, &str),
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Resp {
        let (addr, method, path) = (self.addr.clone(), method.to_owned(), path.to_owned());
        let (u, p) = (who.0.to_owned(), who.1.to_owned());
        tokio::task::spawn_blocking(move || {
            http(&addr, &method, &path, Some((&u, &p)), body.as_ref())
        })
        .await
        .unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.call("GET", path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.json);
        assert_eq!(r.header("content-type"), Some("application/json"));
        r.json
    }

    /// Poll GET `path` until `field` reads `want` (queue gauges trail by one burst).
    async fn wait_field(&self, path: &str, field: &str, want: Value) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let v = self.get(path).await;
            if v[field] == want || std::time::Instant::now() > deadline {
                assert_eq!(v[field], want, "{path} {field}: {v}");
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn spawn() -> Option<Broker> {
    // The API is warren's own listener: nothing to test against an external broker here.
    if is_external() {
        return None;
    }
    Some(Broker::start())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_whoami_nodes_and_vhosts_describe_the_node() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let (_conn, ch) = broker.channel().await;
    let q = unique("mgmt-ov");
    declare_queue(&ch, &q).await;
    publish(&ch, "", &q, b"one").await;
    publish(&ch, "", &q, b"two").await;
    wait_message_count(&ch, &q, 2).await;

    let ov = api.get("/api/overview").await;
    assert_eq!(ov["rabbitmq_version"], "3.13.7");
    assert_eq!(ov["management_version"], "3.13.7");
    assert_eq!(ov["product_name"], "warren");
    assert!(ov["node"].as_str().unwrap().starts_with("warren@"));
    assert_eq!(ov["object_totals"]["queues"], 1);
    assert_eq!(ov["object_totals"]["connections"], 1);
    assert_eq!(ov["object_totals"]["channels"], 1);
    assert_eq!(
        ov["object_totals"]["exchanges"], 7,
        "the default and amq.* exchanges"
    );
    assert_eq!(ov["queue_totals"]["messages_ready"], 2);
    assert_eq!(ov["queue_totals"]["messages"], 2);
    assert_eq!(ov["message_stats"]["publish"], 2);
    assert!(ov["message_stats"]["publish_details"]["rate"].is_number());

    let me = api.get("/api/whoami").await;
    assert_eq!(me, json!({"name": "guest", "tags": ["administrator"]}));

    let nodes = api.get("/api/nodes").await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["name"], ov["node"]);
    assert_eq!(nodes[0]["running"], true);
    assert!(nodes[0]["mem_used"].as_u64().unwrap() > 0);
    assert!(nodes[0]["disk_free"].as_u64().unwrap() > 0);

    let vhosts = api.get("/api/vhosts").await;
    assert_eq!(vhosts.as_array().unwrap().len(), 1);
    assert_eq!(vhosts[0]["name"], "/");
    assert_eq!(vhosts[0]["messages"], 2);
    assert_eq!(api.get("/api/vhosts/%2F").await["name"], "/");
    assert_eq!(
        api.get("/api/health/checks/alarms").await,
        json!({"status": "ok"})
    );

    let missing = api.call("GET", "/api/vhosts/nope", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_tags_decide_access_with_rabbitmq_error_bodies() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let addr = api.addr.clone();
    let none = tokio::task::spawn_blocking(move || http(&addr, "GET", "/api/overview", None, None))
        .await
        .unwrap();
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Basic realm=\"RabbitMQ Management\"")
    );

    let bad = api
        .call_as(("guest", "wrong"), "GET", "/api/overview", None)
        .await;
    assert_eq!(bad.status, 401);
    assert_eq!(
        bad.json,
        json!({"error": "not_authorized", "reason": "Login failed"})
    );
    assert!(bad.header("www-authenticate").is_some());

    // A user without tags: not a management user.
    let put = |name: &str, tags: &str| json!({"password": name, "tags": tags}).to_owned();
    for (name, tags) in [("plain", ""), ("mgmt", "management"), ("mon", "monitoring")] {
        let r = api
            .call("PUT", &format!("/api/users/{name}"), Some(put(name, tags)))
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
    }
    let r = api
        .call_as(("plain", "plain"), "GET", "/api/overview", None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["reason"], "Not management user");

    // management: its own view; not /api/nodes (monitoring), not /api/users (admin).
    let r = api
        .call_as(("mgmt", "mgmt"), "GET", "/api/whoami", None)
        .await;
    assert_eq!(r.json, json!({"name": "mgmt", "tags": ["management"]}));
    let r = api
        .call_as(("mgmt", "mgmt"), "GET", "/api/nodes", None)
        .await;
    assert_eq!(
        (r.status, r.json["reason"].as_str()),
        (401, Some("Not monitor user"))
    );
    let r = api
        .call_as(("mgmt", "mgmt"), "GET", "/api/users", None)
        .await;
    assert_eq!(
        (r.status, r.json["reason"].as_str()),
        (401, Some("Not administrator user"))
    );
    // Without permissions in "/" the vhost is not theirs.
    let r = api
        .call_as(("mgmt", "mgmt"), "GET", "/api/queues/%2F", None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json["reason"],
        "User not authorised to access virtual host"
    );
    let r = api
        .call_as(("mgmt", "mgmt"), "GET", "/api/vhosts", None)
        .await;
    assert_eq!(r.json, json!([]));

    let r = api.call_as(("mon", "mon"), "GET", "/api/nodes", None).await;
    assert_eq!(r.status, 200);
    let r = api
        .call_as(("mon", "mon"), "GET", "/api/vhosts", None)
        .await;
    assert_eq!(
        r.json.as_array().unwrap().len(),
        1,
        "monitors see every vhost"
    );
    assert_eq!(
        api.call("PUT", "/api/queues/%2F/mq", None).await.status,
        201
    );
    let r = api
        .call_as(("mon", "mon"), "GET", "/api/queues", None)
        .await;
    assert_eq!(
        r.json,
        json!([]),
        "but only the queues of vhosts they may use"
    );
    assert_eq!(api.get("/api/queues").await.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_listed_declared_purged_read_and_deleted() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let (_conn, ch) = broker.channel().await;
    let q = unique("mgmt-q");
    let path = format!("/api/queues/%2F/{q}");

    let r = api
        .call(
            "PUT",
            &path,
            Some(json!({"durable": true, "arguments": {"x-max-length": 10}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let r = api
        .call(
            "PUT",
            &path,
            Some(json!({"durable": true, "arguments": {"x-max-length": 10}})),
        )
        .await;
    assert_eq!(r.status, 204, "an equivalent redeclare");
    let r = api
        .call("PUT", &path, Some(json!({"durable": false})))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json,
        json!({"error": "bad_request", "reason": format!(
            "inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'false' but current is 'true'")})
    );
    assert!(
        queue_exists(&_conn, &q).await,
        "declared over HTTP, seen over AMQP"
    );

    for i in 0..3 {
        publish_props(
            &ch,
            "",
            &q,
            format!("m{i}").as_bytes(),
            BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_headers(table(vec![("h", lstr("v"))])),
        )
        .await;
    }
    publish(&ch, "", &q, &[0xff, 0x00]).await;
    let one = api.wait_field(&path, "messages_ready", json!(4)).await;
    assert_eq!(one["name"], q.as_str());
    assert_eq!(one["vhost"], "/");
    assert_eq!(one["durable"], true);
    assert_eq!(one["auto_delete"], false);
    assert_eq!(one["exclusive"], false);
    assert_eq!(one["arguments"], json!({"x-max-length": 10}));
    assert_eq!(one["messages"], 4);
    assert_eq!(one["messages_unacknowledged"], 0);
    assert_eq!(one["consumers"], 0);
    assert_eq!(one["state"], "running");
    assert_eq!(one["policy"], Value::Null);

    let all = api.get("/api/queues").await;
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == q.as_str()));
    let in_vhost = api.get("/api/queues/%2F").await;
    assert_eq!(in_vhost.as_array().unwrap().len(), 1);

    // Peek (requeue): the messages stay and come back redelivered.
    let get = format!("{path}/get");
    let peek = json!({"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"});
    let r = api.call("POST", &get, Some(peek.clone())).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let msgs = r.json.as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["payload"], "m0");
    assert_eq!(msgs[0]["payload_encoding"], "string");
    assert_eq!(msgs[0]["redelivered"], false);
    assert_eq!(msgs[0]["exchange"], "");
    assert_eq!(msgs[0]["routing_key"], q.as_str());
    assert_eq!(msgs[0]["message_count"], 3);
    assert_eq!(
        msgs[0]["properties"],
        json!({"content_type": "text/plain", "headers": {"h": "v"}})
    );
    api.wait_field(&path, "messages_ready", json!(4)).await;
    let r = api.call("POST", &get, Some(peek)).await;
    assert_eq!(r.json[0]["payload"], "m0");
    assert_eq!(r.json[0]["redelivered"], true);

    // Take (ack_requeue_false): gone from the queue; binary payloads come as base64.
    let take = json!({"count": 10, "ackmode": "ack_requeue_false", "encoding": "auto"});
    let r = api.call("POST", &get, Some(take.clone())).await;
    let msgs = r.json.as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[3]["payload"], "/wA=");
    assert_eq!(msgs[3]["payload_encoding"], "base64");
    assert_eq!(message_count(&ch, &q).await, 0);
    let r = api
        .call("POST", &get, Some(json!({"count": 1, "ackmode": "bogus"})))
        .await;
    assert_eq!(r.status, 400);

    // Purge.
    publish(&ch, "", &q, b"x").await;
    wait_message_count(&ch, &q, 1).await;
    let r = api.call("DELETE", &format!("{path}/contents"), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(message_count(&ch, &q).await, 0);

    // Delete: if-empty refuses a queue with messages, with RabbitMQ's reason.
    publish(&ch, "", &q, b"x").await;
    wait_message_count(&ch, &q, 1).await;
    let r = api
        .call("DELETE", &format!("{path}?if-empty=true"), None)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json["reason"],
        format!("queue '{q}' in vhost '/' not empty")
    );
    let r = api.call("DELETE", &path, None).await;
    assert_eq!(r.status, 204);
    assert!(!queue_exists(&_conn, &q).await);
    let r = api.call("GET", &path, None).await;
    assert_eq!(r.status, 404);
    let r = api.call("DELETE", &path, None).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_endpoints_sort_filter_and_paginate() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    for name in ["alpha", "beta", "gamma", "delta", "alphabet"] {
        let r = api
            .call("PUT", &format!("/api/queues/%2F/{name}"), None)
            .await;
        assert_eq!(r.status, 201);
    }
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = api.get("/api/queues?sort=name&sort_reverse=true").await;
    assert_eq!(names(&all), ["gamma", "delta", "beta", "alphabet", "alpha"]);
    let page = api
        .get("/api/queues?page=2&page_size=2&name=a&sort=name")
        .await;
    assert_eq!(page["total_count"], 5);
    assert_eq!(page["filtered_count"], 5);
    assert_eq!(page["page"], 2);
    assert_eq!(page["page_count"], 3);
    assert_eq!(page["page_size"], 2);
    assert_eq!(page["item_count"], 2);
    assert_eq!(names(&page["items"]), ["beta", "delta"]);
    let re = api
        .get("/api/queues?page=1&name=%5Ealpha&use_regex=true")
        .await;
    assert_eq!(names(&re["items"]), ["alpha", "alphabet"]);
    assert_eq!(re["filtered_count"], 2);
    let cols = api.get("/api/queues?columns=name,messages&sort=name").await;
    assert_eq!(cols[0], json!({"name": "alpha", "messages": 0}));
    let r = api.call("GET", "/api/queues?page=9", None).await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_are_declared_listed_published_to_and_deleted() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let (conn, ch) = broker.channel().await;
    let x = unique("mgmt-x");
    let q = unique("mgmt-xq");
    let path = format!("/api/exchanges/%2F/{x}");

    let r = api
        .call(
            "PUT",
            &path,
            Some(json!({"type": "topic", "durable": true})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let r = api
        .call(
            "PUT",
            &path,
            Some(json!({"type": "topic", "durable": true})),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = api
        .call(
            "PUT",
            &path,
            Some(json!({"type": "direct", "durable": true})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json["reason"],
        format!("inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'direct' but current is 'topic'")
    );
    assert!(exchange_exists(&conn, &x).await);

    let one = api.get(&path).await;
    assert_eq!(one["name"], x.as_str());
    assert_eq!(one["type"], "topic");
    assert_eq!(one["durable"], true);
    assert_eq!(one["internal"], false);
    let default = api.get("/api/exchanges/%2F/amq.default").await;
    assert_eq!(default["name"], "");
    assert_eq!(default["type"], "direct");
    let all = api.get("/api/exchanges/%2F").await;
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"amq.topic") && names.contains(&x.as_str()) && names.contains(&""));

    // Publish: unroutable, then routed through a binding made over AMQP.
    let publish = json!({"properties": {"delivery_mode": 2, "headers": {"a": 1}},
                         "routing_key": "k.1", "payload": "hello", "payload_encoding": "string"});
    let r = api
        .call("POST", &format!("{path}/publish"), Some(publish.clone()))
        .await;
    assert_eq!((r.status, r.json.clone()), (200, json!({"routed": false})));
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &x, "k.*").await;
    let r = api
        .call("POST", &format!("{path}/publish"), Some(publish))
        .await;
    assert_eq!(r.json, json!({"routed": true}));
    let got = get(&ch, &q, true).await.expect("the published message");
    assert_eq!(&got.delivery.data[..], b"hello");
    assert_eq!(got.delivery.routing_key.as_str(), "k.1");
    assert_eq!(got.delivery.properties.delivery_mode(), &Some(2));
    let b64 = json!({"properties": {}, "routing_key": q, "payload": "AAE=", "payload_encoding": "base64"});
    let r = api
        .call("POST", "/api/exchanges/%2F/amq.default/publish", Some(b64))
        .await;
    assert_eq!(r.json, json!({"routed": true}));
    let got = get(&ch, &q, true)
        .await
        .expect("published to the default exchange");
    assert_eq!(&got.delivery.data[..], &[0u8, 1]);

    // if-unused refuses an exchange with bindings; amq.* cannot be deleted.
    let r = api
        .call("DELETE", &format!("{path}?if-unused=true"), None)
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    let r = api
        .call("DELETE", "/api/exchanges/%2F/amq.topic", None)
        .await;
    assert_eq!(
        r.status, 401,
        "access refused maps to 401 as in RabbitMQ: {}",
        r.json
    );
    let r = api.call("DELETE", &path, None).await;
    assert_eq!(r.status, 204);
    assert!(!exchange_exists(&conn, &x).await);
    let r = api
        .call(
            "POST",
            &format!("{path}/publish"),
            Some(json!({"routing_key": "", "payload": ""})),
        )
        .await;
    assert_eq!(r.status, 404);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_are_created_listed_and_deleted_by_properties_key() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let (conn, ch) = broker.channel().await;
    let (x, x2, q) = (unique("mgmt-bx"), unique("mgmt-bx2"), unique("mgmt-bq"));
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    declare_exchange(&ch, &x2, ExchangeKind::Fanout).await;
    declare_queue(&ch, &q).await;

    let eq = format!("/api/bindings/%2F/e/{x}/q/{q}");
    let r = api
        .call(
            "POST",
            &eq,
            Some(json!({"routing_key": "rk one", "arguments": {}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(
        r.header("location"),
        Some(format!("/api/bindings/%2F/e/{x}/q/{q}/rk+one").as_str())
    );
    let r = api
        .call(
            "POST",
            &eq,
            Some(json!({"routing_key": "rk", "arguments": {"x-a": 1}})),
        )
        .await;
    assert_eq!(r.status, 201);
    let ee = format!("/api/bindings/%2F/e/{x}/e/{x2}");
    let r = api
        .call(
            "POST",
            &ee,
            Some(json!({"routing_key": "", "arguments": {}})),
        )
        .await;
    assert_eq!(r.status, 201);

    // Routed over AMQP through the HTTP-made binding.
    publish(&ch, &x, "rk one", b"via http binding").await;
    wait_message_count(&ch, &q, 1).await;

    let between = api.get(&eq).await;
    let between = between.as_array().unwrap();
    assert_eq!(between.len(), 2);
    assert_eq!(between[0]["source"], x.as_str());
    assert_eq!(between[0]["destination"], q.as_str());
    assert_eq!(between[0]["destination_type"], "queue");
    assert_eq!(between[0]["routing_key"], "rk one");
    assert_eq!(between[0]["properties_key"], "rk+one");
    let with_args = between[1]["properties_key"].as_str().unwrap().to_owned();
    assert!(with_args.starts_with("rk~"), "{with_args}");
    assert_eq!(api.get(&ee).await[0]["properties_key"], "~");

    let all = api.get("/api/bindings/%2F").await;
    let all = all.as_array().unwrap();
    assert!(
        all.iter().any(|b| b["source"] == ""
            && b["destination"] == q.as_str()
            && b["routing_key"] == q.as_str()),
        "the default exchange's binding to each queue is listed"
    );
    assert_eq!(all.len(), 4);
    assert_eq!(
        api.get(&format!("/api/queues/%2F/{q}/bindings"))
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        api.get(&format!("/api/exchanges/%2F/{x}/bindings/source"))
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        api.get(&format!("/api/exchanges/%2F/{x2}/bindings/destination"))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let one = api.get(&format!("{eq}/rk+one")).await;
    assert_eq!(one["routing_key"], "rk one");
    let r = api.call("DELETE", &format!("{eq}/{with_args}"), None).await;
    assert_eq!(r.status, 204);
    let r = api.call("DELETE", &format!("{eq}/{with_args}"), None).await;
    assert_eq!(r.status, 404);
    let r = api.call("DELETE", &format!("{ee}/~"), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(api.get(&eq).await.as_array().unwrap().len(), 1);
    let r = api
        .call(
            "POST",
            &format!("/api/bindings/%2F/e/{x}/q/missing"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 404);
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x, &x2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_channels_and_consumers_are_listed_and_a_connection_closed() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let (conn, ch) = broker.channel().await;
    let _ch2 = within(conn.create_channel()).await.unwrap();
    let q = unique("mgmt-cq");
    declare_queue(&ch, &q).await;
    let _consumer = consume(&ch, &q, false).await;

    let conns = api.get("/api/connections").await;
    let conns = conns.as_array().unwrap();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["channels"], 2);
    assert_eq!(c["protocol"], "AMQP 0-9-1");
    let name = c["name"].as_str().unwrap().to_owned();
    assert!(name.ends_with(&format!(" -> {}", broker.addr())), "{name}");
    assert_eq!(
        api.get("/api/vhosts/%2F/connections")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let encoded: String = name.replace(' ', "%20").replace('>', "%3E");
    let path = format!("/api/connections/{encoded}");
    assert_eq!(api.get(&path).await["name"], name.as_str());
    let chans = api.get(&format!("{path}/channels")).await;
    assert_eq!(chans.as_array().unwrap().len(), 2);
    let all = api.get("/api/channels").await;
    let first = &all.as_array().unwrap()[0];
    assert_eq!(first["consumer_count"], 1);
    assert_eq!(first["connection_details"]["name"], name.as_str());

    let consumers = api.get("/api/consumers").await;
    let consumers = consumers.as_array().unwrap();
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0]["queue"]["name"], q.as_str());
    assert_eq!(consumers[0]["ack_required"], true);
    assert_eq!(
        consumers[0]["channel_details"]["connection_name"],
        name.as_str()
    );

    let r = api.call("DELETE", &path, None).await;
    assert_eq!(r.status, 204);
    assert_connection_dead(&conn).await;
    let deadline = std::time::Instant::now() + WAIT;
    while !api
        .get("/api/connections")
        .await
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection stays listed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(api.call("GET", &path, None).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_permissions_policies_and_definitions_round_trip() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);

    // A vhost and a user with permissions there, who can then use AMQP.
    assert_eq!(
        api.call(
            "PUT",
            "/api/vhosts/mgmt-v",
            Some(json!({"description": "d"}))
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.call("PUT", "/api/vhosts/mgmt-v", None).await.status,
        204
    );
    let r = api
        .call(
            "PUT",
            "/api/users/alice",
            Some(json!({"password": "pw", "tags": "management"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let u = api.get("/api/users/alice").await;
    assert_eq!(u["tags"], json!(["management"]));
    assert_eq!(u["hashing_algorithm"], "rabbit_password_hashing_sha256");
    let perm = json!({"configure": "^a", "write": ".*", "read": ".*"});
    let r = api
        .call("PUT", "/api/permissions/mgmt-v/alice", Some(perm))
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let p = api.get("/api/permissions/mgmt-v/alice").await;
    assert_eq!(
        p,
        json!({"user": "alice", "vhost": "mgmt-v", "configure": "^a", "write": ".*", "read": ".*"})
    );
    assert_eq!(
        api.get("/api/users/alice/permissions")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let conn = connect(&broker.url_with("alice", "pw", "mgmt-v")).await;
    assert_connection_alive(&conn).await;
    drop(conn);
    // alice sees her vhost only, and may declare under her configure pattern.
    let alice = ("alice", "pw");
    let r = api.call_as(alice, "GET", "/api/vhosts", None).await;
    assert_eq!(r.json.as_array().unwrap().len(), 1);
    assert_eq!(r.json[0]["name"], "mgmt-v");
    assert_eq!(
        api.call_as(alice, "PUT", "/api/queues/mgmt-v/aq", None)
            .await
            .status,
        201
    );
    let r = api
        .call_as(alice, "PUT", "/api/queues/mgmt-v/bq", None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json["reason"], "Access refused.",
        "as rabbit_mgmt_util:direct_request"
    );

    // Policies: set, listed, applied to the queue, cleared.
    let pol = json!({"pattern": "^aq$", "definition": {"max-length": 5}, "priority": 1, "apply-to": "queues"});
    let r = api.call("PUT", "/api/policies/mgmt-v/cap", Some(pol)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let p = api.get("/api/policies/mgmt-v/cap").await;
    assert_eq!(p["definition"], json!({"max-length": 5}));
    assert_eq!(p["apply-to"], "queues");
    assert_eq!(api.get("/api/policies").await.as_array().unwrap().len(), 1);
    assert_eq!(api.get("/api/queues/mgmt-v/aq").await["policy"], "cap");
    let bad = json!({"pattern": ".*", "definition": {"max-length": "x"}});
    assert_eq!(
        api.call("PUT", "/api/policies/mgmt-v/bad", Some(bad))
            .await
            .status,
        400
    );
    let r = api
        .call_as(
            alice,
            "PUT",
            "/api/policies/mgmt-v/x",
            Some(json!({"pattern": ".*", "definition": {}})),
        )
        .await;
    assert_eq!(r.status, 401, "management users are not policymakers");

    // Definitions: exported, and imported again after the user is gone.
    let defs = api.get("/api/definitions").await;
    assert!(defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "alice"));
    assert!(defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "aq"));
    assert!(defs["policies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "cap"));
    assert_eq!(
        api.call("DELETE", "/api/policies/mgmt-v/cap", None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.call("DELETE", "/api/policies/mgmt-v/cap", None)
            .await
            .status,
        404
    );
    assert_eq!(
        api.call("DELETE", "/api/permissions/mgmt-v/alice", None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.call("DELETE", "/api/users/alice", None).await.status,
        204
    );
    assert_eq!(api.call("GET", "/api/users/alice", None).await.status, 404);
    let r = api.call("POST", "/api/definitions", Some(defs)).await;
    assert_eq!(r.status, 204, "{}", r.json);
    assert_eq!(
        api.get("/api/users/alice").await["tags"],
        json!(["management"])
    );
    assert_eq!(api.get("/api/policies/mgmt-v/cap").await["pattern"], "^aq$");
    let conn = connect(&broker.url_with("alice", "pw", "mgmt-v")).await;
    assert_connection_alive(&conn).await;

    assert_eq!(
        api.call("DELETE", "/api/vhosts/mgmt-v", None).await.status,
        204
    );
    assert_eq!(
        api.call("GET", "/api/vhosts/mgmt-v", None).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliveness_and_port_health_checks_answer_ok() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    assert_eq!(
        api.get("/api/aliveness-test/%2F").await,
        json!({"status": "ok"})
    );
    let (conn, _ch) = broker.channel().await;
    assert!(queue_exists(&conn, "aliveness-test").await);
    let port = broker.addr().rsplit_once(':').unwrap().1.to_owned();
    let r = api
        .get(&format!("/api/health/checks/port-listener/{port}"))
        .await;
    assert_eq!(r["status"], "ok");
    let r = api
        .call("GET", "/api/health/checks/port-listener/1", None)
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json["status"], "failed");
    assert_eq!(
        api.get("/api/health/checks/virtual-hosts").await["status"],
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_management_listen_turns_the_api_off() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-mgmt-off"));
    std::fs::create_dir_all(&dir).unwrap();
    let broker = Broker::spawn_in_env(dir, &[], &[("WARREN_MANAGEMENT_LISTEN", "")]);
    assert!(!broker.has_management());
    let (_conn, _ch) = broker.channel().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_and_limits_are_set_over_http_and_enforced() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let tp = json!({"exchange": "amq.topic", "write": "^allowed\\.", "read": ".*"});
    let r = api
        .call("PUT", "/api/topic-permissions/%2F/guest", Some(tp))
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let list = api.get("/api/topic-permissions/%2F/guest").await;
    assert_eq!(list[0]["exchange"], "amq.topic");
    assert_eq!(list[0]["write"], "^allowed\\.");
    let (conn, ch) = broker.channel().await;
    let watch = ChannelWatch::new(&ch).await;
    publish(&ch, "amq.topic", "denied.key", b"x").await;
    watch
        .assert_closed(
            403,
            "ACCESS_REFUSED - access to topic 'denied.key' in exchange 'amq.topic' in vhost '/' refused for user 'guest'",
        )
        .await;
    assert_eq!(
        api.call("DELETE", "/api/topic-permissions/%2F/guest", None)
            .await
            .status,
        204
    );
    assert_eq!(api.get("/api/topic-permissions").await, json!([]));

    let r = api
        .call(
            "PUT",
            "/api/vhost-limits/%2F/max-queues",
            Some(json!({"value": 1})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.json);
    assert_eq!(
        api.get("/api/vhost-limits/%2F").await,
        json!([{"vhost": "/", "value": {"max-queues": 1}}])
    );
    assert_eq!(
        api.call("PUT", "/api/queues/%2F/lim-1", None).await.status,
        201
    );
    let r = api.call("PUT", "/api/queues/%2F/lim-2", None).await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert_eq!(
        r.json["reason"],
        "cannot declare queue 'lim-2': queue limit in vhost '/' (1) is reached"
    );
    let r = api
        .call(
            "PUT",
            "/api/vhost-limits/%2F/bogus",
            Some(json!({"value": 1})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        api.call("DELETE", "/api/vhost-limits/%2F/max-queues", None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.call("PUT", "/api/queues/%2F/lim-2", None).await.status,
        201
    );

    let r = api
        .call(
            "PUT",
            "/api/user-limits/guest/max-channels",
            Some(json!({"value": 5})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.json);
    assert_eq!(
        api.get("/api/user-limits/guest").await,
        json!([{"user": "guest", "value": {"max-channels": 5}}])
    );
    assert_eq!(
        api.call("DELETE", "/api/user-limits/guest/max-channels", None)
            .await
            .status,
        204
    );
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhosts_definitions_are_exported_and_imported_into_another_vhost() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let r = api
        .call("PUT", "/api/queues/%2F/dq", Some(json!({"durable": true})))
        .await;
    assert_eq!(r.status, 201);
    let r = api
        .call(
            "PUT",
            "/api/exchanges/%2F/dx",
            Some(json!({"type": "fanout", "durable": true})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = api
        .call(
            "POST",
            "/api/bindings/%2F/e/dx/q/dq",
            Some(json!({"routing_key": ""})),
        )
        .await;
    assert_eq!(r.status, 201);
    let defs = api.get("/api/definitions/%2F").await;
    assert!(
        defs.get("users").is_none(),
        "a vhost's definitions hold no users"
    );
    let q = defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "dq")
        .cloned()
        .unwrap();
    assert!(q.get("vhost").is_none());
    assert_eq!(q["durable"], true);

    assert_eq!(api.call("PUT", "/api/vhosts/copy", None).await.status, 201);
    let r = api.call("POST", "/api/definitions/copy", Some(defs)).await;
    assert_eq!(r.status, 204, "{}", r.json);
    assert_eq!(api.get("/api/queues/copy/dq").await["durable"], true);
    assert_eq!(api.get("/api/exchanges/copy/dx").await["type"], "fanout");
    assert_eq!(
        api.get("/api/bindings/copy/e/dx/q/dq")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.call("GET", "/api/definitions/nope", None).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_with_a_reason_and_the_broker_carries_on() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let addr = api.addr.clone();
    let raw = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        let body = "{not json";
        write!(
            s,
            "PUT /api/queues/%2F/bad HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {}\r\nContent-Length: {}\r\n\r\n{body}",
            basic("guest", "guest"),
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(
        raw.contains(r#"{"error":"bad_request","reason":"not_json"}"#),
        "{raw}"
    );

    let cases = [
        ("PUT", "/api/exchanges/%2F/x1", json!({"durable": true})),
        ("PUT", "/api/exchanges/%2F/x1", json!({"type": "nosuch"})),
        (
            "PUT",
            "/api/queues/%2F/q1",
            json!({"arguments": {"x-max-length": "ten"}}),
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "q", "payload": "!!", "payload_encoding": "base64"}),
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "q", "payload": "", "properties": {"nosuch": 1}}),
        ),
        ("PUT", "/api/policies/%2F/p", json!({"definition": {}})),
        (
            "PUT",
            "/api/permissions/%2F/nobody",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        ),
        ("PUT", "/api/users/u1", json!({"tags": "management"})),
    ];
    for (method, path, body) in cases {
        let r = api.call(method, path, Some(body.clone())).await;
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.json);
        assert_eq!(r.json["error"], "bad_request");
        assert!(r.json["reason"].as_str().is_some_and(|s| !s.is_empty()));
    }
    let r = api.call("PUT", "/api/queues/%2F/amq.q", None).await;
    assert_eq!(
        r.status, 401,
        "amq.* names are refused as access errors: {}",
        r.json
    );
    // Still serving, over HTTP and AMQP.
    assert_eq!(api.get("/api/overview").await["product_name"], "warren");
    let (_conn, _ch) = broker.channel().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_queue_is_listed_but_not_touched_over_http() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let (_conn, ch) = broker.channel().await;
    let q = unique("mgmt-ex");
    within(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    let path = format!("/api/queues/%2F/{q}");
    assert_eq!(api.get(&path).await["exclusive"], true);
    let locked = format!(
        "cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally \
         declared on another connection or the exclusive property value does not match that of \
         the original declaration."
    );
    let r = api.call("DELETE", &path, None).await;
    assert_eq!(
        (r.status, r.json["reason"].as_str()),
        (400, Some(locked.as_str()))
    );
    let r = api.call("DELETE", &format!("{path}/contents"), None).await;
    assert_eq!(r.status, 400);
    let r = api
        .call(
            "POST",
            &format!("{path}/get"),
            Some(json!({"count": 1, "ackmode": "ack_requeue_false"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["reason"], format!("405 RESOURCE_LOCKED - {locked}"));
    assert!(queue_exists(&_conn, &q).await);
}

/// JSON bodies become field tables (arguments, headers): nested deeper than the tables
/// warren decodes (64 levels), they are refused with 400 before anything is stored;
/// nested a few dozen levels, they work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_deeper_than_tables_decode_is_refused() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let nest = |levels: usize| {
        let mut v = json!("bottom");
        for _ in 0..levels {
            v = json!({ "k": v });
        }
        v
    };
    let q = unique("mgmt-deep");
    let path = format!("/api/queues/%2F/{q}");
    let r = api
        .call(
            "PUT",
            &path,
            Some(json!({"durable": true, "arguments": {"x-deep": nest(70)}})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert!(r.json["reason"]
        .as_str()
        .unwrap()
        .contains("nested deeper than 64"));
    assert_eq!(api.call("GET", &path, None).await.status, 404);

    let defs = json!({"queues": [{"name": q, "vhost": "/", "durable": true,
                                   "auto_delete": false, "arguments": {"x-deep": nest(70)}}]});
    let r = api.call("POST", "/api/definitions", Some(defs)).await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert_eq!(api.call("GET", &path, None).await.status, 404);

    let r = api
        .call(
            "PUT",
            &path,
            Some(json!({"durable": true, "arguments": {"x-deep": nest(30)}})),
        )
        .await;
    assert!(matches!(r.status, 201 | 204), "{} {}", r.status, r.json);
    let got = api.get(&path).await;
    assert_eq!(got["arguments"]["x-deep"], nest(30));
}

/// Large definitions go through (RabbitMQ takes up to management.http.max_body_size,
/// 20 MB by default); beyond the limit, 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_bodies_up_to_the_limit_are_taken() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let q = unique("mgmt-big-defs");
    // 2.5 MB, most of it in a key the import ignores (with a warning).
    let defs = json!({
        "warren_test_padding": "p".repeat(2_500_000),
        "queues": [{"name": q, "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}],
    });
    let r = api.call("POST", "/api/definitions", Some(defs)).await;
    assert!(matches!(r.status, 201 | 204), "{} {}", r.status, r.json);
    assert_eq!(
        api.call("GET", &format!("/api/queues/%2F/{q}"), None)
            .await
            .status,
        200
    );

    let too_big = json!({ "warren_test_padding": "p".repeat(20_000_001) });
    let r = api.call("POST", "/api/definitions", Some(too_big)).await;
    assert_eq!(r.status, 413, "{}", r.json);
}

/// A body that trickles in is cut off after management.body_timeout with 408, and the
/// connection is closed: it cannot hold a socket and a task for ever.
#[test]
fn a_trickled_request_body_is_cut_off() {
    if is_external() {
        return;
    }
    let n = std::process::id();
    let dir = std::env::temp_dir().join(format!("warren-body-timeout-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = Broker::spawn_in_env(dir, &[], &[("WARREN_MANAGEMENT_BODY_TIMEOUT", "2")]);
    let mut s = TcpStream::connect(broker.management_addr()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "PUT /api/vhosts/trickle HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        basic("guest", "guest")
    );
    s.write_all(head.as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let sender = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..40 {
                if s.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        })
    };
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "cut off after {:?}",
        started.elapsed()
    );
    sender.join().unwrap();
}

/// Field names and short-string properties are at most 255 bytes on the wire: longer
/// ones in a JSON body are refused with 400 (found by fuzzing: converting them panicked
/// the request's task, and `definitions.load_file` at start-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_keys_and_properties_too_long_for_amqp_are_refused() {
    let Some(broker) = spawn() else { return };
    let api = Api::of(&broker);
    let long = "k".repeat(300);
    let q = unique("mgmt-long-key");
    let path = format!("/api/queues/%2F/{q}");
    let r = api
        .call("PUT", &path, Some(json!({"arguments": {long.clone(): 1}})))
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert!(r.json["reason"]
        .as_str()
        .unwrap()
        .contains("longer than 255"));
    let defs = json!({"queues": [{"name": q, "vhost": "/", "durable": true,
                                   "auto_delete": false, "arguments": {"x": {long.clone(): 1}}}]});
    let r = api.call("POST", "/api/definitions", Some(defs)).await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert_eq!(api.call("GET", &path, None).await.status, 404);

    assert!(matches!(
        api.call("PUT", &path, Some(json!({}))).await.status,
        201 | 204
    ));
    let publish = |props: Value| json!({"routing_key": q, "payload": "x", "payload_encoding": "string", "properties": props});
    let r = api
        .call(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(publish(json!({"content_type": long}))),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    let r = api
        .call(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(publish(json!({"headers": {long.clone(): 1}}))),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    // The API still answers.
    let r = api
        .call(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(publish(json!({"content_type": "text/plain"}))),
        )
        .await;
    assert_eq!(
        (r.status, &r.json["routed"]),
        (200, &json!(true)),
        "{}",
        r.json
    );
}
