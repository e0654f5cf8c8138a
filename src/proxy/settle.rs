//! A settled call (docs/DESIGN.md §Settled prices): its reserve was charged at step 3; its
//! cost is read from the upstream's answer as the answer streams to the client, untouched
//! and unbuffered (a JSON body is copied aside up to a cap, a server-sent-events stream is
//! read line by line, keeping only the last event that carries a `usage` object), and the
//! charge is settled once, at the call's end.

use super::{Gateway, RequestCtx};
use crate::alerts::{self, CreditSuccess};
use crate::config::Overage;
use crate::deferred::settles::PendingSettle;
use crate::ledger::SettleOutcome;
use crate::metrics::ServiceMetrics;
use crate::pricing::SettleRule;
use crate::routing::Settled;
use crate::vocab::UsageEvent;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;
use std::sync::Arc;

/// What a settled call has read of its answer so far.
pub(super) struct Settling {
    terms: Arc<Settled>,
    /// What the charge took.
    pub(super) reserved: i64,
    pub(super) threshold: i64,
    /// The API key budget counter the reserve counted against, if any.
    pub(super) budget: Option<String>,
    /// Largest JSON body (and server-sent event) kept to read the cost from.
    cap: usize,
    status: u16,
    /// The header rule's value, once the response header came.
    header: Option<Result<u32, String>>,
    /// A JSON body as it passes.
    body: Vec<u8>,
    /// Set when the body or an event outgrew `cap`.
    over_cap: bool,
    /// Server-sent events: the current line, the current event's data, the last usage.
    line: Vec<u8>,
    data: Vec<u8>,
    usage: Option<Value>,
    /// The upstream's answer reached its end (not cut off).
    complete: bool,
}

/// What a settled call comes to.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Reckoning {
    /// What the call costs under the endpoint's overage policy.
    pub cost: i64,
    /// Why the reserve stands instead of a cost read from the answer, if it does.
    pub fallback: Option<String>,
}

impl Settling {
    pub(super) fn new(terms: Arc<Settled>, reserved: i64, threshold: i64, cap: usize) -> Self {
        Settling {
            terms,
            reserved,
            threshold,
            budget: None,
            cap,
            status: 0,
            header: None,
            body: Vec::new(),
            over_cap: false,
            line: Vec::new(),
            data: Vec::new(),
            usage: None,
            complete: false,
        }
    }

    /// Whether the upstream must answer uncompressed (the cost is read from the body).
    pub(super) fn reads_body(&self) -> bool {
        !matches!(self.terms.rule, SettleRule::Header(_))
    }

    pub(super) fn response_header(&mut self, response: &ResponseHeader) {
        self.status = response.status.as_u16();
        if let SettleRule::Header(name) = &self.terms.rule {
            self.header = Some(match response.headers.get(name) {
                None => Err(format!("the answer has no `{name}` header")),
                Some(value) => value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .filter(|n| *n <= crate::vocab::MAX_ENDPOINT_CREDITS)
                    .ok_or_else(|| {
                        format!(
                            "`{name}` is not a whole number of credits from 0 to {}",
                            crate::vocab::MAX_ENDPOINT_CREDITS
                        )
                    }),
            });
        }
    }

    pub(super) fn body_chunk(&mut self, chunk: Option<&Bytes>, end_of_stream: bool) {
        if let Some(chunk) = chunk {
            match &self.terms.rule {
                SettleRule::Header(_) => {}
                SettleRule::Json(_) => {
                    if self.body.len() + chunk.len() > self.cap {
                        self.over_cap = true;
                        self.body = Vec::new();
                    } else if !self.over_cap {
                        self.body.extend_from_slice(chunk);
                    }
                }
                SettleRule::Sse(_) => self.sse_bytes(chunk),
            }
        }
        if end_of_stream {
            if matches!(self.terms.rule, SettleRule::Sse(_)) {
                // A last event not followed by its blank line still counts.
                if !self.line.is_empty() {
                    self.sse_line();
                }
                self.sse_event();
            }
            self.complete = true;
        }
    }

