//! The behavioural suite of docs/DESIGN.md §Request path, run against every ledger: the
//! embedded one (one process, journal under the data dir), Redis (a private
//! `redis-server`), Redis with leased credits, and a Redis Cluster (three masters, three
//! replicas).

use tollgate_testkit as common;

use common::cluster::RedisCluster;
use common::{client, header_i64, raw, token, Gateway, RedisServer, Upstream};
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Redis,
    /// Redis with `ledger.lease` on (docs/DESIGN.md §Leased credits).
    Leased,
    Cluster,
}

/// The Redis a test runs on, if any.
enum Servers {
    None,
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Servers {
    fn start(backend: Backend) -> Servers {
        match backend {
            Backend::Embedded => Servers::None,
            Backend::Redis | Backend::Leased => Servers::Redis(RedisServer::start()),
            Backend::Cluster => Servers::Cluster(RedisCluster::start()),
        }
    }

    /// The gateway's environment for this ledger.
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Servers::None => vec![],
            Servers::Redis(redis) => vec![("TOLLGATE_REDIS_URL".to_owned(), redis.url())],
            Servers::Cluster(cluster) => vec![(
                "TOLLGATE_REDIS_CLUSTER_NODES".to_owned(),
                cluster.nodes_env(),
            )],
        }
    }

    /// The balance as Redis holds it (`None` on the embedded ledger: nothing to ask).
    async fn balance(&self, tenant: &str) -> Option<Option<i64>> {
        match self {
            Servers::None => None,
            Servers::Redis(redis) => Some(redis.balance(tenant).await),
            Servers::Cluster(cluster) => Some(cluster.balance(tenant).await),
        }
    }
}

/// One gateway on one backend, with its upstream.
struct Setup {
    gateway: Gateway,
    upstream: Upstream,
    servers: Servers,
    _closed: common::ClosedPort,
}

/// Services: `notes` (the echo upstream), `down` (a closed port), `slow` (read timeout
/// 300 ms), `flaky` (refund on 5xx). Tenants: `rich`, `poor` (3 credits), `frozen`.
fn services_yaml(backend: Backend, upstream: &str, closed_port: u16) -> String {
    let lease = matches!(backend, Backend::Leased);
    format!(
        r#"
ledger:
  lease: {{ enabled: {lease} }}
  idempotency_max_response_bytes: 4096
services:
  - name: notes
    upstream: {upstream}/v1
    endpoints:
      - {{ method: POST, path: /notes/create, credits: 5 }}
      - {{ method: GET,  path: "/notes/{{id}}", credits: 1 }}
      - {{ method: ANY,  path: "/search/*",   credits: 2 }}
      - {{ method: GET,  path: /balance,      credits: 0 }}
      - {{ method: POST, path: /expensive,    credits: 7 }}
  - name: down
    upstream: http://127.0.0.1:{closed_port}
    timeouts: {{ connect_ms: 500 }}
    endpoints:
      - {{ method: ANY, path: "/*", credits: 4 }}
  - name: slow
    upstream: {upstream}
    timeouts: {{ read_ms: 300 }}
    endpoints:
      - {{ method: ANY, path: "/*", credits: 3 }}
  - name: flaky
    upstream: {upstream}
    refund_on_5xx: true
    endpoints:
      - {{ method: ANY, path: "/*", credits: 6 }}
tenants:
  - {{ id: rich, name: Rich, credits: 1000 }}
  - {{ id: poor, name: Poor, credits: 3 }}
  - {{ id: frozen, name: Frozen, credits: 1000, status: suspended }}
"#
    )
}

impl Setup {
    async fn new(backend: Backend) -> Setup {
        let upstream = Upstream::start().await;
        let servers = Servers::start(backend);
        let closed = common::ClosedPort::new();
        let yaml = services_yaml(backend, &upstream.url(), closed.port);
        let gateway = Gateway::start_with(&yaml, servers.env());
        Setup {
            gateway,
            upstream,
            servers,
            _closed: closed,
        }
    }

