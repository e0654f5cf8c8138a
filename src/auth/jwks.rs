//! Keys from an identity provider's JWKS document (docs/DESIGN.md §Identity providers):
//! chosen by the token's `kid`, the algorithm pinned by the key (RSA → RS256, EC P-256 →
//! ES256; every other key is skipped, so no token can pick `none` or an HMAC keyed with a
//! public key).
//!
//! - Refreshed when `refresh_secs` old, by the first verification that notices (in the
//!   background: that call is checked against the set in hand), and at once when a token
//!   names a `kid` the set lacks (a key just published), at most once per
//!   `min_refetch_secs` however many unknown kids arrive, so made-up kids cannot make the
//!   gateway hammer the provider.
//! - Stale-if-error: a failed fetch keeps the last good set, for `max_stale_secs` after its
//!   fetch; past that every token with a `kid` is refused (fail closed) until a fetch works.

use crate::config::JwksConfig;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The most keys taken from one document, and the largest document read.
const MAX_KEYS: usize = 64;
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable key: how to verify, and the only algorithm it verifies.
pub struct PublicKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No such `kid` in the set in hand.
    Unknown,
    /// The set is older than `max_stale_secs` (the provider has failed since): refused.
    Stale,
}

pub struct Jwks {
    url: String,
    config: JwksConfig,
    client: reqwest::Client,
    keys: ArcSwap<HashMap<String, Arc<PublicKey>>>,
    /// The usable entries of the last document, as fetched: a key replaced under the same
    /// `kid` changes it too.
    fingerprint: std::sync::Mutex<String>,
    /// Unix ms of the last fetch that worked (0: none yet).
    fetched_ms: AtomicI64,
    /// Unix ms of the last fetch tried (for the unknown-kid rate limit).
    tried_ms: AtomicI64,
    /// Bumped when the set changes: tokens verified against an older set are verified again.
    generation: AtomicU64,
    /// A fetch is running (the scheduled refresh runs one at a time).
    fetching: AtomicBool,
    /// Coalesces fetches for unknown kids: one fetch, every waiter served by it.
    refetch: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(url: &str, config: &JwksConfig) -> Result<Jwks, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Jwks {
            url: url.to_owned(),
            config: config.clone(),
            client,
            keys: ArcSwap::from_pointee(HashMap::new()),
            fingerprint: std::sync::Mutex::new(String::new()),
            fetched_ms: AtomicI64::new(0),
            tried_ms: AtomicI64::new(0),
            generation: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            refetch: tokio::sync::Mutex::new(()),
        })
    }

    /// Called on every verification (a token verified before included): starts a refresh
    /// in the background when the set is due one, and says whether the set in hand may
    /// still be used (not stale).
    pub fn tick(self: &Arc<Self>, now_ms: i64) -> bool {
        let fetched = self.fetched_ms.load(Ordering::Acquire);
        if now_ms - fetched >= self.config.refresh_secs as i64 * 1000 {
            self.refresh_in_background();
        }
        fetched == 0 || now_ms - fetched <= self.config.max_stale_secs as i64 * 1000
    }

    /// The key `kid`, from the set in hand.
    pub fn key(self: &Arc<Self>, kid: &str, now_ms: i64) -> Result<Arc<PublicKey>, Lookup> {
        if !self.tick(now_ms) {
            return Err(Lookup::Stale);
        }
        self.keys.load().get(kid).cloned().ok_or(Lookup::Unknown)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// For a token whose `kid` the set lacks: fetches now unless a fetch was tried within
    /// `min_refetch_secs` (a fetch running meanwhile is waited for instead).
    pub async fn refresh_for_unknown_kid(&self) {
        let _one = self.refetch.lock().await;
        let since = crate::store::now_ms() - self.tried_ms.load(Ordering::Acquire);
        if since < self.config.min_refetch_secs as i64 * 1000 {
            return;
        }
        self.fetch().await;
    }

    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let jwks = Arc::clone(self);
        runtime.spawn(async move {
            // After a failure, the next try waits `min_refetch_secs`.
            let since = crate::store::now_ms() - jwks.tried_ms.load(Ordering::Acquire);
            if since >= jwks.config.min_refetch_secs as i64 * 1000 {
                let _one = jwks.refetch.lock().await;
                jwks.fetch().await;
            }
            jwks.fetching.store(false, Ordering::Release);
        });
    }

    /// Fetches the document and swaps its usable keys in; on failure keeps the set in hand.
    pub async fn fetch(&self) {
        self.tried_ms
            .store(crate::store::now_ms(), Ordering::Release);
        match self.download().await {
            Ok((keys, fingerprint)) => {
                let changed = {
                    let mut held = self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
                    let changed = *held != fingerprint;
                    *held = fingerprint;
                    changed
                };
                self.keys.store(Arc::new(keys));
                if changed {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                self.fetched_ms
                    .store(crate::store::now_ms(), Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the keys in hand");
            }
        }
    }

    async fn download(&self) -> Result<(KeySet, String), String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("a document over {MAX_DOCUMENT_BYTES} bytes"));
        }
        parse_set(&body)
    }
}

/// The usable keys of a JWKS document: those with a `kid`, an RSA or EC P-256 key, not
/// marked for encryption only. Entries that do not parse are skipped, not fatal.
pub fn parse_set(body: &[u8]) -> Result<(KeySet, String), String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut keys = HashMap::new();
    let mut taken = Vec::new();
    for entry in document.keys.into_iter().take(MAX_KEYS) {
        let text = entry.to_string();
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let encryption = matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        );
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        if encryption {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, Arc::new(PublicKey { key, algorithm }));
            taken.push(text);
        }
    }
    taken.sort();
    Ok((keys, taken.join("\n")))
}

/// Usable keys by `kid`.
pub type KeySet = HashMap<String, Arc<PublicKey>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rsa_and_p256_keys_with_a_kid_are_taken() {
        let document = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "nonsense", "kid": "x"},
            "not even an object"
        ]});
        let (keys, _) = parse_set(document.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["r1"]);
        assert_eq!(keys["r1"].algorithm, Algorithm::RS256);
        assert!(parse_set(b"{\"keys\": 5}").is_err());
        assert!(parse_set(b"<html>").is_err());
    }
}
