//! Steps 1–3 of the request path as the gateway's helpers, each turning its stage's
//! outcome into either what the next step needs or the [`Problem`] to answer with.

use super::{Gateway, Problem, RequestCtx, MAX_IDEMPOTENCY_KEY_BYTES};
use crate::auth::{AuthError, Claims};
use crate::config::TenantStatus;
use crate::ledger::{Charge, ChargeOutcome, LedgerError, PendingVoid, Void, VoidOutcome};
use crate::metrics::LEDGER_DURATION;
use crate::routing::{RouteError, RouteMatch};
use crate::tenants::Tenant;
use pingora::proxy::Session;
use std::time::Duration;

/// Longest hydration waits for the usage flusher to finish the batch it is writing (one
/// batch write; longer means the store is struggling, and the request gets a 503).
const HYDRATION_WAIT: Duration = Duration::from_secs(2);

impl Gateway {
    /// Step 1: resolve the route or explain why not.
    pub(super) fn route(&self, session: &Session) -> std::result::Result<RouteMatch, Box<Problem>> {
        let req = session.req_header();
        self.router
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

    /// Step 2: verify the token and the tenant it names.
    pub(super) fn authenticate(
        &self,
        session: &Session,
    ) -> std::result::Result<(Claims, &Tenant), Box<Problem>> {
        let header = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION);
        let claims = self
            .verifier
            .verify_header(header.map(|v| v.as_bytes()))
            .map_err(|e| {
                let detail = match &e {
                    AuthError::Missing => "missing bearer token".to_owned(),
                    AuthError::Malformed => "expected `Authorization: Bearer <JWT>`".to_owned(),
                    AuthError::Invalid(why) => format!("invalid token: {why}"),
                    AuthError::Key(_) => "invalid token".to_owned(),
                };
                Box::new(
                    Problem::new(401, "unauthorized", "Unauthorized", detail)
                        .header("www-authenticate", "Bearer error=\"invalid_token\""),
                )
            })?;
        let tenant = match self.tenants.get(&claims.tenant_id) {
            Some(t) if t.status == TenantStatus::Active => t,
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
        Ok((claims, tenant))
    }

    /// Step 3: charge once. A ledger without a balance for the tenant (Redis restarted
    /// empty, a new replica) is hydrated from the durable balance minus what this gateway
    /// has charged but not yet written to the store; set-if-absent, so racing replicas agree.
    pub(super) async fn charge(
        &self,
        charge: &Charge<'_>,
        tenant: &Tenant,
    ) -> std::result::Result<ChargeOutcome, LedgerError> {
        // Counted in flight until its credits are counted as pending (see `inflight`).
        let ticket = self.inflight.enter();
        let timer = LEDGER_DURATION.start_timer();
        let result = self.ledger.charge(charge).await;
        timer.observe_duration();
        let outcome = match result? {
            ChargeOutcome::NoBalance => {
                drop(ticket);
                let balance = self.hydration_balance(tenant).await?;
                self.ledger.seed(&tenant.id, balance.max(0)).await?;
                let _ticket = self.inflight.enter();
                let outcome = self.ledger.charge(charge).await?;
                self.count_pending(charge, outcome);
                return Ok(outcome);
            }
            outcome => outcome,
        };
        self.count_pending(charge, outcome);
        Ok(outcome)
    }

    fn count_pending(&self, charge: &Charge<'_>, outcome: ChargeOutcome) {
        if let ChargeOutcome::Charged { .. } = outcome {
            self.usage.charged(charge.tenant_id, charge.cost);
        }
    }

    /// The durable balance minus this gateway's pending credits, read as a consistent pair
    /// (a batch settling between the two reads would count twice or not at all).
    async fn hydration_balance(&self, tenant: &Tenant) -> std::result::Result<i64, LedgerError> {
        if !self.inflight.quiesce(self.ledger_timeout).await {
            tracing::warn!(tenant_id = %tenant.id, "hydrating while charges are still in flight: reconciliation may report them");
        }
        let lock = self.usage.settle_lock();
        let _settled = match &lock {
            Some(lock) => Some(
                tokio::time::timeout(HYDRATION_WAIT, lock.lock())
                    .await
                    .map_err(|_| {
                        LedgerError::Hydration("the usage pipeline is busy writing".into())
                    })?,
            ),
            None => None,
        };
        let pending = self.usage.pending_credits(&tenant.id);
        let durable = match self.store.tenant(&tenant.id).await {
            Ok(Some(record)) => record.balance,
            Ok(None) => tenant.initial_credits,
            Err(e) => return Err(LedgerError::Hydration(e.to_string())),
        };
        tracing::info!(tenant_id = %tenant.id, durable, pending, "hydrating the ledger");
        Ok(durable - pending)
    }

    /// Gives this request's credits back (upstream unreachable, or 5xx when configured).
    pub(super) async fn refund(&self, ctx: &mut RequestCtx) {
        let (Some(claims), Some(charged)) = (&ctx.claims, &mut ctx.charge) else {
            return;
        };
        if charged.cost == 0 || charged.refunded {
            return;
        }
        charged.refunded = true;
        self.usage.refunded(&claims.tenant_id, charged.cost);
        let void = Void {
            tenant_id: &claims.tenant_id,
            charge_id: &ctx.request_id,
            idempotency_key: ctx.idempotency_key.as_deref(),
            applied_cost: Some(charged.cost),
        };
        match self.ledger.void(&void).await {
            Ok(VoidOutcome::Refunded { balance }) => charged.balance = balance,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "refund deferred: ledger unavailable");
                charged.balance += charged.cost;
                self.voids.push(PendingVoid {
                    tenant_id: claims.tenant_id.clone(),
                    charge_id: ctx.request_id.clone(),
                    idempotency_key: ctx.idempotency_key.clone(),
                    applied_cost: Some(charged.cost),
                });
            }
        }
    }
}

pub(super) fn idempotency_key(
    session: &Session,
) -> std::result::Result<Option<String>, Box<Problem>> {
    let Some(value) = session.req_header().headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(Box::new(
            Problem::new(
                400,
                "bad-idempotency-key",
                "Bad Idempotency-Key header",
                format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
            ),
            )
            .with("header", "Idempotency-Key"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}
