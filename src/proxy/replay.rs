//! `Idempotency-Key` on the request path (see [`crate::idempotency`] and docs/DESIGN.md):
//! a first use is charged and forwarded like any call while its body digest and response
//! are taken as they stream past; a retry is answered here from what the key holds, and
//! never reaches the upstream or the ledger's balance.
//!
//! | the key holds                         | the retry gets                               |
//! |---------------------------------------|----------------------------------------------|
//! | another request's fingerprint         | `422`, nothing forwarded or charged          |
//! | the same request, still in flight     | `409` with `Retry-After`                     |
//! | the same request's kept response      | that response, `Idempotent-Replayed: true`   |
//! | a response too large (or cut) to keep | `409` saying so: never a second execution    |
//! | nothing (the first use was refunded)  | a new call: charged and forwarded            |

use super::{Gateway, Problem, RequestCtx};
use crate::idempotency::{keeps_header, BodyDigest, KeptResponse, KeyRecord};
use crate::metrics::Outcome;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// `Retry-After` on a `409` for a key whose first call is still running.
const IN_FLIGHT_RETRY_AFTER_SECS: u32 = 1;

/// How long a retry that finds its key in flight waits for the first call's response to be
/// kept before answering `409`: the response is kept right after its last byte is sent, so
/// a client that retries the moment it has it would otherwise race the gateway.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often that wait looks again.
const IN_FLIGHT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// A first use in progress (its key is the request's `idempotency_key`): what is taken
/// for it as the request and the response pass.
#[derive(Debug)]
pub(super) struct Keyed {
    body_digest: BodyDigest,
    status: Option<u16>,
    headers: Vec<(String, String)>,
    /// The response body so far; `None` once it outgrew the limit.
    body: Option<BytesMut>,
    /// The response body reached its end (so what was taken is the whole of it).
    complete: bool,
}

impl Default for Keyed {
    fn default() -> Keyed {
        Keyed {
            body_digest: BodyDigest::default(),
            status: None,
            headers: Vec::new(),
            body: Some(BytesMut::new()),
            complete: false,
        }
    }
}

impl Keyed {
    /// A chunk of the request body on its way to the upstream.
    pub(super) fn request_chunk(&mut self, chunk: &[u8]) {
        self.body_digest.update(chunk);
    }

    /// The upstream's response header, before the gateway adds its own. `bodiless`: the
    /// response ends with its header (a `HEAD`, `204`, `304`, `Content-Length: 0`), so no
    /// body phase will come to say it is whole.
    pub(super) fn response_header(&mut self, response: &ResponseHeader, bodiless: bool) {
        self.status = Some(response.status.as_u16());
        self.complete = bodiless;
        self.headers = response
            .headers
            .iter()
            .filter(|(name, _)| keeps_header(name.as_str()))
            .filter_map(|(name, value)| {
                let value = value.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
    }

    /// A chunk of the response body on its way to the client.
    pub(super) fn response_chunk(&mut self, chunk: Option<&Bytes>, end: bool, limit: usize) {
        if let (Some(body), Some(chunk)) = (&mut self.body, chunk) {
            if body.len() + chunk.len() > limit {
                self.body = None;
            } else {
                body.extend_from_slice(chunk);
            }
        }
        self.complete |= end;
    }

    /// What the key keeps: the whole response, or its status alone when the body was too
    /// large or never reached its end.
    fn into_kept(self) -> KeptResponse {
        let whole = self.complete && self.body.is_some();
        KeptResponse {
            body_digest: self.body_digest.finish(),
            status: self.status.unwrap_or(0),
            headers: if whole { self.headers } else { Vec::new() },
            body: self.body.filter(|_| whole).map(BytesMut::freeze),
        }
    }
}

impl Gateway {
    /// Step 3 for a request whose key is already claimed: answers it from the key's record.
    /// The `Ok(true)` of `request_filter`: the response is written.
    pub(super) async fn answer_retry(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        (tenant_id, key, fingerprint): (&str, &str, &str),
        balance: i64,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
        let record = loop {
            let record = match self.ledger.key_record(tenant_id, key).await {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "ledger unavailable reading an idempotency key");
                    return super::refuse(session, ctx, &Problem::ledger_unavailable()).await;
                }
            };
            let in_flight =
                matches!(&record, Some(r) if r.response.is_none() && r.fingerprint == fingerprint);
            if !in_flight || tokio::time::Instant::now() >= deadline {
                break record;
            }
            tokio::time::sleep(IN_FLIGHT_POLL).await;
        };
        let problem = match record {
            // Released between the charge and this read (its first use was refunded): the
            // retry may go ahead as a new call, so say so.
            None => in_flight(key),
            Some(KeyRecord { fingerprint: f, .. }) if f != fingerprint => mismatch(key),
            Some(KeyRecord { response: None, .. }) => in_flight(key),
            Some(KeyRecord {
                response: Some(blob),
                ..
            }) => {
                let Some(kept) = KeptResponse::decode(&blob) else {
                    tracing::error!(%tenant_id, %key, "unreadable kept response");
                    return super::refuse(session, ctx, &not_kept(key, 0)).await;
                };
                // The body is part of the fingerprint: read it whole (hashed, not kept).
                let mut digest = BodyDigest::default();
                while let Some(chunk) = session.read_request_body().await? {
                    digest.update(&chunk);
                }
                if digest.finish() != kept.body_digest {
                    mismatch(key)
                } else if kept.body.is_none() {
                    not_kept(key, kept.status)
                } else {
                    return self.replay(session, ctx, kept, balance).await;
                }
            }
        };
        super::refuse(session, ctx, &problem).await
    }

