//! Hostile input at the front door (docs/DESIGN.md §Request path, docs/ADMIN-API.md): forged and malformed tokens, spoofed
//! identity and hop-by-hop headers, oversized headers, request smuggling, injection and mass
//! assignment at the admin API. Each case: the exact status, a problem document, nothing
//! charged, nothing forwarded, and neither the secret nor a token in the gateway's log.

use tollgate_testkit as common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{admin_token, client, raw, token, Gateway, Upstream, SECRET};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const YAML: &str = "services:
  - name: notes
    upstream: UPSTREAM
    endpoints:
      - { method: ANY, path: /*, credits: 1 }
tenants:
  - { id: acme, name: Acme, credits: 100 }
  - { id: frozen, name: Frozen, credits: 100, status: suspended }
  - { id: ops, name: Operators }
";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// A token with any claims, signed with HMAC-SHA256 over `key`.
fn hs256(claims: Value, key: &[u8]) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let key = jsonwebtoken::EncodingKey::from_secret(key).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn claims() -> Value {
    json!({"sub": "mallory", "tenant_id": "acme", "role": "user", "exp": now() + 600, "iat": now()})
}

fn without(field: &str) -> Value {
    let mut c = claims();
    c.as_object_mut().unwrap().remove(field);
    c
}

fn with(field: &str, value: Value) -> Value {
    let mut c = claims();
    c[field] = value;
    c
}

/// Every token the front door must refuse, named.
fn forged_tokens() -> Vec<(&'static str, String)> {
    let secret = SECRET.as_bytes();
    let good = hs256(claims(), secret);
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims())
    );
    let admin = with("role", json!("admin"));
    vec![
        ("alg none", none),
        (
            "alg none, signature kept",
            format!(
                "{}.{}.{signature}",
                b64(&json!({"alg": "none"})),
                b64(&claims())
            ),
        ),
        (
            "alg switched to HS512",
            format!(
                "{}.{}.{signature}",
                b64(&json!({"alg": "HS512"})),
                b64(&claims())
            ),
        ),
        (
            "wrong key",
            hs256(claims(), b"another-secret-of-at-least-32-bytes!"),
        ),
        (
            "tampered payload",
            format!(
                "{head}.{}.{signature}",
                b64(&with("tenant_id", json!("ops")))
            ),
        ),
        (
            "role admin forged",
            format!("{head}.{}.{signature}", b64(&admin)),
        ),
        ("expired", hs256(with("exp", json!(now() - 3600)), secret)),
        (
            "not yet valid",
            hs256(with("nbf", json!(now() + 3600)), secret),
        ),
        ("no tenant_id", hs256(without("tenant_id"), secret)),
        ("no role", hs256(without("role"), secret)),
        ("no exp", hs256(without("exp"), secret)),
        ("no sub", hs256(without("sub"), secret)),
        ("unknown role", hs256(with("role", json!("root")), secret)),
        (
            "tenant_id an operator",
            hs256(with("tenant_id", json!({"$gt": ""})), secret),
        ),
        ("garbage", "garbage".into()),
        ("two dots only", "..".into()),
        ("bad base64", "###.###.###".into()),
        (
            "10 KB",
            format!("{head}.{}.{signature}", "A".repeat(10_000)),
        ),
    ]
}

struct Setup {
    upstream: Upstream,
    gateway: Gateway,
}

impl Setup {
    async fn new() -> Setup {
        let upstream = Upstream::start().await;
        let gateway = Gateway::start(&YAML.replace("UPSTREAM", &upstream.url()), None);
        Setup { upstream, gateway }
    }

    async fn balance(&self) -> i64 {
        let answer = self
            .gateway
            .admin_json("/admin/tenants/acme", &admin_token("ops", "root"))
            .await;
        answer["balance"].as_i64().unwrap()
    }

    /// Nothing forwarded, nothing charged, nothing secret logged.
    async fn assert_untouched(&self, forwarded: u64, tokens: &[String]) {
        assert_eq!(self.upstream.requests(), forwarded, "nothing forwarded");
        assert_eq!(
            self.balance().await,
            100 - forwarded as i64,
            "nothing charged"
        );
        let log = self.gateway.log();
        assert!(!log.contains(SECRET), "the secret is never logged");
        for t in tokens.iter().filter(|t| t.len() > 20) {
            assert!(!log.contains(t.as_str()), "a token was logged: {t}");
        }
    }
}

fn assert_problem(r: &raw::RawResponse, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{what}"
    );
    let body = r.json();
    assert_eq!(body["status"], status, "{what}");
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:tollgate:problem:"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_tokens_are_refused() {
    let s = Setup::new().await;
    let addr = s.gateway.addr();
    let mut tokens = Vec::new();
    for (what, t) in forged_tokens() {
        let r = raw::send(
            addr,
            &format!("GET /api/proxy/notes/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}"),
        )
        .await;
        assert_problem(&r, 401, what);
        assert_eq!(
            r.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
            "{what}"
        );
        // The detail never echoes the token back.
        assert!(!r.body.contains(&t) || t.len() < 20, "{what}: {}", r.body);
        tokens.push(t);
    }
    let valid = token("acme", "alice");
    for (what, header) in [
        ("no header", String::new()),
        ("empty", "Authorization: ".to_owned()),
        ("Bearer missing", format!("Authorization: {valid}")),
        (
            "Bearer doubled",
            format!("Authorization: Bearer Bearer {valid}"),
        ),
        ("Bearer alone", "Authorization: Bearer".to_owned()),
        ("another scheme", format!("Authorization: Token {valid}")),
        (
            "two headers",
            format!("Authorization: Bearer garbage\r\nAuthorization: Bearer {valid}"),
        ),
    ] {
        let head = format!("GET /api/proxy/notes/x HTTP/1.1\r\nHost: t\r\n{header}");
        let r = raw::send(addr, head.trim_end()).await;
        assert_problem(&r, 401, what);
    }
    // A valid token of a suspended tenant: 403, still nothing charged.
    let r = raw::send(
        addr,
        &format!(
            "GET /api/proxy/notes/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}",
            token("frozen", "f")
        ),
    )
    .await;
    assert_problem(&r, 403, "suspended");
    tokens.push(valid);
    s.assert_untouched(0, &tokens).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_only_the_gateways_identity_headers() {
    let s = Setup::new().await;
    let valid = token("acme", "alice");
    let request = format!(
        "GET /api/proxy/notes/echo HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {valid}\r\n\
         X-Tenant-Id: ops\r\nX-User-Id: root\r\nX-Request-Id: forged\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
         Forwarded: for=6.6.6.6\r\nProxy-Authorization: Basic c2VjcmV0\r\n\
         Keep-Alive: timeout=99\r\nTE: trailers\r\nX-Hop: private\r\nConnection: X-Hop, close\r\n\r\n"
    );
    let (status, text) = exchange(s.gateway.addr(), request.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let answer: Value = serde_json::from_str(body).unwrap();
    let seen = &answer["headers"];
    let request_id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap();
    assert_eq!(seen["x-tenant-id"], "acme");
    assert_eq!(seen["x-user-id"], "alice");
    assert_ne!(seen["x-request-id"], "forged");
    assert_eq!(seen["x-request-id"], request_id);
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    for gone in [
        "authorization",
        "x-forwarded-host",
        "proxy-authorization",
        "keep-alive",
        "te",
        "x-hop",
        "forwarded",
    ] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
    s.assert_untouched(1, &[valid]).await;
}

/// Sends raw bytes and returns the status line's code (0: the connection closed first).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_smuggling_attempts_are_refused() {
    let s = Setup::new().await;
    let addr = s.gateway.addr();
    let valid = token("acme", "alice");
    let auth = format!("Authorization: Bearer {valid}\r\n");
    let big = format!(
        "GET /api/proxy/notes/x HTTP/1.1\r\nHost: t\r\n{auth}X-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (status, text) = exchange(addr, big.as_bytes()).await;
    assert_eq!(status, 431, "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    for (what, head) in [
        (
            "CL and TE",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("two lengths", "Content-Length: 5\r\nContent-Length: 6\r\n"),
        ("TE not chunked", "Transfer-Encoding: gzip\r\n"),
        ("TE obfuscated", "Transfer-Encoding: xchunked\r\n"),
    ] {
        // Keep-alive: a server that misread the framing would answer the second request.
        let request = format!(
            "POST /api/proxy/notes/x HTTP/1.1\r\nHost: t\r\n{auth}{head}\r\n0\r\n\r\nGET /api/proxy/notes/smuggled HTTP/1.1\r\nHost: t\r\n{auth}\r\n"
        );
        let (status, text) = exchange(addr, request.as_bytes()).await;
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{what}: one answer: {text}"
        );
        assert!(!text.contains("smuggled"), "{what}: {text}");
        if what == "CL and TE" {
            // Pingora follows RFC 9112 §6.1: Transfer-Encoding wins, Content-Length is
            // dropped, and the connection closes after the answer, so the bytes after the
            // chunked body are never read as a request.
            assert_eq!(status, 200, "{text}");
            assert!(text.contains("Connection: close"), "{text}");
        } else {
            assert_eq!(status, 400, "{what}: {text}");
        }
    }
    // Only the CL+TE request (read as chunked, one call) was forwarded and charged.
    s.assert_untouched(1, &[valid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_no_operators_and_no_extra_fields() {
    let s = Setup::new().await;
    let admin = s.gateway.admin_url("");
    let http = client();
    let registered = http
        .post(format!("{admin}/auth/register"))
        .json(&json!({"email": "eve@example.com", "password": "eve's password", "tenant_name": "Eve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    for (what, body, field) in [
        (
            "operator as email",
            json!({"email": {"$gt": ""}, "password": "x"}),
            "email",
        ),
        (
            "operator as password",
            json!({"email": "eve@example.com", "password": {"$ne": "x"}}),
            "password",
        ),
        (
            "array as email",
            json!({"email": ["eve@example.com"], "password": "eve's password"}),
            "email",
        ),
    ] {
        let r = http
            .post(format!("{admin}/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{what}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["field"], field, "{what}: {problem}");
    }
    // Mass assignment: a user cannot give themselves a role, a tenant or credits.
    for (what, extra) in [
        ("role", json!({"role": "admin"})),
        ("tenant", json!({"tenant_id": "acme"})),
        ("credits", json!({"credits": 1_000_000})),
    ] {
        let mut body = json!({"email": format!("{what}@example.com"), "password": "a password!", "tenant_name": "X"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = http
            .post(format!("{admin}/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{what}");
    }
    let login: Value = http
        .post(format!("{admin}/auth/login"))
        .json(&json!({"email": "eve@example.com", "password": "eve's password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let eve = login["access_token"].as_str().unwrap().to_owned();
    let me: Value = http
        .get(format!("{admin}/me"))
        .bearer_auth(&eve)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "user");
    let user_id = me["user_id"].as_str().unwrap().to_owned();
    let self_promotion = http
        .patch(format!("{admin}/admin/users/{user_id}"))
        .bearer_auth(&eve)
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(self_promotion.status(), 403);
    // Operators in ids and filters are plain strings: they match nothing.
    let root = admin_token("ops", "root");
    for path in [
        "/admin/tenants/%7B%22$gt%22:%22%22%7D",
        "/admin/users/%7B%22$ne%22:null%7D",
        "/admin/services/'%20OR%20'1'='1",
    ] {
        let r = http
            .get(format!("{admin}{path}"))
            .bearer_auth(&root)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let filtered: Value = http
        .get(format!(
            "{admin}/admin/users?tenant_id=%7B%22$gt%22:%22%22%7D"
        ))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        filtered["items"],
        json!([]),
        "an operator string filters nothing in"
    );
    s.assert_untouched(0, &[eve]).await;
}
