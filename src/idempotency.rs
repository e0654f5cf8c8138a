//! `Idempotency-Key` (IETF draft-ietf-httpapi-idempotency-key-header): "this request, once".
//!
//! A key belongs to the tenant and is bound to a fingerprint of the request that first used
//! it: the method, the service, the full path and query (the *head*, known before the
//! body) and a SHA-256 digest of the body, taken as the body streams through. The ledger
//! claims the key in the same atomic step as the charge; the gateway keeps the response
//! with it once the call completes; a refund releases it. See docs/DESIGN.md §Idempotency.
//!
//! ```text
//!   (absent) ──charge──► in flight ──call completes──► kept (status, headers, body)
//!       ▲                   │                           or too large: status only
//!       └───refund/void─────┘
//! ```
//!
//! This module holds the vocabulary: fingerprints, the kept response and its encoding.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Longest `Idempotency-Key` accepted (the common limit of Stripe and the IETF draft).
pub const MAX_KEY_BYTES: usize = 255;

/// The default of `ledger.idempotency_max_response_bytes`: most API answers fit, and a
/// day of kept responses stays a sizing question, not an outage.
pub const DEFAULT_MAX_KEPT_BYTES: usize = 1024 * 1024;

/// The most `ledger.idempotency_max_response_bytes` may be: one kept response is one
/// ledger write, which must stay well inside the ledger's timeout.
pub const MAX_KEPT_BYTES: usize = 16 * 1024 * 1024;

/// A header value as an `Idempotency-Key`: 1 to [`MAX_KEY_BYTES`] visible ASCII
/// characters (so it is safe in ledger keys and journal lines), or why not.
pub fn parse_key(value: &[u8]) -> Result<&str, String> {
    let visible = value.iter().all(|b| (0x21..=0x7e).contains(b));
    match std::str::from_utf8(value) {
        Ok(key) if visible && (1..=MAX_KEY_BYTES).contains(&key.len()) => Ok(key),
        _ => Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters"
        )),
    }
}

/// A key and the head fingerprint of the request that presents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyClaim<'a> {
    pub key: &'a str,
    pub fingerprint: &'a str,
}

/// What the ledger holds for a key: the request that claimed it and, once that call has
/// completed, its response. `response: None` while the first call is in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub charge_id: String,
    pub fingerprint: String,
    pub response: Option<Bytes>,
}

/// The head of the fingerprint: method, service and the path and query as sent, hashed.
pub fn head_fingerprint(method: &str, service: &str, path_and_query: &str) -> String {
    let mut hash = Sha256::new();
    for part in [method, service, path_and_query] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    hex(&hash.finalize())
}

/// The body's part of the fingerprint, fed chunk by chunk as the body streams (nothing is
/// buffered for it).
#[derive(Debug, Clone, Default)]
pub struct BodyDigest(Sha256);

impl BodyDigest {
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Lower-case hex of a digest (what fingerprints and keyed ids are written in).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The response kept with a key. `body: None`: the call completed but its response was not
/// kept (larger than `ledger.idempotency_max_response_bytes`, or not delivered whole);
/// a retry is told so and never re-executes the call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptResponse {
    /// The digest of the first request's body: a retry must send the same body.
    pub body_digest: String,
    pub status: u16,
    /// End-to-end headers as the upstream sent them (hop-by-hop and the gateway's own
    /// `X-Credits-*`/`X-Request-Id` left out; values that are not UTF-8 are not kept).
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Option<Bytes>,
}

/// Response headers never replayed: hop-by-hop (RFC 9110 §7.6.1), framing (recomputed for
/// the replay) and the gateway's own per-call headers.
const NOT_KEPT: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-credits-cost",
    "x-credits-remaining",
    "x-credits-deferred",
    "x-request-id",
    "idempotent-replayed",
];

/// Whether a response header is kept for replays.
pub fn keeps_header(name: &str) -> bool {
    !NOT_KEPT.contains(&name)
}

impl KeptResponse {
    /// One blob for the ledger: the JSON head, a newline (never inside compact JSON), then
    /// the body's bytes as they are. A head alone means the body was not kept.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        if let Some(body) = &self.body {
            out.reserve(1 + body.len());
            out.push(b'\n');
            out.extend_from_slice(body);
        }
        out
    }

    pub fn decode(blob: &Bytes) -> Option<KeptResponse> {
        let (head, body) = match blob.iter().position(|b| *b == b'\n') {
            Some(i) => (&blob[..i], Some(blob.slice(i + 1..))),
            None => (&blob[..], None),
        };
        let mut kept: KeptResponse = serde_json::from_slice(head).ok()?;
        kept.body = body;
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_response_survives_its_encoding() {
        let kept = KeptResponse {
            body_digest: BodyDigest::default().finish(),
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Some(Bytes::from_static(b"{\"id\":1}\n\nbinary\x00\xff")),
        };
        assert_eq!(
            KeptResponse::decode(&kept.encode().into()),
            Some(kept.clone())
        );
        let headless = KeptResponse { body: None, ..kept };
        assert_eq!(
            KeptResponse::decode(&headless.encode().into()),
            Some(headless)
        );
        assert_eq!(KeptResponse::decode(&Bytes::from_static(b"garbage")), None);
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = head_fingerprint("POST", "notes", "/api/proxy/notes/x?a=1");
        assert_eq!(a.len(), 64);
        assert_ne!(
            a,
            head_fingerprint("POST", "notes", "/api/proxy/notes/x?a=2")
        );
        assert_ne!(
            a,
            head_fingerprint("PUT", "notes", "/api/proxy/notes/x?a=1")
        );
        // Parts are separated: moving a byte between parts changes the fingerprint.
        assert_ne!(
            head_fingerprint("POST", "notesx", "y"),
            head_fingerprint("POST", "notes", "xy")
        );
        let mut one = BodyDigest::default();
        one.update(b"hello ");
        one.update(b"world");
        let mut whole = BodyDigest::default();
        whole.update(b"hello world");
        assert_eq!(one.finish(), whole.finish());
    }
}
