//! API keys (docs/DESIGN.md §API keys): `tg_live_<body>_<checksum>`.
//!
//! - The body is 30 characters drawn uniformly from the 62 of `[A-Za-z0-9]`: 178 bits, of
//!   which listings show the first 6 (the key's `prefix`), leaving 142 secret.
//! - The checksum is the CRC-32 of everything before it, in 6 base-62 characters, so a
//!   typo or a truncated paste is refused without a lookup, and a secret scanner can
//!   confirm that a string it found is one of ours.
//! - Only the SHA-256 of the whole key is stored. A fast hash is right here: a key's 142
//!   secret bits cannot be guessed at any hashing speed, so a slow password hash (argon2,
//!   there for passwords people choose) would only cost every call tens of milliseconds.
//!
//! The gateway keeps every key's hash in memory ([`ApiKeys`], reloaded with the catalog),
//! so checking a key is one hash and one map lookup, and an unknown key is refused from
//! the same map: no store round trip for any key, known or not.

use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// What every key starts with: how the gateway tells a key from a JWT (which starts `eyJ`).
pub const PREFIX: &str = "tg_live_";
const BODY_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;
/// A key's length: prefix, body, `_`, checksum.
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + 1 + CHECKSUM_LEN;
/// How much of a key its listings show: the prefix and the body's first 6 characters.
pub const SHOWN_LEN: usize = PREFIX.len() + 6;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The SHA-256 of a key: what the store and the gateway keep.
pub type KeyHash = [u8; 32];

/// A key just made: the key itself is shown once and never kept.
pub struct NewKey {
    pub key: String,
    pub hash: KeyHash,
    /// The key's first [`SHOWN_LEN`] characters, which listings show.
    pub shown: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a Tollgate API key (expected tg_live_ followed by 30 letters or digits, `_` and a 6-character checksum)")]
    Malformed,
    #[error("the API key's checksum does not match: a typo or a truncated key")]
    Checksum,
}

/// Makes a new key from the operating system's random source.
pub fn generate() -> NewKey {
    let body = Alphanumeric.sample_string(&mut rand::rngs::OsRng, BODY_LEN);
    let unsigned = format!("{PREFIX}{body}");
    let key = format!("{unsigned}_{}", checksum(unsigned.as_bytes()));
    NewKey {
        hash: hash(&key),
        shown: key[..SHOWN_LEN].to_owned(),
        key,
    }
}

/// Whether a credential is meant as a key (rather than a JWT): it starts `tg_`.
pub fn is_key(credential: &[u8]) -> bool {
    credential.starts_with(b"tg_")
}

/// Checks a presented key's shape and checksum, and hashes it for the lookup.
pub fn parse(key: &str) -> Result<KeyHash, KeyError> {
    let bytes = key.as_bytes();
    if bytes.len() != KEY_LEN || !key.starts_with(PREFIX) {
        return Err(KeyError::Malformed);
    }
    let (unsigned, rest) = bytes.split_at(PREFIX.len() + BODY_LEN);
    let body = &unsigned[PREFIX.len()..];
    let Some((b'_', sum)) = rest.split_first() else {
        return Err(KeyError::Malformed);
    };
    if !body.iter().all(u8::is_ascii_alphanumeric) || !sum.iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyError::Malformed);
    }
    if checksum(unsigned).as_bytes() != sum {
        return Err(KeyError::Checksum);
    }
    Ok(hash(key))
}

pub fn hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

pub fn hash_hex(hash: &KeyHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_from_hex(hex: &str) -> Option<KeyHash> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

/// CRC-32 of `bytes` in [`CHECKSUM_LEN`] base-62 digits (62^6 > 2^32), most significant first.
fn checksum(bytes: &[u8]) -> String {
    let mut n = crc32fast::hash(bytes);
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    digits.iter().map(|&d| char::from(d)).collect()
}

/// A key as stored (the `api_keys` documents; docs/DESIGN.md §Data model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The key's first characters ([`SHOWN_LEN`]), to recognise it by.
    pub prefix: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// The services the key may call; `None`: every service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// The most the key may spend per calendar month (UTC), in credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<i64>,
    /// After this (unix ms) the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub disabled: bool,
    pub created_at_ms: i64,
    /// The user who made it (an admin, or the tenant's user through `/me/keys`).
    pub created_by: String,
    /// The key this one replaced by a roll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_from: Option<String>,
    /// The key whose monthly spend this key's budget counts (the first of its rolls, so a
    /// roll does not start the month over); `None`: its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<String>,
    /// The key's own rate and concurrency limits (docs/DESIGN.md §Limits).
    #[serde(default, flatten)]
    pub limits: crate::vocab::Limits,
}

/// A key the gateway accepts: what a call made with it may do.
#[derive(Debug)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    pub services: Option<Vec<String>>,
    pub budget: Option<i64>,
    /// Whose spend the budget counts (see [`KeyRecord::budget_id`]).
    pub budget_id: String,
    pub limits: crate::vocab::Limits,
    /// Its limits' scope in the ledger: `k:<budget id>` (a rolled key and the key it
    /// replaced share their limits, as their budget, during the overlap).
    pub scope: String,
    pub expires_at_ms: Option<i64>,
    /// The identity the request path carries for a call made with this key: a `user` of
    /// its tenant whose `sub` is the key's id; it never expires of itself.
    pub claims: Arc<super::Claims>,
}

