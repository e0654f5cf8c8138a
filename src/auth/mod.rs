//! Step 2 of the request path: the `Authorization: Bearer <JWT>` front door.
//!
//! The accepted algorithm is pinned by configuration; `alg: none` does not parse and any
//! other algorithm is refused, so algorithm confusion (an HS256 token signed with an RSA
//! public key) cannot pass. `exp`, `sub`, `tenant_id` and `role` are required. A token whose
//! header names a `kid` is an identity provider's, verified with its JWKS keys ([`jwks`]),
//! each pinned to its own algorithm, its identity read from the configured claims.

mod cache;
pub mod jwks;
pub mod keys;

use crate::config::{AuthConfig, ClaimsConfig, JwtAlgorithm};
use crate::vocab::is_valid_tenant_id;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest token accepted; anything longer is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant_id: String,
    pub role: Role,
    pub exp: u64,
    /// Issued at, in seconds (a NumericDate, RFC 7519 §2: fractions allowed; ours carry
    /// milliseconds, so a user change voids exactly the tokens issued before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// When the token was issued, in unix milliseconds (0 when it does not say).
    pub fn issued_at_ms(&self) -> u64 {
        // `as` saturates: a negative or NaN `iat` reads as 0, a huge one as the far future.
        self.iat.map_or(0, |secs| (secs * 1000.0) as u64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("key error: {0}")]
    Key(String),
    /// The token names a `kid` the identity provider's key set lacks (yet): see
    /// [`Verifier::verify_header_refreshing`].
    #[error("unknown signing key (kid)")]
    UnknownKid,
}

/// Verifies tokens with the configured key; built once, shared by every worker.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// Tokens verified before, for every algorithm (see `cache`).
    verified: cache::VerifiedTokens,
    /// The identity provider's keys, when `auth.jwks_url` is set.
    jwks: Option<Arc<jwks::Jwks>>,
    /// Checks for an identity provider's token (its algorithm set per key).
    jwks_validation: Validation,
    claims: ClaimsConfig,
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let key = match config.algorithm {
            JwtAlgorithm::HS256 => DecodingKey::from_secret(config.secret.as_bytes()),
            JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&read_key(&config.public_key_file)?),
            JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(&read_key(&config.public_key_file)?),
        }
        .map_err(|e| AuthError::Key(e.to_string()))?;
        let mut validation = Validation::new(algorithm(config.algorithm));
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        let mut jwks_validation = validation.clone();
        jwks_validation.set_required_spec_claims(&["exp"]);
        let jwks = match &config.jwks_url {
            Some(url) => Some(Arc::new(
                jwks::Jwks::new(url, &config.jwks).map_err(AuthError::Key)?,
            )),
            None => None,
        };
        Ok(Verifier {
            key,
            validation,
            verified: cache::VerifiedTokens::default(),
            jwks,
            jwks_validation,
            claims: config.claims.clone(),
        })
    }

    /// [`Self::verify_header`]; a token naming a `kid` the identity provider's set lacks
    /// fetches the set first (at most once per `auth.jwks.min_refetch_secs`) and is tried
    /// again: a key just published is accepted on its first use.
    pub async fn verify_header_refreshing(
        &self,
        header: Option<&[u8]>,
    ) -> Result<Arc<Claims>, AuthError> {
        match self.verify_header(header) {
            Err(AuthError::UnknownKid) => {
                if let Some(jwks) = &self.jwks {
                    jwks.refresh_for_unknown_kid().await;
                }
                self.verify_header(header)
            }
            other => other,
        }
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify_header(&self, header: Option<&[u8]>) -> Result<Arc<Claims>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix(b"Bearer ")
            .ok_or(AuthError::Malformed)?;
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let token = std::str::from_utf8(token).map_err(|_| AuthError::Malformed)?;
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        self.verify_at(token, now_secs())
    }

    /// `verify` with the clock as a parameter, for the cached path's time checks.
    fn verify_at(&self, token: &str, now: u64) -> Result<Arc<Claims>, AuthError> {
        // A provider's set due a refresh starts one; a stale one serves no token from the
        // cache (each is verified again, and a provider's token refused).
        let usable = self.jwks.as_ref().is_none_or(|j| j.tick(now as i64 * 1000));
        let generation = self.jwks.as_ref().map_or(0, |j| j.generation());
        if let Some(claims) = self.verified.get(token, generation).filter(|_| usable) {
            self.check_times(&claims, now)?;
            return Ok(claims);
        }
        let claims = match (&self.jwks, named_kid(token)) {
            (Some(jwks), Some((kid, alg))) => {
                self.verify_with_provider(jwks, token, &kid, alg, now)?
            }
            _ => {
                jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?
                    .claims
            }
        };
        if !is_valid_tenant_id(&claims.tenant_id) {
            return Err(AuthError::Invalid("malformed tenant_id".into()));
        }
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(AuthError::Invalid("malformed sub".into()));
        }
        let claims = Arc::new(claims);
        self.verified.insert(token, &claims, generation);
        Ok(claims)
    }

    /// An identity provider's token: the key its `kid` names, only with that key's
    /// algorithm; the identity from the configured claims.
    fn verify_with_provider(
        &self,
        jwks: &Arc<jwks::Jwks>,
        token: &str,
        kid: &str,
        alg: Algorithm,
        now: u64,
    ) -> Result<Claims, AuthError> {
        let key = jwks
            .key(kid, (now as i64).saturating_mul(1000))
            .map_err(|e| match e {
                jwks::Lookup::Unknown => AuthError::UnknownKid,
                jwks::Lookup::Stale => AuthError::Invalid(
                    "the identity provider's keys are stale (it has not answered)".into(),
                ),
            })?;
        if alg != key.algorithm {
            return Err(AuthError::Invalid(format!(
                "this key signs {:?} only",
                key.algorithm
            )));
        }
        let mut validation = self.jwks_validation.clone();
        validation.algorithms = vec![key.algorithm];
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &validation,
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
        mapped(&data.claims, &self.claims)
    }

    /// The time checks `jsonwebtoken` makes, for a token whose signature was verified before.
    fn check_times(&self, claims: &Claims, now: u64) -> Result<(), AuthError> {
        let leeway = self.validation.leeway;
        if claims.exp.saturating_add(leeway) < now {
            return Err(AuthError::Invalid("ExpiredSignature".into()));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(AuthError::Invalid("ImmatureSignature".into()));
        }
        Ok(())
    }
}

