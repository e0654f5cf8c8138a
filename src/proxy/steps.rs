//! Steps 1–3 of the request path as the gateway's helpers, each turning its stage's
//! outcome into either what the next step needs or the [`Problem`] to answer with.

use super::{Gateway, Problem, RequestCtx};
use crate::auth::keys::{self, ApiKey};
use crate::auth::{AuthError, Claims};
use crate::config::OnLedgerError;
use crate::deferred::{DeferredCharge, Reservation};
use crate::ledger::{Charge, Limiter, PendingVoid, Void, VoidOutcome};
use crate::pricing::{Call, EndpointPrice, Price, PriceExpression};
use crate::routing::{RouteError, RouteMatch, Settled};
use crate::vocab::{Limits, TenantStatus};
use pingora::proxy::Session;
use std::sync::Arc;

/// The most request-header bytes accepted (names, values and separators): far above any
/// real client, far below what a memory-exhaustion attempt needs.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The longest request target accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Step 0: refuse a request whose size or framing a proxy must not guess at. Two parties
/// reading `Content-Length` and `Transfer-Encoding` differently is how a request is
/// smuggled past the charge, so anything ambiguous is refused and the connection closed.
pub(super) fn check_framing(session: &Session) -> std::result::Result<(), Box<Problem>> {
    let req = session.req_header();
    let uri = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Err(Box::new(Problem::new(
            414,
            "uri-too-long",
            "URI too long",
            format!("the request target must be at most {MAX_URI_BYTES} bytes"),
        )));
    }
    let bytes: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Box::new(Problem::new(
            431,
            "header-too-large",
            "Request header fields too large",
            format!("request headers must be at most {MAX_HEADER_BYTES} bytes in all"),
        )));
    }
    let bad = |why: &str| {
        Err(Box::new(
            Problem::new(400, "bad-framing", "Bad request framing", why)
                .header("connection", "close"),
        ))
    };
    let lengths: Vec<_> = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect();
    let codings: Vec<_> = req
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .collect();
    if !codings.is_empty() && !lengths.is_empty() {
        return bad("Content-Length and Transfer-Encoding together are refused");
    }
    if lengths.windows(2).any(|pair| pair[0] != pair[1]) {
        return bad("conflicting Content-Length headers");
    }
    let chunked_only = codings.len() <= 1
        && codings
            .iter()
            .all(|c| c.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if !chunked_only {
        return bad("the only transfer coding accepted is `chunked`");
    }
    Ok(())
}

/// What the ledger did for this request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Charged {
    /// Credits taken by this request (0 on an idempotent replay); when deferred, the
    /// credits it will be charged once the ledger answers.
    pub(super) cost: i64,
    /// The balance after the charge; unknown (`None`) while it is deferred.
    pub(super) balance: Option<i64>,
    pub(super) refunded: bool,
    /// `cost` is a reserve, settled at the call's end (docs/DESIGN.md §Settled prices).
    pub(super) reserve: bool,
}

impl Charged {
    pub(super) fn now(cost: i64, balance: i64) -> Charged {
        Charged {
            cost,
            balance: Some(balance),
            refunded: false,
            reserve: false,
        }
    }

    /// The charge is a reserve: its headers say so.
    pub(super) fn settling(self, reserve: bool) -> Charged {
        Charged { reserve, ..self }
    }

    /// Served on credit: `cost` is taken once the ledger answers (see [`crate::deferred`]).
    pub(super) fn deferred(cost: i64) -> Charged {
        Charged {
            cost,
            balance: None,
            refunded: false,
            reserve: false,
        }
    }