impl ApiKey {
    /// Whether the key may call `service`.
    pub fn allows(&self, service: &str) -> bool {
        self.services
            .as_ref()
            .is_none_or(|services| services.iter().any(|s| s == service))
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// The budget counter of the calendar month (UTC) of `now_ms`: `<budget id>:<YYYY-MM>`.
    pub fn budget_counter(&self, now_ms: i64) -> String {
        let month = chrono::DateTime::from_timestamp_millis(now_ms)
            .unwrap_or_default()
            .format("%Y-%m");
        format!("{}:{month}", self.budget_id)
    }
}

/// Every key the gateway accepts, by hash (disabled keys are left out).
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<KeyHash, Arc<ApiKey>>,
}

impl ApiKeys {
    /// From the stored records; a record whose hash is not 64 hex digits is skipped, loudly.
    pub fn from_records(records: impl IntoIterator<Item = KeyRecord>) -> ApiKeys {
        let mut by_hash = HashMap::new();
        for record in records {
            if record.disabled {
                continue;
            }
            let Some(hash) = hash_from_hex(&record.hash) else {
                tracing::error!(key_id = %record.id, "stored API key skipped: its hash is not 64 hex digits");
                continue;
            };
            let claims = Arc::new(super::Claims {
                sub: record.id.clone(),
                tenant_id: record.tenant_id.clone(),
                role: super::Role::User,
                exp: u64::MAX,
                iat: None,
                nbf: None,
                iss: None,
                aud: None,
            });
            let budget_id = record.budget_id.unwrap_or_else(|| record.id.clone());
            let key = ApiKey {
                scope: format!("k:{budget_id}"),
                budget_id,
                limits: record.limits,
                id: record.id,
                tenant_id: record.tenant_id,
                services: record.services,
                budget: record.budget,
                expires_at_ms: record.expires_at_ms,
                claims,
            };
            by_hash.insert(hash, Arc::new(key));
        }
        ApiKeys { by_hash }
    }

    pub fn get(&self, hash: &KeyHash) -> Option<&Arc<ApiKey>> {
        self.by_hash.get(hash)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_parses_to_its_hash() {
        let new = generate();
        assert_eq!(new.key.len(), KEY_LEN);
        assert!(new.key.starts_with(PREFIX) && is_key(new.key.as_bytes()));
        assert_eq!(parse(&new.key), Ok(new.hash));
        assert!(new.key.starts_with(&new.shown));
        assert_eq!(hash_from_hex(&hash_hex(&new.hash)), Some(new.hash));
        assert_ne!(generate().key, new.key);
    }

    #[test]
    fn a_typo_fails_the_checksum_without_a_lookup() {
        let key = generate().key;
        // Every single-character change inside the body or the checksum is caught.
        for i in PREFIX.len()..KEY_LEN {
            if i == PREFIX.len() + BODY_LEN {
                continue;
            }
            let mut typo = key.clone().into_bytes();
            typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(typo).unwrap();
            assert_eq!(parse(&typo), Err(KeyError::Checksum), "{typo}");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let key = generate().key;
        for bad in [
            "",
            "tg_",
            &key[..KEY_LEN - 1],
            &format!("{key}x"),
            &key.replace("tg_live_", "tg_test_"),
            &key.replacen('_', "-", 3),
            &format!("{}é{}", &key[..10], &key[12..]),
            "eyJhbGciOiJIUzI1NiJ9.e30.x",
        ] {
            assert_eq!(parse(bad), Err(KeyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn a_disabled_or_garbled_record_is_not_loaded() {
        let record = |id: &str, hash: String, disabled: bool| KeyRecord {
            id: id.into(),
            tenant_id: "acme".into(),
            name: id.into(),
            prefix: "tg_live_abcdef".into(),
            hash,
            services: Some(vec!["notes".into()]),
            budget: None,
            expires_at_ms: Some(1000),
            disabled,
            created_at_ms: 0,
            created_by: "u1".into(),
            rolled_from: None,
            budget_id: None,
            limits: Default::default(),
        };
        let (a, b) = (generate(), generate());
        let keys = ApiKeys::from_records([
            record("k1", hash_hex(&a.hash), false),
            record("k2", hash_hex(&b.hash), true),
            record("k3", "zz".into(), false),
        ]);
        assert_eq!(keys.len(), 1);
        let k1 = keys.get(&a.hash).unwrap();
        assert_eq!((k1.id.as_str(), k1.claims.sub.as_str()), ("k1", "k1"));
        assert_eq!(k1.claims.role, super::super::Role::User);
        assert!(k1.allows("notes") && !k1.allows("search"));
        assert!(k1.expired(1000) && !k1.expired(999));
        // 2026-12-31T23:59:59.999Z and the next millisecond are two months.
        assert_eq!(k1.budget_counter(1_798_761_599_999), "k1:2026-12");
        assert_eq!(k1.budget_counter(1_798_761_600_000), "k1:2027-01");
        assert!(keys.get(&b.hash).is_none());
    }
}
