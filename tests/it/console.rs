//! The web console's assets on the management port: GET / serves the page, the page's
//! script and stylesheet come with their content types, and nothing in them points
//! outside the broker (no CDN, no external URL): the console works on an offline host.
//! The console's behaviour in a browser is tests/clients/test_console.py.
use crate::common::*;

use std::io::{Read, Write};
use std::net::TcpStream;

/// One response: status, headers (lowercased names), body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 GET without credentials (the console's assets need none).
fn get(addr: &str, path: &str) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to the management port");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    Resp {
        status: status.parse().unwrap(),
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
            .collect(),
        body: body.to_owned(),
    }
}

/// The console lives on warren's own management listener.
fn spawn() -> Option<Broker> {
    if is_external() {
        return None;
    }
    Some(Broker::start())
}

/// The values of `attr="..."` in an HTML text.
fn attr_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let pat = format!("{attr}=\"");
    html.match_indices(&pat)
        .filter_map(|(i, _)| {
            let rest = &html[i + pat.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

#[test]
fn the_page_is_served_at_the_root_and_as_index_html_without_credentials() {
    let Some(broker) = spawn() else { return };
    let addr = broker.management_addr();
    let root = get(addr, "/");
    assert_eq!(root.status, 200);
    assert_eq!(
        root.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(root.header("cache-control"), Some("no-cache"));
    // The browser itself refuses anything from another origin, and framing.
    let policy = root.header("content-security-policy").unwrap();
    assert!(policy.starts_with("default-src 'self';"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(root.header("x-frame-options"), Some("DENY"));
    assert!(root.body.starts_with("<!DOCTYPE html>"));
    assert!(root.body.contains("id=\"login-form\""));
    assert!(root
        .body
        .contains("<script src=\"js/console.js\"></script>"));
    let index = get(addr, "/index.html");
    assert_eq!(index.status, 200);
    assert_eq!(index.body, root.body);

    // Serving the page opened nothing else: the API still wants credentials, and an
    // unknown path is still the API's JSON 404.
    let api = get(addr, "/api/overview");
    assert_eq!(api.status, 401);
    let unknown = get(addr, "/js/nothing.js");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.header("content-type"), Some("application/json"));
}

#[test]
fn every_asset_the_page_references_is_served_with_its_content_type() {
    let Some(broker) = spawn() else { return };
    let addr = broker.management_addr();
    let html = get(addr, "/").body;
    let mut refs: Vec<&str> = attr_values(&html, "src");
    refs.extend(attr_values(&html, "href"));
    refs.retain(|r| !r.starts_with('#') && !r.starts_with("data:"));
    refs.sort();
    assert_eq!(refs, ["css/console.css", "js/console.js"]);

    let js = get(addr, "/js/console.js");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(js.header("cache-control"), Some("no-cache"));
    assert!(js.body.contains("function queuesPage("));
    let css = get(addr, "/css/console.css");
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(css.header("x-content-type-options"), Some("nosniff"));
    assert!(css.body.contains("table"));
}

#[test]
fn the_assets_reference_no_external_url() {
    let Some(broker) = spawn() else { return };
    let addr = broker.management_addr();
    for path in ["/", "/js/console.js", "/css/console.css"] {
        let body = get(addr, path).body;
        assert!(!body.is_empty(), "{path} is empty");
        for external in [
            "http://",
            "https://",
            "src=\"//",
            "href=\"//",
            "url(//",
            "@import",
        ] {
            assert!(
                !body.contains(external),
                "{path} contains {external:?}: the console must load nothing from elsewhere"
            );
        }
    }
}