    /// Step 5's headers: what this call costs and what remains. A deferred charge has no
    /// balance to tell yet, and says so instead; a settled call's cost is decided after
    /// its body, so its header names the reserve held.
    pub(super) fn headers(&self) -> [(&'static str, String); 2] {
        let cost = if self.refunded { 0 } else { self.cost };
        let remaining = match self.balance {
            Some(balance) => ("x-credits-remaining", balance.to_string()),
            None => ("x-credits-deferred", "true".to_owned()),
        };
        let name = if self.reserve && !self.refunded {
            "x-credits-reserved"
        } else {
            "x-credits-cost"
        };
        [(name, cost.to_string()), remaining]
    }
}

/// Who is calling, as step 2 found them.
pub(super) struct Authenticated {
    pub claims: Arc<Claims>,
    /// The API key the call was made with, if it was.
    pub key: Option<Arc<ApiKey>>,
    /// The tenant's low-credit threshold.
    pub threshold: i64,
    /// The plan whose prices the tenant pays, if any (docs/DESIGN.md §Pricing).
    pub plan: Option<Arc<str>>,
    /// The tenant's rate and concurrency limits (docs/DESIGN.md §Limits).
    pub limits: Limits,
}

/// The limits a call must pass: the tenant's (scope `t`), then its API key's.
pub(super) fn limiters<'a>(tenant: &Limits, key: Option<&'a ApiKey>) -> Vec<Limiter<'a>> {
    let mut limiters = Vec::new();
    if !tenant.is_empty() {
        limiters.push(Limiter {
            scope: TENANT_SCOPE,
            rate: tenant.rate_limit,
            max_concurrent: tenant.max_concurrent,
        });
    }
    if let Some(key) = key.filter(|k| !k.limits.is_empty()) {
        limiters.push(Limiter {
            scope: &key.scope,
            rate: key.limits.rate_limit,
            max_concurrent: key.limits.max_concurrent,
        });
    }
    limiters
}

/// The tenant's own limits' scope in the ledger (an API key's is `k:<id>`).
pub(super) const TENANT_SCOPE: &str = "t";

/// The scopes of `limits` with a concurrency limit: where a charged call holds a place.
pub(super) fn in_flight_scopes(limits: &[Limiter<'_>]) -> Vec<String> {
    limits
        .iter()
        .filter(|l| l.max_concurrent.is_some())
        .map(|l| l.scope.to_owned())
        .collect()
}

/// A scope as the `429` problem and the `RateLimit` headers name it.
pub(super) fn scope_name(scope: &str) -> &'static str {
    if scope == TENANT_SCOPE {
        "tenant"
    } else {
        "key"
    }
}

impl Gateway {
    /// Step 1: resolve the route or explain why not.
    pub(super) fn route(&self, session: &Session) -> std::result::Result<RouteMatch, Box<Problem>> {
        let req = session.req_header();
        self.catalog
            .router()
            .route(req.method.as_str(), req.uri.path(), req.uri.query())
            .map_err(|e| {
                Box::new(match e {
                    RouteError::BadPath(why) => {
                        Problem::new(400, "bad-path", "Bad request path", why)
                    }
                    RouteError::NotFound(why) => Problem::new(404, "not-found", "Not found", why),
                })
            })
    }

    /// Step 2: verify the credential (a JWT, or an API key: docs/DESIGN.md §API keys) and
    /// the tenant it names; a key must also be allowed on `service`.
    pub(super) async fn authenticate(
        &self,
        session: &Session,
        service: &str,
    ) -> std::result::Result<Authenticated, Box<Problem>> {
        let headers = &session.req_header().headers;
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let api_key = match headers.get("x-api-key") {
            Some(value) => Some(value.as_bytes()),
            None => authorization
                .and_then(|value| value.strip_prefix(b"Bearer "))
                .filter(|token| keys::is_key(token)),
        };
        let (claims, key) = match api_key {
            Some(presented) => {
                let key = self.api_key(presented, service)?;
                (Arc::clone(&key.claims), Some(key))
            }
            None => (self.verify_token(authorization).await?, None),
        };
        let (threshold, plan, limits) = match self.catalog.tenants().get(&claims.tenant_id) {
            Some(t) if t.status == TenantStatus::Active => {
                (t.low_credit_threshold, t.plan.clone(), t.limits)
            }
            Some(_) => {
                return Err(Box::new(
                    Problem::new(
                        403,
                        "tenant-suspended",
                        "Forbidden",
                        "this tenant is suspended",
                    )
                    .with("tenant_id", claims.tenant_id.clone()),
                ))
            }
            None => {
                return Err(Box::new(
                    Problem::new(
                        403,
                        "unknown-tenant",
                        "Forbidden",
                        "this tenant is not registered",
                    )
                    .with("tenant_id", claims.tenant_id.clone()),
                ))
            }
        };
        Ok(Authenticated {
            claims,
            key,
            threshold,
            plan,
            limits,
        })
    }