    /// Writes a kept response again, marked as a replay, charged nothing.
    async fn replay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        kept: KeptResponse,
        balance: i64,
    ) -> Result<bool> {
        let body = kept.body.unwrap_or_default();
        let mut header = ResponseHeader::build(kept.status, Some(kept.headers.len() + 5))?;
        for (name, value) in kept.headers {
            header.append_header(name, value)?;
        }
        // RFC 9110 §8.6: no Content-Length on a 204 or 304.
        if !matches!(kept.status, 204 | 304) {
            header.insert_header("content-length", body.len())?;
        }
        header.insert_header("idempotent-replayed", "true")?;
        header.insert_header("x-credits-cost", 0)?;
        header.insert_header("x-credits-remaining", balance)?;
        header.insert_header("x-request-id", ctx.request_id.as_str())?;
        let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
        session
            .write_response_header(Box::new(header), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        ctx.outcome = Some(Outcome::Replayed);
        Ok(true)
    }

    /// The call ended: keeps its response with the key it claimed (unless it was refunded,
    /// which released the key). Runs after the response is sent, off the client's time.
    pub(super) async fn keep_response(&self, ctx: &mut RequestCtx) {
        let (Some(keyed), Some(claims), Some(key)) =
            (ctx.keyed.take(), &ctx.claims, &ctx.idempotency_key)
        else {
            return;
        };
        if ctx.charge.as_ref().is_none_or(|c| c.refunded) {
            return;
        }
        let kept = keyed.into_kept().encode();
        match self
            .ledger
            .keep_response(&claims.tenant_id, key, &ctx.request_id, &kept)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(request_id = %ctx.request_id, %key, "idempotency key released or expired before its response could be kept")
            }
            // Retries get 409 until the key expires: never a second execution.
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, %key, error = %e, "could not keep the response of an idempotent call")
            }
        }
    }
}

fn in_flight(key: &str) -> Problem {
    Problem::new(
        409,
        "idempotency-key-in-use",
        "Request in progress",
        "a request with this Idempotency-Key is still in progress; retry later",
    )
    .with("idempotency_key", key)
    .header("retry-after", IN_FLIGHT_RETRY_AFTER_SECS)
}

fn mismatch(key: &str) -> Problem {
    Problem::new(
        422,
        "idempotency-key-reused",
        "Idempotency-Key reused",
        "this Idempotency-Key was used for a different request (method, path, query or body)",
    )
    .with("idempotency_key", key)
    .with("header", "Idempotency-Key")
}

fn not_kept(key: &str, status: u16) -> Problem {
    Problem::new(
        409,
        "idempotent-response-not-kept",
        "Response not kept",
        "the request with this Idempotency-Key was already executed; its response was too \
         large to keep (or was not delivered whole), so it cannot be replayed",
    )
    .with("idempotency_key", key)
    .with("original_status", status)
}
