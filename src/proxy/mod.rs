//! The gateway: the one [`ProxyHttp`] implementation, reading top to bottom like the
//! request path of docs/DESIGN.md §Request path.
//!
//! ```text
//!  client ──► request_filter ─────────────────────────────────────────► upstream_peer
//!             1 route    (routing)  400 bad path · 404 unknown           │ service's base URL only
//!             2 auth     (auth)     401 bad token · 403 suspended        ▼
//!             3 charge   (ledger)   402 no credits · 503 ledger down   upstream_request_filter
//!                        (deferred) ledger down + `allow`: forward, charge later
//!                                                                       4 rewrite path + headers
//!  client ◄── response_filter ◄──────────────────────────────────────── upstream
//!             5 X-Credits-* (refund on 5xx if configured)
//!             Idempotency-Key (replay): a claimed key is answered from the ledger, never
//!             forwarded; a first use's body digest and response are kept as they pass
//!             fail_to_proxy: 502/504 + refund when the upstream was not reached
//!             logging: 6 usage event (usage) · 7 alerts (later)
//! ```

mod headers;
mod replay;
mod respond;
mod settle;
mod steps;

use crate::problem::Problem;

use replay::Keyed;
use steps::Charged;

use crate::alerts::{self, AlertSink, CreditSuccess};
use crate::auth::keys::ApiKey;
use crate::auth::{Claims, Verifier};
use crate::catalog::Catalog;
use crate::deferred::settles::SettleQueue;
use crate::deferred::{DeferredQueue, Reservation};
use crate::hydration::Hydrator;
use crate::idempotency::{head_fingerprint, KeyClaim};
use crate::ledger::{Budget, Charge, ChargeOutcome, Ledger, VoidQueue};
use crate::metrics::{Outcome, REQUEST_DURATION, UNROUTED};
use crate::routing::RouteMatch;
use crate::usage::UsageSink;
use crate::vocab::UsageEvent;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Gateway {
    /// Services and tenants, swapped in whole when the admin API changes them.
    catalog: Arc<Catalog>,
    verifier: Verifier,
    ledger: Arc<dyn Ledger>,
    voids: VoidQueue,
    deferred: DeferredQueue,
    settles: SettleQueue,
    usage: Arc<dyn UsageSink>,
    hydrator: Arc<Hydrator>,
    alerts: Arc<dyn AlertSink>,
    /// Largest JSON body or server-sent event a settled call's cost is read from
    /// (`settle_body_max_bytes`).
    settle_body_max: usize,
    /// Longest wait for the next bytes of a request body (`client_read_timeout_ms`).
    client_read_timeout: Duration,
    /// Largest response kept for idempotent replays (`ledger.idempotency_max_response_bytes`).
    max_kept_response: usize,
}

/// Pingora's own per-read default, kept until configured otherwise.
const DEFAULT_CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The shared handles the gateway charges and records through.
pub struct Backends {
    pub ledger: Arc<dyn Ledger>,
    /// Voids the request path could not do itself (ledger timeouts, deferred refunds).
    pub voids: VoidQueue,
    /// Charges of calls served while the ledger was down (`on_ledger_error: allow`).
    pub deferred: DeferredQueue,
    /// Settlements of settled calls the ledger did not answer at the call's end.
    pub settles: SettleQueue,
    pub usage: Arc<dyn UsageSink>,
    /// Seeds the ledger from the durable store when it has no balance for a tenant.
    pub hydrator: Arc<Hydrator>,
    /// Where low-credit warnings and credit-success notices go (MQTT).
    pub alerts: Arc<dyn AlertSink>,
}