    /// A JWT from `Authorization: Bearer`, not voided by a change of its user since.
    async fn verify_token(
        &self,
        authorization: Option<&[u8]>,
    ) -> std::result::Result<Arc<Claims>, Box<Problem>> {
        let verified = self.verifier.verify_header_refreshing(authorization).await;
        let claims = verified.map_err(|e| {
            let detail = match &e {
                AuthError::Missing => {
                    "missing credential: send `Authorization: Bearer <JWT or API key>` or `X-Api-Key`"
                        .to_owned()
                }
                AuthError::Malformed => "expected `Authorization: Bearer <JWT>`".to_owned(),
                AuthError::Invalid(why) => format!("invalid token: {why}"),
                AuthError::Key(_) => "invalid token".to_owned(),
                AuthError::UnknownKid => {
                    "invalid token: the identity provider publishes no key with this kid"
                        .to_owned()
                }
            };
            Box::new(Problem::unauthorized(detail))
        })?;
        // A user disabled, demoted or moved since the token was issued: it is void.
        let revoked = self.catalog.revoked();
        if !revoked.is_empty() {
            let issued = claims.issued_at_ms();
            if revoked
                .get(&claims.sub)
                .is_some_and(|after| issued < *after)
            {
                return Err(Box::new(Problem::unauthorized(
                    "this token predates a change of its user; log in again",
                )));
            }
        }
        Ok(claims)
    }

    /// An API key: well-formed (a typo fails its checksum, no lookup), known to the catalog
    /// (every accepted key's hash is in memory: an unknown key costs no store round trip),
    /// not expired, and allowed on `service`.
    fn api_key(
        &self,
        presented: &[u8],
        service: &str,
    ) -> std::result::Result<Arc<ApiKey>, Box<Problem>> {
        let refused = |detail: String| Box::new(Problem::unauthorized(detail));
        let presented = std::str::from_utf8(presented)
            .map_err(|_| refused(keys::KeyError::Malformed.to_string()))?;
        let hash = keys::parse(presented).map_err(|e| refused(e.to_string()))?;
        let known = self.catalog.keys();
        let key = known
            .get(&hash)
            .ok_or_else(|| refused("unknown, revoked or disabled API key".to_owned()))?;
        if key.expired(crate::store::now_ms()) {
            return Err(refused("this API key has expired".to_owned()));
        }
        if !key.allows(service) {
            return Err(Box::new(
                Problem::new(
                    403,
                    "key-not-allowed",
                    "Forbidden",
                    "this API key may not call this service",
                )
                .with("service", service.to_owned())
                .with("key_id", key.id.clone()),
            ));
        }
        Ok(Arc::clone(key))
    }

    /// Step 3's price: the tenant's plan's for this endpoint, else the endpoint's own,
    /// evaluated on the call when it is an expression (docs/DESIGN.md §Pricing).
    pub(super) fn price(
        &self,
        session: &Session,
        route: &RouteMatch,
        tenant: &str,
        plan: Option<&str>,
    ) -> std::result::Result<Price, Box<Problem>> {
        let endpoint = route.endpoint();
        let service = &route.service.name;
        let prices = self.catalog.prices();
        if let Some(price) = prices.override_for(plan, service, &endpoint.method, &endpoint.path) {
            return Ok(price);
        }
        match &endpoint.credits {
            EndpointPrice::Fixed(credits) => Ok(Price {
                credits: *credits,
                plan: None,
            }),
            EndpointPrice::Expression(expression) => {
                let credits = evaluate(session, route, expression, tenant, plan)?;
                Ok(Price {
                    credits,
                    plan: None,
                })
            }
        }
    }

