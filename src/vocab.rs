//! The shared vocabulary: the words every layer uses (tenant status and ids, service
//! names, the usage event, outcome labels), defined once and importing nothing of this
//! crate, so that no two modules need each other to speak of them (docs/DESIGN.md §Layering).

use serde::{Deserialize, Serialize};

// ---- tenants ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// Tenant ids become parts of ledger keys (`tg:{id}:...`, a Redis Cluster hash tag), so
/// they keep to a small alphabet without braces or separators.
pub fn is_valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Default `low_credit_threshold` of a new tenant (docs/DESIGN.md §Data model).
pub const DEFAULT_LOW_CREDIT_THRESHOLD: i64 = 100;

// ---- services ----

/// The most one call may cost.
pub const MAX_ENDPOINT_CREDITS: u32 = 1_000_000;

/// Service names appear in URLs and metric labels: keep them to a safe alphabet.
pub fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != ".."
}

// ---- limits ----

/// A request-rate limit (docs/DESIGN.md §Limits): `requests_per_second` sustained, up to
/// `burst` at once (GCRA: a call may come `1 / requests_per_second` after the last, or up
/// to `burst` at a time after a quiet spell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// The highest `requests_per_second`, `burst` and `max_concurrent` accepted.
pub const MAX_LIMIT: u32 = 1_000_000;

impl RateLimit {
    /// Both within `1..=MAX_LIMIT`.
    pub fn check(&self) -> Result<(), &'static str> {
        if !(1..=MAX_LIMIT).contains(&self.requests_per_second) {
            return Err("requests_per_second: 1 to 1000000");
        }
        if !(1..=MAX_LIMIT).contains(&self.burst) {
            return Err("burst: 1 to 1000000");
        }
        Ok(())
    }
}

/// The limits a tenant's plan, the tenant itself or an API key sets; each absent one is
/// no limit (a tenant's own override its plan's, one by one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Calls in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

impl Limits {
    /// Each limit of `self`, or else `fallback`'s.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            rate_limit: self.rate_limit.or(fallback.rate_limit),
            max_concurrent: self.max_concurrent.or(fallback.max_concurrent),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rate_limit.is_none() && self.max_concurrent.is_none()
    }
}

// ---- usage ----

/// The usage log document of docs/DESIGN.md §Data model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// A UUIDv7 made at the gateway, so a retried batch cannot duplicate a log.
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    /// The API key the call was made with (docs/DESIGN.md §API keys); `None`: a JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub service: String,
    /// The endpoint's declared pattern (`/notes/{id}`), what bills group by.
    pub endpoint: String,
    pub method: String,
    pub credits_used: i64,
    /// The plan whose price the call paid (docs/DESIGN.md §Pricing); `None`: the
    /// endpoint's own price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// A settled call's reserve (docs/DESIGN.md §Settled prices): what was held before it
    /// was forwarded; `credits_used` is what it cost in the end. `None`: not settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<i64>,
    /// What a settled call cost beyond what the balance could cover (`overage: allow`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shortfall: i64,
    /// What the endpoint's `shadow_credits` would have charged (docs/DESIGN.md §Pricing);
    /// `None`: no shadow price, or it could not be computed for this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_credits: Option<i64>,
    pub balance_after: i64,
    /// Status sent to the client (0 if the client went away first).
    pub status: u16,
    pub latency_ms: f64,
    pub request_id: String,
    pub idempotency_key: Option<String>,
    pub refunded: bool,
    /// When the call ended, unix ms (a BSON date in MongoDB).
    pub timestamp_ms: i64,
}

/// `settle_body_max_bytes`' default: the largest body a settled call's cost is read from.
pub const DEFAULT_SETTLE_BODY_MAX: usize = 1024 * 1024;

fn is_zero(n: &i64) -> bool {
    *n == 0
}

// ---- outcome labels ----

/// How a deferred call's charge ended (the `outcome` label of
/// `tollgate_deferred_charges_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The cost was taken (by the worker, or by the first try whose answer was lost).
    Charged,
    /// The tenant no longer had the credits: served for free.
    Uncollected,
    /// The upstream failed the call: nothing owed, anything taken given back.
    Voided,
    /// Given up: the ledger did not answer before the charge's record expired (reported
    /// by reconciliation as unresolved).
    Lost,
}

impl Settled {
    pub const ALL: [Settled; 4] = [
        Settled::Charged,
        Settled::Uncollected,
        Settled::Voided,
        Settled::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Charged => "charged",
            Settled::Uncollected => "uncollected",
            Settled::Voided => "voided",
            Settled::Lost => "lost",
        }
    }
}
