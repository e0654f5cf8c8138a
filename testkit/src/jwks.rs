//! An identity provider's JWKS endpoint the test controls: it publishes the keys the test
//! sets (RSA keys made by the `openssl` command line tool), can fail on demand, and counts
//! the fetches.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// An RSA key pair: its private PEM (to sign with) and its public JWK.
pub struct RsaKey {
    pub kid: String,
    pub private_pem: Vec<u8>,
    pub jwk: serde_json::Value,
}

impl RsaKey {
    pub fn generate(kid: &str) -> RsaKey {
        let dir = std::env::temp_dir().join(format!("tg-jwks-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let private: PathBuf = dir.join("private.pem");
        let made = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&private)
            .output()
            .expect("openssl on PATH");
        assert!(made.status.success(), "openssl genpkey");
        let modulus = Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&private)
            .output()
            .unwrap();
        let text = String::from_utf8(modulus.stdout).unwrap();
        let hex = text.trim().trim_start_matches("Modulus=");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let private_pem = std::fs::read(&private).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        RsaKey {
            kid: kid.to_owned(),
            private_pem,
            jwk: serde_json::json!({
                "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": base64url(&bytes), "e": "AQAB",
            }),
        }
    }
}

/// Base64url without padding (RFC 7515 §2).
fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Default)]
struct Published {
    keys: Mutex<Vec<serde_json::Value>>,
    failing: AtomicBool,
    fetches: AtomicU64,
}

pub struct JwksServer {
    pub addr: SocketAddr,
    published: Arc<Published>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start() -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let published = Arc::new(Published::default());
        let app = axum::Router::new()
            .route("/jwks.json", axum::routing::get(document))
            .with_state(Arc::clone(&published));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            addr,
            published,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Publishes exactly these keys from now on.
    pub fn publish(&self, keys: &[&RsaKey]) {
        *self.published.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// Answers `500` from now on (`true`) or the keys again (`false`).
    pub fn fail(&self, failing: bool) {
        self.published.failing.store(failing, Ordering::SeqCst);
    }

    pub fn fetches(&self) -> u64 {
        self.published.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn document(State(published): State<Arc<Published>>) -> Response {
    published.fetches.fetch_add(1, Ordering::SeqCst);
    if published.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys = published.keys.lock().unwrap().clone();
    axum::Json(serde_json::json!({ "keys": keys })).into_response()
}