    /// The endpoint's shadow price for this call, if it has one and it can be computed
    /// (a shadow price never refuses a call).
    pub(super) fn shadow(
        &self,
        session: &Session,
        route: &RouteMatch,
        tenant: &str,
        plan: Option<&str>,
    ) -> Option<i64> {
        match route.endpoint().shadow.as_ref()? {
            EndpointPrice::Fixed(credits) => Some(i64::from(*credits)),
            EndpointPrice::Expression(expression) => {
                evaluate(session, route, expression, tenant, plan)
                    .map(i64::from)
                    .ok()
            }
        }
    }

    /// Step 3's reserve for a settled endpoint: its own `reserve`, else its price.
    pub(super) fn reserve(
        &self,
        session: &Session,
        route: &RouteMatch,
        terms: &Settled,
        tenant: &str,
        plan: Option<&str>,
        price: &Price,
    ) -> std::result::Result<u32, Box<Problem>> {
        match &terms.reserve {
            None => Ok(price.credits),
            Some(EndpointPrice::Fixed(credits)) => Ok(*credits),
            Some(EndpointPrice::Expression(expression)) => {
                evaluate(session, route, expression, tenant, plan)
            }
        }
    }

    /// Step 3 when the ledger did not answer: a service with `on_ledger_error: allow` is
    /// served on credit, its charge queued for the deferred worker, which takes it by this
    /// id (finding it if the timed-out try landed after all) as soon as the ledger answers.
    /// `None`: the call fails closed (`deny`, the queue is full, or the call carries an
    /// `Idempotency-Key`: only the ledger can tell whether the key was used, so such a call
    /// is never served on credit).
    pub(super) fn serve_on_credit(
        &self,
        route: Option<&RouteMatch>,
        charge: &Charge<'_>,
    ) -> Option<Reservation> {
        let route = route.filter(|r| r.service.on_ledger_error == OnLedgerError::Allow)?;
        // Only the ledger can tell whether a key was used, a budget has room or a limit
        // lets the call through.
        if charge.idempotency.is_some() || charge.budget.is_some() || !charge.limits.is_empty() {
            return None;
        }
        let reservation = self.deferred.defer(DeferredCharge {
            service: route.service.name.clone(),
            tenant_id: charge.tenant_id.to_owned(),
            cost: charge.cost,
            charge_id: charge.charge_id.to_owned(),
            threshold: charge.threshold,
            charged_at_ms: crate::store::now_ms(),
            refund_since_ms: None,
            taken_balance: None,
        });
        if reservation.is_none() {
            tracing::warn!(request_id = %charge.charge_id, "deferred charges queue full: failing closed");
        }
        reservation
    }

    /// The call is refused (`503`) for want of a ledger answer; the charge may still land
    /// (a stalled Redis resuming), so its id is queued to be voided.
    pub(super) fn fail_closed(&self, charge: &Charge<'_>) {
        self.voids.push(PendingVoid {
            tenant_id: charge.tenant_id.to_owned(),
            charge_id: charge.charge_id.to_owned(),
            idempotency_key: charge.idempotency.map(|c| c.key.to_owned()),
            applied_cost: None,
            cost: charge.cost,
            since_ms: crate::store::now_ms(),
            budget: charge.budget.map(|b| b.counter.to_owned()),
            in_flight: in_flight_scopes(charge.limits),
        });
    }