/// The `kid` and `alg` of a token's header, when it names a `kid`.
fn named_kid(token: &str) -> Option<(String, Algorithm)> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    Some((header.kid?, header.alg))
}

/// An identity provider's claims read by the configured names: a string tenant and
/// subject, a role of `user` (also when absent) or `admin`, the standard times.
fn mapped(
    claims: &serde_json::Map<String, serde_json::Value>,
    names: &ClaimsConfig,
) -> Result<Claims, AuthError> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| AuthError::Invalid(format!("missing string claim `{name}`")))
    };
    let role = match claims.get(&names.role).map(|v| v.as_str()) {
        None | Some(Some("user")) => Role::User,
        Some(Some("admin")) => Role::Admin,
        Some(_) => {
            return Err(AuthError::Invalid(format!(
                "claim `{}` is not user or admin",
                names.role
            )))
        }
    };
    let seconds = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
    Ok(Claims {
        sub: text(&names.sub)?,
        tenant_id: text(&names.tenant_id)?,
        role,
        exp: seconds("exp").ok_or_else(|| AuthError::Invalid("missing `exp`".into()))?,
        iat: claims.get("iat").and_then(serde_json::Value::as_f64),
        nbf: seconds("nbf"),
        iss: None,
        aud: None,
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs a token for `tenant_id`/`sub` (the `tollgate token` command, later the admin API).
pub fn mint(
    config: &AuthConfig,
    tenant_id: &str,
    sub: &str,
    role: Role,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    let key = match config.algorithm {
        JwtAlgorithm::HS256 => EncodingKey::from_secret(config.secret.as_bytes()),
        JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(&read_key(&config.private_key_file)?),
        JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(&read_key(&config.private_key_file)?),
    }
    .map_err(|e| AuthError::Key(e.to_string()))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let claims = Claims {
        sub: sub.to_owned(),
        tenant_id: tenant_id.to_owned(),
        role,
        exp: now_ms / 1000 + ttl_secs,
        iat: Some(now_ms as f64 / 1000.0),
        nbf: None,
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
    };
    jsonwebtoken::encode(&Header::new(algorithm(config.algorithm)), &claims, &key)
        .map_err(|e| AuthError::Key(e.to_string()))
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn read_key(path: &Option<std::path::PathBuf>) -> Result<Vec<u8>, AuthError> {
    let path = path
        .as_ref()
        .ok_or_else(|| AuthError::Key("no key file configured for this algorithm".into()))?;
    std::fs::read(path).map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            secret: "a-test-secret-that-is-long-enough-000".into(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn round_trips_a_minted_token() {
        let c = config();
        let token = mint(&c, "acme", "u1", Role::Admin, 60).unwrap();
        let claims = Verifier::new(&c).unwrap().verify(&token).unwrap();
        assert_eq!(
            (claims.tenant_id.as_str(), claims.sub.as_str(), claims.role),
            ("acme", "u1", Role::Admin)
        );
    }

    #[test]
    fn hs256_tokens_are_cached_and_still_checked_for_time() {
        let c = config();
        let verifier = Verifier::new(&c).unwrap();
        let token = mint(&c, "acme", "u1", Role::User, 60).unwrap();
        let fresh = verifier.verify(&token).unwrap();
        let cached = verifier.verify(&token).unwrap();
        assert!(
            Arc::ptr_eq(&fresh, &cached),
            "the second sight is a cache hit"
        );
        let later = fresh.exp + c.leeway_secs + 1;
        assert!(matches!(
            verifier.verify_at(&token, later),
            Err(AuthError::Invalid(_))
        ));
        // A forged token for the same claims is no hit: its MAC fails.
        let other = AuthConfig {
            secret: "another-secret-entirely-0000000000000".into(),
            ..c.clone()
        };
        let forged = mint(&other, "acme", "u1", Role::User, 60).unwrap();
        assert!(matches!(
            verifier.verify(&forged),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn refuses_headers_and_tokens_it_should() {
        let c = config();
        let v = Verifier::new(&c).unwrap();
        assert!(matches!(v.verify_header(None), Err(AuthError::Missing)));
        assert!(matches!(
            v.verify_header(Some(b"Basic abc")),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            v.verify_header(Some(b"Bearer ")),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            v.verify_header(Some(b"Bearer \xff\xfe")),
            Err(AuthError::Malformed)
        ));
        let long = [b"Bearer ".as_slice(), &[b'a'; MAX_TOKEN_BYTES + 1]].concat();
        assert!(matches!(
            v.verify_header(Some(&long)),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
        // alg: none, with a payload that would otherwise be valid.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwidGVuYW50X2lkIjoiYSIsInJvbGUiOiJ1c2VyIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(matches!(v.verify(none), Err(AuthError::Invalid(_))));
        let other = AuthConfig {
            secret: "another-secret-entirely-0000000000000".into(),
            ..c.clone()
        };
        let forged = mint(&other, "acme", "u1", Role::User, 60).unwrap();
        assert!(matches!(v.verify(&forged), Err(AuthError::Invalid(_))));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let key = EncodingKey::from_secret(c.secret.as_bytes()).unwrap();
        let sign = |claims: &serde_json::Value| {
            jsonwebtoken::encode(&Header::default(), claims, &key).unwrap()
        };
        let expired = sign(
            &serde_json::json!({"sub": "u", "tenant_id": "a", "role": "user", "exp": now - 100}),
        );
        assert!(matches!(v.verify(&expired), Err(AuthError::Invalid(_))));
        let early = sign(
            &serde_json::json!({"sub": "u", "tenant_id": "a", "role": "user", "exp": now + 600, "nbf": now + 300}),
        );
        assert!(matches!(v.verify(&early), Err(AuthError::Invalid(_))));
        let no_tenant = sign(&serde_json::json!({"sub": "u", "role": "user", "exp": now + 600}));
        assert!(matches!(v.verify(&no_tenant), Err(AuthError::Invalid(_))));
        let no_exp = sign(&serde_json::json!({"sub": "u", "tenant_id": "a", "role": "user"}));
        assert!(matches!(v.verify(&no_exp), Err(AuthError::Invalid(_))));
        let bad_role = sign(
            &serde_json::json!({"sub": "u", "tenant_id": "a", "role": "root", "exp": now + 600}),
        );
        assert!(matches!(v.verify(&bad_role), Err(AuthError::Invalid(_))));
        let hash_tag = sign(
            &serde_json::json!({"sub": "u", "tenant_id": "a}{b", "role": "user", "exp": now + 600}),
        );
        assert!(matches!(v.verify(&hash_tag), Err(AuthError::Invalid(_))));
    }
}

#[cfg(test)]
mod pem_tests {
    //! RS256/ES256 with PEM keys made by the `openssl` command line tool.
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn openssl(dir: &Path, args: &[&str]) {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("openssl on PATH");
        assert!(status.success(), "openssl {args:?}");
    }

    fn keys(kind: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tg-keys-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        match kind {
            "rsa" => openssl(
                &dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    "private.pem",
                ],
            ),
            _ => openssl(
                &dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    "private.pem",
                ],
            ),
        }
        openssl(
            &dir,
            &[
                "pkey",
                "-in",
                "private.pem",
                "-pubout",
                "-out",
                "public.pem",
            ],
        );
        (dir.join("private.pem"), dir.join("public.pem"))
    }

    fn config(algorithm: JwtAlgorithm, (private, public): &(PathBuf, PathBuf)) -> AuthConfig {
        AuthConfig {
            algorithm,
            public_key_file: Some(public.clone()),
            private_key_file: Some(private.clone()),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn rs256_and_es256_verify_with_public_keys() {
        for (algorithm, kind) in [(JwtAlgorithm::RS256, "rsa"), (JwtAlgorithm::ES256, "ec")] {
            let c = config(algorithm, &keys(kind));
            let token = mint(&c, "acme", "u1", Role::User, 60).unwrap();
            let claims = Verifier::new(&c).unwrap().verify(&token).unwrap();
            assert_eq!(claims.tenant_id, "acme");
        }
    }

    #[test]
    fn cached_tokens_are_still_checked_for_time_and_identity() {
        let pair = keys("rsa");
        let c = config(JwtAlgorithm::RS256, &pair);
        let verifier = Verifier::new(&c).unwrap();
        let token = mint(&c, "acme", "u1", Role::User, 60).unwrap();
        let fresh = verifier.verify(&token).unwrap();
        let cached = verifier.verify(&token).unwrap();
        assert!(
            Arc::ptr_eq(&fresh, &cached),
            "the second sight is a cache hit"
        );
        // Past exp + leeway the cached token is refused, as a fresh verification would be.
        let later = fresh.exp + c.leeway_secs + 1;
        assert!(matches!(
            verifier.verify_at(&token, later),
            Err(AuthError::Invalid(_))
        ));
        // A token that differs in one byte is not a cache hit: its signature fails.
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(matches!(
            verifier.verify(&tampered),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let pair = keys("rsa");
        let rs256 = Verifier::new(&config(JwtAlgorithm::RS256, &pair)).unwrap();
        // The classic attack: an HS256 token whose HMAC key is the RSA public key's PEM.
        let public_pem = std::fs::read_to_string(&pair.1).unwrap();
        let forged = mint(
            &AuthConfig {
                secret: public_pem,
                ..AuthConfig::default()
            },
            "acme",
            "u1",
            Role::Admin,
            60,
        )
        .unwrap();
        assert!(matches!(rs256.verify(&forged), Err(AuthError::Invalid(_))));
        // And the reverse: an HS256 gateway never accepts an RS256 token.
        let rs_token = mint(
            &config(JwtAlgorithm::RS256, &pair),
            "acme",
            "u1",
            Role::User,
            60,
        )
        .unwrap();
        let hs256 = Verifier::new(&AuthConfig::default()).unwrap();
        assert!(matches!(
            hs256.verify(&rs_token),
            Err(AuthError::Invalid(_))
        ));
        // An ES256 gateway refuses an RS256 token even though both are public-key algorithms.
        let es = config(JwtAlgorithm::ES256, &keys("ec"));
        assert!(matches!(
            Verifier::new(&es).unwrap().verify(&rs_token),
            Err(AuthError::Invalid(_))
        ));
    }
}
