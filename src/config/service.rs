//! The declarative shape of a metered service: its upstream, timeouts, options and the
//! priced endpoints that make up its routing table.

use super::ConfigError;
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
    pub credits: u32,
}

impl ServiceConfig {
    /// Checks the service as the config loader and the admin API accept it; errors name
    /// the key below `key`.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !is_valid_service_name(&self.name) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                "1 to 64 characters of a-z A-Z 0-9 _ . -",
            ));
        }
        crate::routing::Upstream::parse(&self.upstream)
            .map_err(|msg| ConfigError::invalid(format!("{key}.upstream"), msg))?;
        let t = &self.timeouts;
        for (name, value) in [
            ("connect_ms", t.connect_ms),
            ("read_ms", t.read_ms),
            ("write_ms", t.write_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(
                    format!("{key}.timeouts.{name}"),
                    "must be above 0",
                ));
            }
        }
        if self.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.endpoints"),
                "a service needs at least one endpoint",
            ));
        }
        let mut table = crate::routing::EndpointTable::default();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if endpoint.credits > MAX_ENDPOINT_CREDITS {
                return Err(ConfigError::invalid(
                    format!("{key}.endpoints[{i}].credits"),
                    format!("at most {MAX_ENDPOINT_CREDITS}"),
                ));
            }
            table
                .insert(&endpoint.method, &endpoint.path, i)
                .map_err(|msg| ConfigError::invalid(format!("{key}.endpoints[{i}]"), msg))?;
        }
        Ok(())
    }
}

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