    /// The live balance, read through the gateway's free endpoint.
    async fn balance(&self, tenant: &str) -> i64 {
        let response = client()
            .get(self.gateway.url("/api/proxy/notes/balance"))
            .bearer_auth(token(tenant, "balance-reader"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "balance read");
        header_i64(&response, "x-credits-remaining").unwrap()
    }
}

fn assert_problem(body: &Value, status: u16) {
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:tollgate:problem:")),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
}

async fn forwards_and_charges(backend: Backend) {
    let s = Setup::new(backend).await;
    let response = client()
        .post(s.gateway.url("/api/proxy/notes/notes/create?draft=1"))
        .bearer_auth(token("rich", "alice"))
        .header("x-tenant-id", "victim")
        .header("x-user-id", "root")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header_i64(&response, "x-credits-cost"), Some(5));
    assert_eq!(header_i64(&response, "x-credits-remaining"), Some(995));
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/v1/notes/create");
    assert_eq!(echo["query"], "draft=1");
    assert_eq!(echo["body_bytes"], 5);
    let headers = &echo["headers"];
    assert_eq!(headers["x-tenant-id"], "rich");
    assert_eq!(headers["x-user-id"], "alice");
    assert_eq!(headers["x-request-id"], request_id.as_str());
    assert!(
        headers.get("authorization").is_none(),
        "the client's token must not reach the upstream"
    );
    assert_eq!(headers["host"], s.upstream.addr.to_string());
    // Param and wildcard endpoints, and a method that only ANY accepts.
    let get = client()
        .get(s.gateway.url("/api/proxy/notes/notes/42"))
        .bearer_auth(token("rich", "alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            get.status().as_u16(),
            header_i64(&get, "x-credits-remaining")
        ),
        (200, Some(994))
    );
    let search = client()
        .delete(s.gateway.url("/api/proxy/notes/search/a/b"))
        .bearer_auth(token("rich", "alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            search.status().as_u16(),
            header_i64(&search, "x-credits-cost")
        ),
        (200, Some(2))
    );
    assert_eq!(s.balance("rich").await, 992);
    assert_eq!(s.upstream.requests(), 4);
}

async fn refuses_with_problem_bodies(backend: Backend) {
    let s = Setup::new(backend).await;
    let rich = token("rich", "alice");
    let addr = s.gateway.addr();
    let auth = format!("Authorization: Bearer {rich}");
    // 400: hostile paths, sent raw so no client normalises them first.
    for path in [
        "/api/proxy/notes/search/%2e%2e/x",
        "/api/proxy/notes/search/a%2Fb",
        "/api/proxy/notes/../notes/notes/1",
        "/api/proxy/notes/search/a\\b",
        "/api/proxy/notes//search/x",
    ] {
        let r = raw::send(addr, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}")).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_problem(&r.json(), 400);
    }
    // 404: unknown service, unknown endpoint, a method the endpoint does not take.
    for (method, path) in [
        ("GET", "/api/proxy/nope/x"),
        ("GET", "/api/proxy/notes/unknown"),
        ("DELETE", "/api/proxy/notes/notes/create"),
        ("GET", "/elsewhere"),
    ] {
        let r = raw::send(
            addr,
            &format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}"),
        )
        .await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_problem(&r.json(), 404);
    }
    // 401: missing, not Bearer, garbage, signed with another key.
    let foreign = {
        let config = tollgate::config::AuthConfig {
            secret: "another-secret-of-at-least-32-bytes!!".into(),
            ..Default::default()
        };
        tollgate::auth::mint(&config, "rich", "mallory", tollgate::auth::Role::Admin, 60).unwrap()
    };
    for header in [
        "",
        "Authorization: Basic YTpi\r\n",
        "Authorization: Bearer not.a.jwt\r\n",
        &format!("Authorization: Bearer {foreign}\r\n"),
    ] {
        let r = raw::send(
            addr,
            format!("GET /api/proxy/notes/notes/1 HTTP/1.1\r\nHost: t\r\n{header}").trim_end(),
        )
        .await;
        assert_eq!(r.status, 401, "{header}");
        assert_eq!(
            r.headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert_problem(&r.json(), 401);
    }
    // 403: suspended and unknown tenants.
    for tenant in ["frozen", "stranger"] {
        let r = client()
            .get(s.gateway.url("/api/proxy/notes/notes/1"))
            .bearer_auth(token(tenant, "u"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{tenant}");
        assert_problem(&r.json().await.unwrap(), 403);
    }
    // 400: a malformed Idempotency-Key, naming the header.
    let r = client()
        .get(s.gateway.url("/api/proxy/notes/notes/1"))
        .bearer_auth(&rich)
        .header("idempotency-key", "has space")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["header"], "Idempotency-Key");
    // 402 with the whole body; nothing charged, nothing forwarded.
    let r = client()
        .post(s.gateway.url("/api/proxy/notes/notes/create"))
        .bearer_auth(token("poor", "bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        (
            header_i64(&r, "x-credits-cost"),
            header_i64(&r, "x-credits-remaining")
        ),
        (Some(5), Some(3))
    );
    let body: Value = r.json().await.unwrap();
    assert_problem(&body, 402);
    assert_eq!(
        (
            body["tenant_id"].as_str(),
            body["balance"].as_i64(),
            body["cost"].as_i64()
        ),
        (Some("poor"), Some(3), Some(5))
    );
    assert_eq!(
        s.upstream.requests(),
        0,
        "no refused request reaches the upstream"
    );
    assert_eq!(s.balance("rich").await, 1000);
    assert_eq!(s.balance("poor").await, 3);
}

async fn refunds_when_the_upstream_fails(backend: Backend) {
    let s = Setup::new(backend).await;
    let rich = token("rich", "alice");
    let r = client()
        .post(s.gateway.url("/api/proxy/down/anything"))
        .bearer_auth(&rich)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        (
            header_i64(&r, "x-credits-cost"),
            header_i64(&r, "x-credits-remaining")
        ),
        (Some(0), Some(1000))
    );
    assert_problem(&r.json().await.unwrap(), 502);
    let r = client()
        .get(s.gateway.url("/api/proxy/slow/x?delay_ms=2000"))
        .bearer_auth(&rich)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(header_i64(&r, "x-credits-remaining"), Some(1000));
    assert_eq!(s.balance("rich").await, 1000);
    // 5xx: refunded only where the service asks for it.
    let r = client()
        .get(s.gateway.url("/api/proxy/flaky/x?status=503"))
        .bearer_auth(&rich)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            header_i64(&r, "x-credits-cost"),
            header_i64(&r, "x-credits-remaining")
        ),
        (503, Some(0), Some(1000))
    );
    let r = client()
        .get(s.gateway.url("/api/proxy/notes/notes/1?status=500"))
        .bearer_auth(&rich)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), header_i64(&r, "x-credits-remaining")),
        (500, Some(999))
    );
    assert_eq!(s.balance("rich").await, 999);
}

