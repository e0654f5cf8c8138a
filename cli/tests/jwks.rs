//! Tokens from an identity provider (docs/DESIGN.md §Identity providers), against a JWKS
//! server the test starts and rotates mid-run: a key is accepted once published (its first
//! token fetching the set), a retired key is refused after the next refresh, unknown kids
//! cannot make the gateway hammer the provider, the last good set serves while the provider
//! fails (for its bound, then fail closed), each key verifies its own algorithm only, and
//! the identity comes from the configured claims.

use tollgate_testkit as common;

use common::jwks::{JwksServer, RsaKey};
use common::{client, wait_until, Gateway, Upstream};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn yaml(upstream: &str, jwks: &str) -> String {
    format!(
        "auth:
  jwks_url: {jwks}
  audience: {AUDIENCE}
  jwks: {{ refresh_secs: 1, min_refetch_secs: 1, max_stale_secs: 3 }}
  claims: {{ tenant_id: org_id, role: app_role }}
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: /x, credits: 1 }}
tenants:
  - {{ id: ops }}
  - {{ id: acme, credits: 100000 }}
"
    )
}

/// The audience the provider's tokens for this API carry (required with a JWKS).
const AUDIENCE: &str = "https://api.example.com";

/// A token the gateway itself issued (no `kid`: its own key), for this API's audience.
fn own_token() -> String {
    let config = tollgate::config::AuthConfig {
        secret: common::SECRET.into(),
        audience: Some(AUDIENCE.into()),
        ..Default::default()
    };
    tollgate::auth::mint(&config, "acme", "alice", tollgate::auth::Role::User, 600).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token the provider signed with `key` (its `kid` in the header) for `claims`.
fn signed(key: &RsaKey, kid: &str, claims: &Value) -> String {
    let header = Header {
        kid: Some(kid.to_owned()),
        ..Header::new(Algorithm::RS256)
    };
    let encoding = EncodingKey::from_rsa_pem(&key.private_pem).unwrap();
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

fn identity() -> Value {
    json!({"sub": "idp-user", "org_id": "acme", "aud": AUDIENCE, "exp": now() + 600})
}

/// A call with `token`: the status and the answer (the echo of what the upstream saw).
async fn call(gateway: &Gateway, token: &str) -> (u16, Value) {
    let response = client()
        .get(gateway.url("/api/proxy/notes/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn eventually(gateway: &Gateway, token: &str, status: u16, what: &str) {
    wait_until(what, Duration::from_secs(15), async || {
        call(gateway, token).await.0 == status
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_tokens_follow_its_rotating_keys() {
    let (a, b) = (RsaKey::generate("key-a"), RsaKey::generate("key-b"));
    let provider = JwksServer::start().await;
    provider.publish(&[&a]);
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&yaml(&upstream.url(), &provider.url()), None);

    // Published: accepted at first sight (the unknown kid fetches the set); the identity
    // is read from the configured claims.
    let token_a = signed(&a, "key-a", &identity());
    let (status, echo) = call(&gateway, &token_a).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-tenant-id"], "acme");
    assert_eq!(echo["headers"]["x-user-id"], "idp-user");
    let me: Value = client()
        .get(gateway.admin_url("/me"))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&me["user_id"], &me["role"]),
        (&json!("idp-user"), &json!("user")),
        "{me}"
    );
    // The gateway's own tokens (no kid) are still verified with its own key.
    assert_eq!(call(&gateway, &own_token()).await.0, 200);
    // A token the same provider issued for another API is refused.
    let elsewhere = json!({"sub": "idp-user", "org_id": "acme", "aud": "https://other.example.com", "exp": now() + 600});
    assert_eq!(
        call(&gateway, &signed(&a, "key-a", &elsewhere)).await.0,
        401
    );

    // Claims it cannot read, a key pinned to RS256 presented as HS256, alg none: refused.
    let no_tenant = json!({"sub": "idp-user", "aud": AUDIENCE, "exp": now() + 600});
    assert_eq!(
        call(&gateway, &signed(&a, "key-a", &no_tenant)).await.0,
        401
    );
    let bad_role = json!({"sub": "u", "org_id": "acme", "app_role": "root", "aud": AUDIENCE, "exp": now() + 600});
    assert_eq!(call(&gateway, &signed(&a, "key-a", &bad_role)).await.0, 401);
    let hs = Header {
        kid: Some("key-a".into()),
        ..Header::new(Algorithm::HS256)
    };
    let public_as_secret =
        EncodingKey::from_secret(a.jwk["n"].as_str().unwrap().as_bytes()).unwrap();
    let confused = jsonwebtoken::encode(&hs, &identity(), &public_as_secret).unwrap();
    let (status, problem) = call(&gateway, &confused).await;
    assert_eq!(status, 401, "{problem}");
    let none = format!(
        "eyJhbGciOiJub25lIiwia2lkIjoia2V5LWEifQ.{}.",
        base64_url(&identity().to_string())
    );
    assert_eq!(call(&gateway, &none).await.0, 401);

    // Not yet published: refused; published: accepted once the set is fetched again.
    let token_b = signed(&b, "key-b", &identity());
    let (status, problem) = call(&gateway, &token_b).await;
    assert_eq!(status, 401, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("kid"),
        "{problem}"
    );
    provider.publish(&[&a, &b]);
    eventually(&gateway, &token_b, 200, "the new key accepted").await;

    // A flood of made-up kids: refused, and the provider is asked at most once a second.
    let (before, started) = (provider.fetches(), Instant::now());
    for i in 0..40 {
        let made_up = signed(&a, &format!("made-up-{i}"), &identity());
        assert_eq!(call(&gateway, &made_up).await.0, 401);
    }
    let fetched = provider.fetches() - before;
    let allowed = started.elapsed().as_secs() + 2;
    assert!(
        fetched <= allowed,
        "{fetched} fetches in {:?}",
        started.elapsed()
    );

    // Retired: refused after the next refresh (at most refresh_secs later), even though
    // the gateway had verified this very token before.
    provider.publish(&[&b]);
    eventually(&gateway, &token_a, 401, "the retired key refused").await;
    assert_eq!(call(&gateway, &token_b).await.0, 200);

    // The provider fails: the last good set serves for max_stale_secs after its fetch, then
    // tokens with a kid are refused (fail closed) until it answers again.
    provider.fail(true);
    let failing = Instant::now();
    assert_eq!(call(&gateway, &token_b).await.0, 200, "stale-if-error");
    eventually(
        &gateway,
        &token_b,
        401,
        "refused once the keys are too stale",
    )
    .await;
    assert!(
        failing.elapsed() >= Duration::from_secs(1),
        "{:?}",
        failing.elapsed()
    );
    let (_, problem) = call(&gateway, &token_b).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("stale"),
        "{problem}"
    );
    assert_eq!(
        call(&gateway, &own_token()).await.0,
        200,
        "own tokens unaffected"
    );
    provider.fail(false);
    eventually(
        &gateway,
        &token_b,
        200,
        "accepted once the provider answers",
    )
    .await;
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
