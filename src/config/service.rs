//! The declarative shape of a metered service: its upstream, timeouts, options and the
//! priced endpoints that make up its routing table.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The `{service}` segment of `/api/proxy/{service}/...`.
    pub name: String,
    /// Base URL (`http://` or `https://`); its path prefixes every forwarded path.
    pub upstream: String,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Give the credits back when the upstream answers 5xx.
    #[serde(default)]
    pub refund_on_5xx: bool,
    /// What to do when the ledger cannot answer (docs/DESIGN.md §Request path).
    #[serde(default)]
    pub on_ledger_error: OnLedgerError,
    /// Free and open: no token, no charge, no usage log (public endpoints; also the load
    /// test's unmetered baseline).
    #[serde(default)]
    pub public: bool,
    /// Request headers a price expression may read, as `request.headers["name"]`
    /// (lower-case names); no other header is offered to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub price_headers: Vec<String>,
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLedgerError {
    /// Fail closed: 503 with `Retry-After`.
    #[default]
    Deny,
    /// Forward, and apply the charge once the ledger answers again (see
    /// [`crate::deferred`]); a tenant out of credits by then was served for free.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    pub connect_ms: u64,
    /// Longest wait for the upstream between reads (including the response header).
    pub read_ms: u64,
    pub write_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect_ms: 2_000,
            read_ms: 30_000,
            write_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// An HTTP method, or `ANY`.
    pub method: String,
    /// `/exact/path`, `/notes/{id}` segments, or a trailing `/*` prefix.
    pub path: String,
    /// The price (docs/DESIGN.md §Pricing); with `settle`, what is held when `reserve` is
    /// not given.
    pub credits: Credits,
    /// Held before forwarding when the cost is settled from the response; `credits` when
    /// absent. Needs `settle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<Credits>,
    /// Where the call's final cost is read from the upstream's answer (docs/DESIGN.md
    /// §Settled prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<SettleConfig>,
    /// A settled cost above the reserve: `cap` (charge the reserve) or `allow` (take the
    /// rest as far as the balance goes, the shortfall logged).
    #[serde(default, skip_serializing_if = "Overage::is_cap")]
    pub overage: Overage,
    /// A price evaluated and logged beside the charged one but never charged, to see what
    /// a change would bill before making it (docs/DESIGN.md §Pricing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_credits: Option<Credits>,
}

/// Where a settled endpoint's cost is read from the response: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SettleConfig {
    /// A response header holding a whole number of credits (`X-Usage-Credits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A CEL expression over `response.body` (the JSON body) and `response.status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    /// A CEL expression over `event`: the last server-sent `data:` event carrying a
    /// `usage` object (OpenAI's `stream_options.include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
}

/// What a settled cost above the reserve does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overage {
    /// The call costs the reserve at most.
    #[default]
    Cap,
    /// The rest is taken as far as the balance goes; what it could not cover is logged as
    /// the call's shortfall.
    Allow,
}

impl Overage {
    pub fn is_cap(&self) -> bool {
        *self == Overage::Cap
    }
}

/// An endpoint's price: a number of credits, or a CEL expression over the request that
/// comes to one (docs/DESIGN.md §Pricing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Credits {
    Fixed(u32),
    Expression(String),
}

impl From<u32> for Credits {
    fn from(credits: u32) -> Credits {
        Credits::Fixed(credits)
    }
}
