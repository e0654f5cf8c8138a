//! No request can choose where the gateway connects (docs/DESIGN.md §Request path: the upstream is the service's
//! registered base URL only). Beside the registered upstream runs an "internal" server a
//! caller would love to reach; every attempt below names it — as the service, in the path,
//! as an absolute request target, in `Host`, in the query — and it must see nothing, while
//! the paths that can be served reach the registered upstream under its own base path.

use tollgate_testkit as common;

use common::{raw, token, Gateway, Upstream};
use serde_json::Value;

struct Setup {
    registered: Upstream,
    internal: Upstream,
    gateway: Gateway,
    auth: String,
}

impl Setup {
    async fn new() -> Setup {
        let registered = Upstream::start().await;
        let internal = Upstream::start().await;
        let yaml = format!(
            "services:
  - name: notes
    upstream: {}/base
    endpoints:
      - {{ method: ANY, path: /*, credits: 1 }}
tenants:
  - {{ id: acme, credits: 100 }}
",
            registered.url()
        );
        Setup {
            gateway: Gateway::start(&yaml, None),
            auth: format!("Authorization: Bearer {}", token("acme", "alice")),
            registered,
            internal,
        }
    }

    async fn send(&self, target: &str, host: &str) -> raw::RawResponse {
        let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{}", self.auth);
        raw::send(self.gateway.addr(), &head).await
    }
}

fn assert_problem(r: &raw::RawResponse, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reaches_anything_but_the_registered_upstream() {
    let s = Setup::new().await;
    let internal = s.internal.addr.to_string();
    let registered = s.registered.addr.to_string();

    // Refused before any lookup: encodings that could turn into a separator or a dot.
    for path in [
        "/api/proxy/notes/x%00y".to_owned(),
        "/api/proxy/notes/%2E%2E/%2E%2E/x".to_owned(),
        "/api/proxy/notes/a%5Cb".to_owned(),
        format!("/api/proxy/notes/%2F%2F{internal}/x"),
        format!("/api/proxy/notes/..%2f..%2f{internal}"),
        format!("/api/proxy/notes/{}", "a/".repeat(4_500)),
    ] {
        let r = s.send(&path, "t").await;
        let expected = if path.len() > 8 * 1024 { 414 } else { 400 };
        assert_problem(&r, expected, &path[..path.len().min(60)]);
    }
    // A service is a registered name, never a host, an address or a URL.
    for service in [
        internal.clone(),
        format!("alice@{internal}"),
        "localhost".to_owned(),
        "169.254.169.254".to_owned(),
        "evil.example".to_owned(),
        "http:".to_owned(),
    ] {
        let r = s.send(&format!("/api/proxy/{service}/x"), "t").await;
        assert_problem(&r, 404, &service);
    }
    assert_eq!(s.registered.requests(), 0);

    // Served, and only by the registered upstream, under its base path, with its own Host:
    // an absolute-form target naming the internal server, a `Host` naming it, a URL in the
    // query, and an `@` inside a path segment.
    for (target, host) in [
        (
            format!("http://{internal}/api/proxy/notes/x"),
            internal.clone(),
        ),
        ("/api/proxy/notes/x".to_owned(), internal.clone()),
        (
            format!("/api/proxy/notes/fetch?url=http://{internal}/admin"),
            "t".to_owned(),
        ),
        (format!("/api/proxy/notes/@{internal}/x"), "t".to_owned()),
    ] {
        let r = s.send(&target, &host).await;
        assert_eq!(r.status, 200, "{target}: {}", r.body);
        let seen: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(seen["headers"]["host"], registered.as_str(), "{target}");
        let path = seen["path"].as_str().unwrap();
        assert!(path.starts_with("/base/"), "{target} reached {path}");
    }
    assert_eq!(s.registered.requests(), 4);
    assert_eq!(
        s.internal.requests(),
        0,
        "the internal server was never reached"
    );
}
