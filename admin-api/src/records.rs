//! The control plane's documents as it stores them (docs/DESIGN.md §Data model): users,
//! plans, subscriptions, and their conversion to and from the store's JSON documents. No
//! HTTP here: the handlers, billing and the scheduler read and write these shapes alike.

use serde::{Deserialize, Serialize};
use tollgate::auth::Role;
use tollgate::store::{Doc, Documents, Kind, StoreError};
use utoipa::ToSchema;

pub fn to_doc<T: Serialize>(value: &T) -> Doc {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(doc)) => doc,
        _ => Doc::new(),
    }
}

/// A stored document as `T`; one that does not parse is bad stored data.
pub fn from_doc<T: for<'de> Deserialize<'de>>(doc: Doc) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::Object(doc))
        .map_err(|e| StoreError::Data(format!("a stored document does not parse: {e}")))
}

/// A user as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDoc {
    pub id: String,
    /// Lower-cased: unique without regard to case.
    pub email: String,
    pub password_hash: String,
    pub tenant_id: String,
    pub role: Role,
    #[serde(default)]
    pub disabled: bool,
    pub created_at_ms: i64,
    #[serde(default)]
    pub last_login_at_ms: Option<i64>,
    /// Unix ms of the last change of role, tenant or disabled flag: tokens issued before
    /// it no longer speak for the user (even once the change is undone).
    #[serde(default)]
    pub tokens_valid_after_ms: Option<u64>,
}

impl UserDoc {
    pub fn to_doc(&self) -> Doc {
        to_doc(self)
    }

    pub fn from_doc(doc: Doc) -> Result<UserDoc, StoreError> {
        from_doc(doc)
    }
}

/// The stored user `id`, if there is one.
pub async fn user(docs: &dyn Documents, id: &str) -> Result<Option<UserDoc>, StoreError> {
    docs.doc(Kind::Users, id).await?.map(from_doc).transpose()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    pub(crate) service: String,
    pub(crate) method: String,
    pub(crate) path: String,
    #[schema(maximum = 1_000_000)]
    pub(crate) credits: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub(crate) id: String,
    pub(crate) name: String,
    /// Credits granted each period.
    pub(crate) monthly_credits: i64,
    /// Day of the month (1–28) the scheduler refills on.
    pub(crate) refill_day: u32,
    /// Per-endpoint prices for this plan's tenants, charged instead of the service's
    /// (docs/DESIGN.md §Pricing).
    pub(crate) price_overrides: Vec<PriceOverride>,
    /// The plan's tenants' rate limit, unless a tenant sets its own (docs/DESIGN.md §Limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate_limit: Option<RateLimitBody>,
    /// The plan's tenants' most calls in flight, unless a tenant sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub(crate) max_concurrent: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionStatus {
    Active,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) plan_id: String,
    pub(crate) status: SubscriptionStatus,
    pub(crate) current_period_start: String,
    pub(crate) current_period_end: String,
    pub(crate) created_at: String,
    /// The last period (`YYYY-MM`) whose credits were granted: refills happen once each.
    #[serde(default)]
    pub(crate) last_refill_period: Option<String>,
}

/// `requests_per_second` sustained, up to `burst` at once (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    #[schema(minimum = 1, maximum = 1_000_000)]
    requests_per_second: u32,
    #[schema(minimum = 1, maximum = 1_000_000)]
    burst: u32,
}

impl From<RateLimitBody> for tollgate::vocab::RateLimit {
    fn from(r: RateLimitBody) -> Self {
        tollgate::vocab::RateLimit {
            requests_per_second: r.requests_per_second,
            burst: r.burst,
        }
    }
}

impl From<tollgate::vocab::RateLimit> for RateLimitBody {
    fn from(r: tollgate::vocab::RateLimit) -> Self {
        RateLimitBody {
            requests_per_second: r.requests_per_second,
            burst: r.burst,
        }
    }
}