    fn sse_bytes(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            self.push_line(&rest[..end]);
            self.sse_line();
            rest = &rest[end + 1..];
        }
        self.push_line(rest);
    }

    fn push_line(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > self.cap {
            self.over_cap = true;
            self.line.clear();
            self.data.clear();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// One complete line of the stream (WHATWG server-sent events: `data:` lines join with
    /// a newline; a blank line ends the event; other fields are not the cost's).
    fn sse_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            self.sse_event();
        } else if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.data.len() + value.len() + 1 > self.cap {
                self.over_cap = true;
                self.data.clear();
            } else {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
            }
        }
        line.clear();
        self.line = line;
    }

    fn sse_event(&mut self) {
        if self.data.is_empty() {
            return;
        }
        // `[DONE]` and other text are not JSON: skipped, as are events without a usage.
        if let Ok(event) = serde_json::from_slice::<Value>(&self.data) {
            if event.get("usage").is_some_and(Value::is_object) {
                self.usage = Some(event);
            }
        }
        self.data.clear();
    }

    /// What the call costs: read from the answer when it came whole and says, else the
    /// reserve; then the overage policy.
    pub(super) fn reckon(&self, failed: bool) -> Reckoning {
        let read = if failed || !self.complete {
            Err("the answer was cut off before its end".to_owned())
        } else {
            match &self.terms.rule {
                SettleRule::Header(_) => self
                    .header
                    .clone()
                    .unwrap_or_else(|| Err("no response header".into())),
                SettleRule::Json(expression) if self.over_cap => Err(format!(
                    "the body is larger than {} bytes (`settle_body_max_bytes`); {}",
                    self.cap,
                    expression.source()
                )),
                SettleRule::Json(expression) => match serde_json::from_slice::<Value>(&self.body) {
                    Ok(body) => {
                        let response = serde_json::json!({ "status": self.status, "body": body });
                        expression.evaluate_response("response", &response)
                    }
                    Err(e) => Err(format!("the body is not JSON: {e}")),
                },
                SettleRule::Sse(expression) => match &self.usage {
                    Some(event) => expression.evaluate_response("event", event),
                    None => Err("no event carried a `usage` object".into()),
                },
            }
        };
        match read {
            Ok(cost) => {
                let cost = i64::from(cost);
                Reckoning {
                    cost: match self.terms.overage {
                        Overage::Cap => cost.min(self.reserved),
                        Overage::Allow => cost,
                    },
                    fallback: None,
                }
            }
            Err(why) => Reckoning {
                cost: self.reserved,
                fallback: Some(why),
            },
        }
    }
}

impl Gateway {
    /// Step 6 of a settled call: the charge settled at what the call cost, then its usage
    /// event (reserve and cost both) and its credit-success notice. A ledger that does not
    /// answer gets the settlement retried in the background, the event with it.
    pub(super) async fn settle(
        &self,
        settling: &Settling,
        mut event: UsageEvent,
        failed: bool,
        metrics: &ServiceMetrics,
    ) {
        let reckoning = settling.reckon(failed);
        if let Some(why) = &reckoning.fallback {
            tracing::info!(request_id = %event.request_id, reserved = settling.reserved, why, "settled at the reserve");
        }
        event.reserved = Some(settling.reserved);
        if reckoning.cost == settling.reserved {
            // Nothing moves: the charge took exactly this.
            event.credits_used = settling.reserved;
            self.settles.close(&event.request_id);
            self.settled(event, metrics);
            return;
        }
        let tenant = event.tenant_id.clone();
        let pending = PendingSettle {
            reserved: settling.reserved,
            cost: reckoning.cost,
            threshold: settling.threshold,
            budget: settling.budget.clone(),
            since_ms: crate::store::now_ms(),
            event,
        };
        match self.ledger.settle(&pending.as_settle()).await {
            Ok(outcome) => {
                if let SettleOutcome::Settled {
                    balance, warnings, ..
                } = outcome
                {
                    let threshold = settling.threshold;
                    alerts::announce(&*self.alerts, &tenant, warnings, balance, threshold);
                }
                let (event, moved) = pending.completed(outcome);
                self.usage.charged(&tenant, moved);
                self.settles.close(&event.request_id);
                self.settled(event, metrics);
            }
            Err(e) => {
                tracing::warn!(request_id = %pending.event.request_id, error = %e, "settlement deferred: ledger unavailable");
                self.settles.push(pending);
            }
        }
    }

    /// Journals a settled call's reserve as it is charged, with its usage event as far as
    /// it is known (see [`crate::deferred::settles::SettleQueue::open`]).
    pub(super) fn open_reserve(&self, session: &Session, ctx: &RequestCtx) {
        let (Some(route), Some(claims), Some(settling), Some(charged)) =
            (&ctx.route, &ctx.claims, &ctx.settling, &ctx.charge)
        else {
            return;
        };
        let event = UsageEvent {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: claims.tenant_id.clone(),
            user_id: claims.sub.clone(),
            key_id: ctx.api_key.as_ref().map(|k| k.id.clone()),
            service: route.service.name.clone(),
            endpoint: route.endpoint().path.clone(),
            method: session.req_header().method.to_string(),
            credits_used: settling.reserved,
            plan_id: ctx.price_plan.as_deref().map(str::to_owned),
            reserved: Some(settling.reserved),
            shortfall: 0,
            shadow_credits: ctx.shadow,
            balance_after: charged.balance.unwrap_or(0),
            // Cut off by the gateway's own end: no status was sent.
            status: 0,
            latency_ms: 0.0,
            request_id: ctx.request_id.clone(),
            idempotency_key: ctx.idempotency_key.clone(),
            refunded: false,
            timestamp_ms: crate::store::now_ms(),
        };
        self.settles.open(&PendingSettle {
            reserved: settling.reserved,
            cost: settling.reserved,
            threshold: settling.threshold,
            budget: settling.budget.clone(),
            since_ms: crate::store::now_ms(),
            event,
        });
    }