    /// The call's places under concurrency limits, given back as it ends; one the ledger
    /// does not take back lapses on its own (`IN_FLIGHT_LEASE`).
    pub(super) async fn release_places(&self, ctx: &mut RequestCtx) {
        let (Some(claims), scopes) = (&ctx.claims, std::mem::take(&mut ctx.in_flight)) else {
            return;
        };
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let release = crate::ledger::Release {
            tenant_id: &claims.tenant_id,
            charge_id: &ctx.request_id,
            scopes: &scopes,
        };
        if let Err(e) = self.ledger.release(&release).await {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "places in flight not given back: they lapse on their own");
        }
    }

    /// Gives this request's credits back (upstream unreachable, or 5xx when configured).
    pub(super) async fn refund(&self, ctx: &mut RequestCtx) {
        let (Some(claims), Some(charged)) = (&ctx.claims, &mut ctx.charge) else {
            return;
        };
        // A free call has nothing to give back, unless it claimed a key to release.
        if charged.refunded || (charged.cost == 0 && ctx.keyed.is_none()) {
            return;
        }
        charged.refunded = true;
        if charged.balance.is_none() {
            // Deferred: the worker gives back whatever it takes for this call.
            return;
        }
        self.usage.refunded(&claims.tenant_id, charged.cost);
        let void = Void {
            tenant_id: &claims.tenant_id,
            charge_id: &ctx.request_id,
            idempotency_key: ctx.idempotency_key.as_deref(),
            applied_cost: Some(charged.cost),
            budget: ctx.budget.as_deref(),
        };
        match self.ledger.void(&void).await {
            Ok(VoidOutcome::Refunded { balance }) => charged.balance = Some(balance),
            Ok(VoidOutcome::NoBalance) => {
                tracing::warn!(request_id = %ctx.request_id, tenant_id = %claims.tenant_id, cost = charged.cost, "refund found no balance in the ledger (lost since the charge): the balance will be hydrated from the store, which this call never reaches");
            }
            Ok(VoidOutcome::NotApplied | VoidOutcome::AlreadyVoided) => {}
            // X-Credits-Remaining keeps the balance the ledger last told: the refund has
            // not happened yet, so a restored balance would be a promise, not a fact.
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "refund deferred: ledger unavailable");
                self.voids.push(PendingVoid {
                    tenant_id: claims.tenant_id.clone(),
                    charge_id: ctx.request_id.clone(),
                    idempotency_key: ctx.idempotency_key.clone(),
                    applied_cost: Some(charged.cost),
                    cost: charged.cost,
                    since_ms: crate::store::now_ms(),
                    budget: ctx.budget.clone(),
                    in_flight: Vec::new(),
                });
            }
        }
    }
}

/// An expression's credits for this call, or the `400` that says why there are none.
fn evaluate(
    session: &Session,
    route: &RouteMatch,
    expression: &PriceExpression,
    tenant: &str,
    plan: Option<&str>,
) -> std::result::Result<u32, Box<Problem>> {
    let endpoint = route.endpoint();
    let service = &route.service.name;
    let req = session.req_header();
    let full = req.uri.path();
    // Only the service's `price_headers` (each, `""` when absent or not text), and only
    // when it has some: no work otherwise.
    let headers: Vec<(&str, &str)> = route
        .service
        .price_headers
        .iter()
        .map(|name| {
            let value = req.headers.get(name).and_then(|v| v.to_str().ok());
            (name.as_str(), value.unwrap_or(""))
        })
        .collect();
    let call = Call {
        method: req.method.as_str(),
        path: full
            .strip_prefix(crate::routing::PROXY_PREFIX)
            .and_then(|p| p.strip_prefix(service.as_str()))
            .unwrap_or(full),
        pattern: &endpoint.path,
        query: req.uri.query(),
        size: req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok()),
        tenant,
        plan,
        headers: &headers,
    };
    expression.evaluate(&call).map_err(|why| {
        Box::new(
            Problem::new(
                400,
                "price-not-computed",
                "Bad request",
                format!("this call's price could not be computed: {why}"),
            )
            .with("service", service.clone())
            .with("endpoint", endpoint.path.clone())
            .with("price", expression.source().to_owned()),
        )
    })
}

pub(super) fn idempotency_key(
    session: &Session,
) -> std::result::Result<Option<String>, Box<Problem>> {
    let Some(value) = session.req_header().headers.get("idempotency-key") else {
        return Ok(None);
    };
    match crate::idempotency::parse_key(value.as_bytes()) {
        Ok(key) => Ok(Some(key.to_owned())),
        Err(why) => Err(Box::new(
            Problem::new(
                400,
                "bad-idempotency-key",
                "Bad Idempotency-Key header",
                why,
            )
            .with("header", "Idempotency-Key"),
        )),
    }
}