/// `Idempotency-Key` means "this request, once": a retry gets the kept response without
/// reaching the upstream or paying; a retry in flight gets 409; the key on another request
/// (another endpoint, query or body) gets 422; a refunded first use releases the key; a
/// response too large to keep is never executed again. Before: a key charged once and
/// then forwarded every retry for free, to any endpoint (a key first used on a free
/// endpoint opened a 7-credit one to a tenant who could not pay for it).
async fn idempotency_key_means_this_request_once(backend: Backend) {
    let s = Setup::new(backend).await;
    let keyed = |method: &str, path: &str, tenant: &str, key: &str, body: &'static str| {
        client()
            .request(method.parse().unwrap(), s.gateway.url(path))
            .bearer_auth(token(tenant, "alice"))
            .header("idempotency-key", key)
            .body(body)
    };
    let post = |path: &str, key: &str, body: &'static str| keyed("POST", path, "rich", key, body);
    let first = post("/api/proxy/notes/expensive?x=1", "order-42", "hello")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header_i64(&first, "x-credits-cost"), Some(7));
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    assert_eq!(s.upstream.requests(), 1);
    for _ in 0..2 {
        let r = post("/api/proxy/notes/expensive?x=1", "order-42", "hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(header_i64(&r, "x-credits-cost"), Some(0));
        assert_eq!(header_i64(&r, "x-credits-remaining"), Some(993));
        assert_eq!(r.bytes().await.unwrap(), first_body, "the kept response");
    }
    assert_eq!(
        s.upstream.requests(),
        1,
        "a replay never reaches the upstream"
    );
    // The same key on another request: another body, query, endpoint or method.
    for (method, path, body) in [
        ("POST", "/api/proxy/notes/expensive?x=1", "hellO"),
        ("POST", "/api/proxy/notes/expensive?x=2", "hello"),
        ("POST", "/api/proxy/notes/notes/create", "hello"),
        ("PUT", "/api/proxy/notes/search/a", "hello"),
    ] {
        let r = keyed(method, path, "rich", "order-42", body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{method} {path} {body}");
        let problem: Value = r.json().await.unwrap();
        assert_problem(&problem, 422);
        assert_eq!(problem["header"], "Idempotency-Key");
    }
    assert_eq!(s.upstream.requests(), 1);
    assert_eq!(s.balance("rich").await, 993);

    // A key first used on a free endpoint does not open a paid one.
    let free = keyed("GET", "/api/proxy/notes/balance", "poor", "k-free", "");
    assert_eq!(free.send().await.unwrap().status(), 200);
    let paid = keyed("POST", "/api/proxy/notes/expensive", "poor", "k-free", "");
    assert_eq!(paid.send().await.unwrap().status(), 422);
    // Keys are per tenant: another tenant's identical key is its own request.
    let r = post("/api/proxy/notes/search/q", "k-free", "")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), header_i64(&r, "x-credits-cost")),
        (200, Some(2))
    );

    // In flight: a retry gets 409 with Retry-After and is not forwarded.
    let before = s.upstream.requests();
    let slow = post("/api/proxy/notes/search/slow?delay_ms=3000", "k-slow", "").send();
    let slow = tokio::spawn(slow);
    common::wait_until(
        "the slow call to reach the upstream",
        std::time::Duration::from_secs(10),
        async || s.upstream.requests() > before,
    )
    .await;
    let r = post("/api/proxy/notes/search/slow?delay_ms=3000", "k-slow", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_problem(&r.json().await.unwrap(), 409);
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    let r = post("/api/proxy/notes/search/slow?delay_ms=3000", "k-slow", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(s.upstream.requests(), before + 1);

    // A response without a body (204) is kept and replayed like any other.
    for replayed in [false, true] {
        let r = post("/api/proxy/notes/search/gone?status=204", "k-204", "")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers().contains_key("idempotent-replayed"), replayed);
    }

    // A refunded first use (a 5xx the service refunds) releases its key: the retry is a new
    // call, forwarded and charged (and refunded again here).
    let before = s.upstream.requests();
    for _ in 0..2 {
        let flaky = keyed(
            "GET",
            "/api/proxy/flaky/x?status=503",
            "rich",
            "k-flaky",
            "",
        );
        let r = flaky.send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().get("idempotent-replayed").is_none());
        assert_eq!(header_i64(&r, "x-credits-cost"), Some(0));
    }
    assert_eq!(s.upstream.requests(), before + 2);

    // A response over `idempotency_max_response_bytes` (4 KiB here) is not kept: a retry is
    // told so (409, the original status named) and never executes the call again.
    let big = "/api/proxy/notes/search/big?pad=10000";
    let r = post(big, "k-big", "").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 10_000);
    let before = s.upstream.requests();
    let r = post(big, "k-big", "").send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.headers().get("retry-after").is_none());
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["original_status"], 200, "{problem}");
    assert_eq!(s.upstream.requests(), before);
    assert_eq!(s.balance("rich").await, 993 - 2 - 2 - 2 - 2);
}