    /// A settled call's books: its credits counted, its notice sent, its event recorded.
    fn settled(&self, event: UsageEvent, metrics: &ServiceMetrics) {
        if !event.refunded {
            metrics.charged(event.credits_used);
            if event.credits_used > 0 && self.alerts.wants_credit_success() {
                self.alerts.credit_success(CreditSuccess {
                    tenant_id: event.tenant_id.clone(),
                    service: event.service.clone(),
                    endpoint: event.endpoint.clone(),
                    credits_used: event.credits_used,
                    balance: event.balance_after,
                    timestamp: alerts::rfc3339_now(),
                });
            }
        }
        self.usage.record(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::SettleRule;

    fn settling(rule: SettleRule, overage: Overage) -> Settling {
        let terms = Arc::new(Settled {
            reserve: None,
            rule,
            overage,
        });
        Settling::new(terms, 50, 0, 4096)
    }

    fn feed(s: &mut Settling, chunks: &[&str]) {
        for chunk in chunks {
            s.body_chunk(Some(&Bytes::copy_from_slice(chunk.as_bytes())), false);
        }
        s.body_chunk(None, true);
    }

    #[test]
    fn the_last_usage_event_prices_a_stream_split_anywhere() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"choices\":[],\"usage\":{\"total_tokens\":230}}\r\n\r\n\
                      data: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut s = settling(
                SettleRule::sse("event.usage.total_tokens / 10").unwrap(),
                Overage::Cap,
            );
            feed(&mut s, &[&stream[..split], &stream[split..]]);
            let reckoning = s.reckon(false);
            assert_eq!(reckoning.cost, 23, "split at {split}: {reckoning:?}");
        }
    }

    #[test]
    fn a_stream_cut_or_without_usage_settles_at_the_reserve() {
        let rule = || SettleRule::sse("event.usage.total_tokens").unwrap();
        let mut cut = settling(rule(), Overage::Cap);
        cut.body_chunk(
            Some(&Bytes::from_static(
                b"data: {\"usage\":{\"total_tokens\":3}}\n\n",
            )),
            false,
        );
        assert_eq!(cut.reckon(false).cost, 50, "no end of stream");
        let mut bare = settling(rule(), Overage::Cap);
        feed(
            &mut bare,
            &["data: {\"choices\":[]}\n\n", "data: [DONE]\n\n"],
        );
        let reckoning = bare.reckon(false);
        assert_eq!(reckoning.cost, 50);
        assert!(reckoning.fallback.unwrap().contains("usage"));
    }

    #[test]
    fn overage_is_capped_or_allowed() {
        let body = r#"{"usage":{"total_tokens":800}}"#;
        let mut capped = settling(
            SettleRule::json("response.body.usage.total_tokens / 10").unwrap(),
            Overage::Cap,
        );
        feed(&mut capped, &[body]);
        assert_eq!(capped.reckon(false).cost, 50);
        let mut allowed = settling(
            SettleRule::json("response.body.usage.total_tokens / 10").unwrap(),
            Overage::Allow,
        );
        feed(&mut allowed, &[body]);
        assert_eq!(allowed.reckon(false).cost, 80);
    }

    #[test]
    fn a_body_over_the_cap_or_not_json_settles_at_the_reserve() {
        let rule = || SettleRule::json("response.body.n").unwrap();
        let mut big = settling(rule(), Overage::Cap);
        let padding = "x".repeat(5000);
        feed(&mut big, &[&format!(r#"{{"n": 1, "pad": "{padding}"}}"#)]);
        assert!(big.reckon(false).fallback.unwrap().contains("larger"));
        let mut text = settling(rule(), Overage::Cap);
        feed(&mut text, &["not json"]);
        assert_eq!(text.reckon(false).cost, 50);
        let mut negative = settling(rule(), Overage::Cap);
        feed(&mut negative, &[r#"{"n": -3}"#]);
        assert_eq!(
            negative.reckon(false).cost,
            50,
            "a negative cost is no cost"
        );
    }

    #[test]
    fn a_header_prices_the_call_unless_it_is_not_a_number() {
        let mut response = ResponseHeader::build(200, None).unwrap();
        response.insert_header("x-usage-credits", "7").unwrap();
        let mut s = settling(SettleRule::header("X-Usage-Credits").unwrap(), Overage::Cap);
        s.response_header(&response);
        feed(&mut s, &["anything"]);
        assert_eq!(s.reckon(false).cost, 7);
        assert_eq!(
            s.reckon(true).cost,
            50,
            "a failed call settles at the reserve"
        );
        response.insert_header("x-usage-credits", "-7").unwrap();
        let mut bad = settling(SettleRule::header("X-Usage-Credits").unwrap(), Overage::Cap);
        bad.response_header(&response);
        feed(&mut bad, &[]);
        assert_eq!(bad.reckon(false).cost, 50);
    }
}