/// Per-request state, filled in phase by phase.
pub struct RequestCtx {
    request_id: String,
    started: Instant,
    route: Option<RouteMatch>,
    claims: Option<Arc<Claims>>,
    /// The API key the call was made with, if it was (docs/DESIGN.md §API keys).
    api_key: Option<Arc<ApiKey>>,
    /// The key's budget counter this call's charge counted against (docs/DESIGN.md §API keys).
    budget: Option<String>,
    /// The scopes whose concurrency limits this call holds a place under, given back at
    /// its end (docs/DESIGN.md §Limits).
    in_flight: Vec<String>,
    /// `RateLimit-Policy` and `RateLimit` for the answer.
    rate_headers: Option<[(&'static str, String); 2]>,
    /// The plan whose price this call pays; `None`: the endpoint's own price.
    price_plan: Option<Arc<str>>,
    /// What the endpoint's shadow price would charge, when it has one.
    shadow: Option<i64>,
    idempotency_key: Option<String>,
    /// The idempotency key this request claimed, and what is taken for it as it passes
    /// (boxed: most calls carry no key, and the context of every call stays small).
    keyed: Option<Box<Keyed>>,
    charge: Option<Charged>,
    /// A settled call's reading of its answer (boxed: most calls are not settled).
    settling: Option<Box<settle::Settling>>,
    /// A deferred charge's place for the call's end, held from the forward to `logging`.
    deferred: Option<Reservation>,
    /// The upstream's status, once its response header arrived.
    upstream_status: Option<u16>,
    /// How the request ended, for `tollgate_requests_total`.
    outcome: Option<Outcome>,
}

/// Writes a refusal and records its outcome; the `Ok(true)` of `request_filter`.
async fn refuse(session: &mut Session, ctx: &mut RequestCtx, problem: &Problem) -> Result<bool> {
    ctx.outcome = Some(Outcome::for_status(problem.status));
    problem.send(session, &ctx.request_id).await?;
    Ok(true)
}

impl Gateway {
    pub fn new(catalog: Arc<Catalog>, verifier: Verifier, backends: Backends) -> Gateway {
        Gateway {
            catalog,
            verifier,
            ledger: backends.ledger,
            voids: backends.voids,
            deferred: backends.deferred,
            settles: backends.settles,
            usage: backends.usage,
            hydrator: backends.hydrator,
            alerts: backends.alerts,
            settle_body_max: crate::vocab::DEFAULT_SETTLE_BODY_MAX,
            client_read_timeout: DEFAULT_CLIENT_READ_TIMEOUT,
            max_kept_response: crate::idempotency::DEFAULT_MAX_KEPT_BYTES,
        }
    }

    pub fn with_max_kept_response(self, bytes: usize) -> Gateway {
        Gateway {
            max_kept_response: bytes,
            ..self
        }
    }

    pub fn with_settle_body_max(self, bytes: usize) -> Gateway {
        Gateway {
            settle_body_max: bytes,
            ..self
        }
    }

    pub fn with_client_read_timeout(self, timeout: Duration) -> Gateway {
        Gateway {
            client_read_timeout: timeout,
            ..self
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: uuid::Uuid::now_v7().to_string(),
            started: Instant::now(),
            route: None,
            claims: None,
            api_key: None,
            budget: None,
            in_flight: Vec::new(),
            rate_headers: None,
            price_plan: None,
            shadow: None,
            idempotency_key: None,
            keyed: None,
            charge: None,
            settling: None,
            deferred: None,
            upstream_status: None,
            outcome: None,
        }
    }

    /// Steps 1–3. Returns `Ok(true)` when the response (an error) is already written.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // A client that stalls mid-body must not hold its connection (and its upstream's)
        // open: each read of the body waits this long at most.
        session.set_read_timeout(Some(self.client_read_timeout));
        if let Err(problem) = steps::check_framing(session) {
            // The rest of this connection's bytes cannot be trusted: close it after this.
            session.set_keepalive(None);
            return refuse(session, ctx, &problem).await;
        }
        let route = match self.route(session) {
            Ok(route) => route,
            Err(problem) => return refuse(session, ctx, &problem).await,
        };
        if route.service.public {
            // Kept from here on: refusals below are counted under the service's metrics.
            ctx.route = Some(route);
            ctx.outcome = Some(Outcome::Forwarded);
            return Ok(false);
        }
        let checked = self
            .authenticate(session, &route.service.name)
            .await
            .and_then(|caller| Ok((caller, steps::idempotency_key(session)?)));
        let (caller, key) = match checked {
            Ok(checked) => checked,
            Err(problem) => {
                ctx.route = Some(route);
                return refuse(session, ctx, &problem).await;
            }
        };
        let steps::Authenticated {
            claims,
            key: api_key,
            threshold,
            plan,
            limits: tenant_limits,
        } = caller;
        let price = match self.price(session, &route, &claims.tenant_id, plan.as_deref()) {
            Ok(price) => price,
            Err(problem) => {
                ctx.route = Some(route);
                return refuse(session, ctx, &problem).await;
            }
        };
        let settled = route.endpoint().settle.clone();
        let cost = match &settled {
            Some(terms) => match self.reserve(
                session,
                &route,
                terms,
                &claims.tenant_id,
                plan.as_deref(),
                &price,
            ) {
                Ok(reserve) => i64::from(reserve),
                Err(problem) => {
                    ctx.route = Some(route);
                    return refuse(session, ctx, &problem).await;
                }
            },
            None => i64::from(price.credits),
        };
        ctx.shadow = self.shadow(session, &route, &claims.tenant_id, plan.as_deref());
        ctx.route = Some(route);
        ctx.price_plan = price.plan;
        let tenant_id = claims.tenant_id.as_str();
        let fingerprint = match (&key, &ctx.route) {
            (Some(_), Some(route)) => {
                let req = session.req_header();
                let target = req.uri.path_and_query().map_or("", |p| p.as_str());
                head_fingerprint(req.method.as_str(), &route.service.name, target)
            }
            _ => String::new(),
        };
        let budget = api_key.as_ref().and_then(|key| {
            let limit = key.budget?;
            Some((key.budget_counter(crate::store::now_ms()), limit))
        });
        let limiters = steps::limiters(&tenant_limits, api_key.as_deref());
        let charge = Charge {
            limits: &limiters,
            budget: budget.as_ref().map(|(counter, limit)| Budget {
                counter,
                limit: *limit,
            }),
            tenant_id,
            cost,
            charge_id: &ctx.request_id,
            idempotency: key.as_deref().map(|key| KeyClaim {
                key,
                fingerprint: &fingerprint,
            }),
            threshold,
            fresh: true,
        };
        let charged = match self.hydrator.charge(&charge).await {
            Ok(ChargeOutcome::Charged {
                balance,
                warnings,
                rate,
            }) => {
                alerts::announce(&*self.alerts, tenant_id, warnings, balance, threshold);
                ctx.in_flight = steps::in_flight_scopes(&limiters);
                ctx.rate_headers = rate.and_then(|state| {
                    let limiter = limiters.get(state.limiter)?;
                    let name = steps::scope_name(limiter.scope);
                    let policy = limiter.rate?;
                    Some(respond::rate_limit_headers(
                        name,
                        policy,
                        state.remaining,
                        state.reset_ms,
                    ))
                });
                if let Some(terms) = settled {
                    let mut settling =
                        settle::Settling::new(terms, cost, threshold, self.settle_body_max);
                    settling.budget = budget.as_ref().map(|(counter, _)| counter.clone());
                    ctx.settling = Some(Box::new(settling));
                }
                Charged::now(cost, balance).settling(ctx.settling.is_some())
            }
            Ok(ChargeOutcome::KeyTaken { balance }) => {
                let (tenant_id, key) = (tenant_id.to_owned(), key.unwrap_or_default());
                let request = (tenant_id.as_str(), key.as_str(), fingerprint.as_str());
                // Boxed: the rare path does not grow every call's future.
                return Box::pin(self.answer_retry(session, ctx, request, balance)).await;
            }
            // Not for a fresh request id; counted as pending like a charge, so treated as one.
            Ok(ChargeOutcome::AlreadyCharged { balance }) => {
                ctx.in_flight = steps::in_flight_scopes(&limiters);
                Charged::now(cost, balance)
            }
            Ok(ChargeOutcome::Limited {
                limiter,
                concurrency,
                retry_after_ms,
            }) => {
                let problem = match limiters.get(limiter) {
                    Some(which) => Problem::rate_limited(
                        steps::scope_name(which.scope),
                        which,
                        concurrency,
                        retry_after_ms,
                    ),
                    None => Problem::ledger_unavailable(),
                };
                return refuse(session, ctx, &problem).await;
            }
            Ok(ChargeOutcome::OverBudget { spent, .. }) => {
                let (key, limit) = match (&api_key, &budget) {
                    (Some(key), Some((_, limit))) => (key.id.as_str(), *limit),
                    _ => ("", 0),
                };
                let problem = Problem::over_budget(key, limit, spent, cost);
                return refuse(session, ctx, &problem).await;
            }
            Ok(ChargeOutcome::Insufficient { balance, warnings }) => {
                alerts::announce(&*self.alerts, tenant_id, warnings, balance, threshold);
                let problem = Problem::insufficient_credits(tenant_id, cost, balance);
                return refuse(session, ctx, &problem).await;
            }
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "ledger unavailable");
                match self.serve_on_credit(ctx.route.as_ref(), &charge) {
                    Some(reservation) => {
                        ctx.deferred = Some(reservation);
                        Charged::deferred(cost)
                    }
                    None => {
                        self.fail_closed(&charge);
                        return refuse(session, ctx, &Problem::ledger_unavailable()).await;
                    }
                }
            }
            // The ledger answered, but not for a fresh charge id: refuse as unavailable.
            Ok(ChargeOutcome::NoBalance | ChargeOutcome::Void) => {
                self.fail_closed(&charge);
                return refuse(session, ctx, &Problem::ledger_unavailable()).await;
            }
        };
        ctx.claims = Some(claims);
        ctx.api_key = api_key;
        ctx.budget = budget.map(|(counter, _)| counter);
        ctx.keyed = key.is_some().then(|| Box::new(Keyed::default()));
        ctx.idempotency_key = key;
        ctx.charge = Some(charged);
        ctx.outcome = Some(Outcome::Forwarded);
        if ctx.settling.is_some() {
            // The reserve is journaled to be settled after a crash: the charge it names
            // must be on disk first (docs/DESIGN.md §Settled prices).
            self.ledger.written().await;
            self.open_reserve(session, ctx);
        }
        Ok(false)
    }

    /// Step 4: the service's registered upstream, with its own timeouts.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in context"))?;
        let upstream = &route.service.upstream;
        let addr = upstream
            .addr
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream not resolved"))?;
        let mut peer = HttpPeer::new(addr, upstream.tls, upstream.host.clone());
        let timeouts = &route.service.timeouts;
        peer.options.connection_timeout = Some(Duration::from_millis(timeouts.connect_ms));
        peer.options.total_connection_timeout = Some(Duration::from_millis(timeouts.connect_ms));
        peer.options.read_timeout = Some(Duration::from_millis(timeouts.read_ms));
        peer.options.write_timeout = Some(Duration::from_millis(timeouts.write_ms));
        Ok(Box::new(peer))
    }

    /// Step 4: rewrite the path and the headers for the upstream.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "request not routed");
        };
        let uri = route
            .upstream_path
            .parse()
            .map_err(|e| Error::because(ErrorType::InternalError, "upstream path", e))?;
        upstream_request.set_uri(uri);
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        let identity = headers::Identity {
            // None on a public service: the upstream gets no identity (and none spoofed).
            user: ctx
                .claims
                .as_ref()
                .map(|c| (c.tenant_id.as_str(), c.sub.as_str())),
            request_id: &ctx.request_id,
            client_ip,
            authority: &route.service.upstream.authority,
        };
        if ctx.settling.as_ref().is_some_and(|s| s.reads_body()) {
            // The cost is read from the body as it passes: it must come uncompressed.
            upstream_request.remove_header(&http::header::ACCEPT_ENCODING);
        }
        headers::rewrite(upstream_request, &identity)
    }

    /// Step 4: the body streams to the upstream; a keyed call's digest is taken as it goes.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(keyed), Some(chunk)) = (&mut ctx.keyed, body.as_ref()) {
            keyed.request_chunk(chunk);
        }
        Ok(())
    }

    /// Step 5: the credits headers on the upstream's response.
    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if response.status.is_informational() {
            return Ok(());
        }
        let status = response.status.as_u16();
        ctx.upstream_status = Some(status);
        if let Some(keyed) = &mut ctx.keyed {
            let bodiless = session.req_header().method == http::Method::HEAD
                || matches!(status, 204 | 304)
                || response
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .is_some_and(|l| l.as_bytes() == b"0");
            keyed.response_header(response, bodiless);
        }
        if let Some(settling) = &mut ctx.settling {
            settling.response_header(response);
        }
        if crate::failpoint::hit("response_filter") {
            return Error::e_explain(ErrorType::InternalError, "failpoint response_filter");
        }
        if status >= 500 && ctx.route.as_ref().is_some_and(|r| r.service.refund_on_5xx) {
            self.refund(ctx).await;
        }
        if let Some(charged) = &ctx.charge {
            for (name, value) in charged.headers() {
                response.insert_header(name, value)?;
            }
        }
        if let Some(headers) = &ctx.rate_headers {
            for (name, value) in headers {
                response.insert_header(*name, value.as_str())?;
            }
        }
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    /// An error ended the request. Upstream not reached (no response header yet): refund
    /// and answer 502, or 504 on a timeout. Client-side errors keep Pingora's mapping
    /// (0 = the client is gone, nothing to write).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        let timed_out = matches!(e.etype(), ConnectTimedout | ReadTimedout | WriteTimedout);
        let code = match (e.esource(), e.etype()) {
            (_, HTTPStatus(code)) => *code,
            (ErrorSource::Downstream, WriteError | ReadError | ConnectionClosed) => 0,
            (ErrorSource::Downstream, ReadTimedout) => 408,
            (ErrorSource::Downstream, _) => 400,
            (ErrorSource::Upstream, _) if timed_out => 504,
            (ErrorSource::Upstream, _) => 502,
            _ if timed_out => 504,
            _ => 500,
        };
        // Not served: the client gets an error of the gateway's instead of the upstream's
        // answer (unreachable, timed out, a body that never came, or any internal error
        // after the charge), so it pays nothing. A client gone (0) is not refunded: the
        // upstream may have done the work.
        if code > 0 && session.response_written().is_none() {
            self.refund(ctx).await;
        }
        if code >= 500 {
            ctx.outcome = Some(Outcome::UpstreamError);
        } else if code >= 400 {
            ctx.outcome = Some(Outcome::BadRequest);
        }
        if code > 0 && session.response_written().is_none() {
            // Pingora closes the connection after a failed proxy: say so, or a client
            // would send its next request down a connection about to close.
            session.set_keepalive(None);
            let problem = Problem::for_proxy_error(code);
            let problem = match &ctx.charge {
                Some(c) => c
                    .headers()
                    .into_iter()
                    .fold(problem, |p, (name, value)| p.header(name, value)),
                None => problem,
            };
            if let Err(write_error) = problem.send(session, &ctx.request_id).await {
                tracing::debug!(error = %write_error, "could not write the error response");
            }
        }
        if code >= 500 {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "proxy error");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Step 5: the body streams to the client; a keyed call's response is taken as it goes.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(keyed) = &mut ctx.keyed {
            keyed.response_chunk(body.as_ref(), end_of_stream, self.max_kept_response);
        }
        if let Some(settling) = &mut ctx.settling {
            settling.body_chunk(body.as_ref(), end_of_stream);
            crate::failpoint::crash("settled_call_mid_body");
        }
        Ok(None)
    }

    /// Step 6: one usage event per charged call, handed off without waiting; a keyed
    /// call's response is kept with its key.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.keyed.is_some() {
            // Boxed, as `answer_retry`: only keyed calls pay for it.
            Box::pin(self.keep_response(ctx)).await;
        }
        if !ctx.in_flight.is_empty() {
            // Boxed too: only calls under a concurrency limit pay for it.
            Box::pin(self.release_places(ctx)).await;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        REQUEST_DURATION.observe(elapsed.as_secs_f64());
        let metrics = ctx
            .route
            .as_ref()
            .map_or(&*UNROUTED, |r| &r.service.metrics);
        if let Some(outcome) = ctx.outcome {
            metrics.request(outcome);
        }
        // A deferred charge is counted by the worker, once the ledger took it; a settled
        // one once it is settled.
        let settling = ctx.settling.take();
        if let Some(charged) = ctx
            .charge
            .as_ref()
            .filter(|c| !c.refunded && c.balance.is_some() && settling.is_none())
        {
            metrics.charged(charged.cost);
        }
        tracing::debug!(request_id = %ctx.request_id, status, latency_ms, path = %session.req_header().uri.path(), "request");
        let (Some(route), Some(claims), Some(charged)) = (&ctx.route, &ctx.claims, &ctx.charge)
        else {
            return;
        };
        let endpoint = route.endpoint();
        if let (Some(balance), true) = (charged.balance, charged.cost > 0 && !charged.refunded) {
            if self.alerts.wants_credit_success() && settling.is_none() {
                self.alerts.credit_success(CreditSuccess {
                    tenant_id: claims.tenant_id.clone(),
                    service: route.service.name.clone(),
                    endpoint: endpoint.path.clone(),
                    credits_used: charged.cost,
                    balance,
                    timestamp: alerts::rfc3339_now(),
                });
            }
        }
        let event = UsageEvent {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: claims.tenant_id.clone(),
            user_id: claims.sub.clone(),
            key_id: ctx.api_key.as_ref().map(|k| k.id.clone()),
            service: route.service.name.clone(),
            endpoint: endpoint.path.clone(),
            method: session.req_header().method.to_string(),
            credits_used: charged.cost,
            plan_id: ctx.price_plan.as_deref().map(str::to_owned),
            reserved: settling.as_ref().map(|s| s.reserved),
            shortfall: 0,
            shadow_credits: ctx.shadow,
            // A deferred charge's balance is filled in once the ledger took it.
            balance_after: charged.balance.unwrap_or(0),
            status,
            latency_ms,
            request_id: ctx.request_id.clone(),
            idempotency_key: ctx.idempotency_key.clone(),
            refunded: charged.refunded,
            timestamp_ms: crate::store::now_ms(),
        };
        if let Some(settling) = settling {
            if !charged.refunded {
                // Boxed, as `answer_retry`: only settled calls pay for it.
                let failed = e.is_some();
                Box::pin(self.settle(&settling, event, failed, metrics)).await;
                return;
            }
            // Refunded: nothing to settle.
            self.settles.close(&ctx.request_id);
        }
        match ctx.deferred.take() {
            Some(reservation) => reservation.finish(event),
            None => self.usage.record(event),
        }
    }
}