/// A gateway error after the charge (here a failing response header step, forced by a
/// failpoint) refunds it: the client was never served. Before, a `500` made by the gateway
/// kept the charge.
async fn gateway_errors_after_the_charge_are_refunded(backend: Backend) {
    let upstream = Upstream::start().await;
    let servers = Servers::start(backend);
    let closed = common::ClosedPort::new();
    let mut env = servers.env();
    env.push((
        "TOLLGATE_FAILPOINTS".to_owned(),
        "response_filter".to_owned(),
    ));
    let gateway = Gateway::start_with(&services_yaml(backend, &upstream.url(), closed.port), env);
    for tries in 1..=2 {
        let r = client()
            .post(gateway.url("/api/proxy/notes/expensive"))
            .bearer_auth(token("rich", "alice"))
            .header("idempotency-key", "k-500")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(header_i64(&r, "x-credits-cost"), Some(0));
        assert_eq!(header_i64(&r, "x-credits-remaining"), Some(1000));
        // The key was released with the refund: the retry is a new call.
        assert_eq!(upstream.requests(), tries);
    }
}

/// Balance 1000, cost 7, 300 concurrent callers: exactly ⌊1000/7⌋ = 142 get through.
async fn exact_under_concurrency(backend: Backend) {
    let s = Setup::new(backend).await;
    let http = client();
    let calls = (0..300).map(|_| {
        let request = http
            .post(s.gateway.url("/api/proxy/notes/expensive"))
            .bearer_auth(token("rich", "alice"));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((ok, refused), (142, 158), "{statuses:?}");
    assert_eq!(s.upstream.requests(), 142);
    assert_eq!(s.balance("rich").await, 6);
}

async fn restarts_keep_balances(backend: Backend) {
    let mut s = Setup::new(backend).await;
    let r = client()
        .post(s.gateway.url("/api/proxy/notes/expensive"))
        .bearer_auth(token("rich", "alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(header_i64(&r, "x-credits-remaining"), Some(993));
    s.gateway.restart();
    assert_eq!(
        s.balance("rich").await,
        993,
        "a restart must not re-seed the configured balance"
    );
    if let Some(balance) = s.servers.balance("rich").await {
        assert_eq!(balance, Some(993));
    }
}

/// A 32 MB upload passes through to the upstream whole (Pingora streams it; nothing in the
/// request path reads the body).
async fn streams_large_bodies(backend: Backend) {
    let s = Setup::new(backend).await;
    let body = vec![b'x'; 32 * 1024 * 1024];
    let r = client()
        .post(s.gateway.url("/api/proxy/notes/search/upload"))
        .bearer_auth(token("rich", "alice"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["body_bytes"], 32 * 1024 * 1024);
}

macro_rules! on_every_ledger {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Backend::Embedded).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Backend::Redis).await })*
        }
        mod leased {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Backend::Leased).await })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Backend::Cluster).await })*
        }
    };
}

on_every_ledger!(
    forwards_and_charges,
    refuses_with_problem_bodies,
    refunds_when_the_upstream_fails,
    idempotency_key_means_this_request_once,
    gateway_errors_after_the_charge_are_refunded,
    exact_under_concurrency,
    restarts_keep_balances,
    streams_large_bodies,
);
