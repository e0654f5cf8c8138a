//! Step 7 of the request path: real-time alerts over MQTT (docs/DESIGN.md §Alerts).
//!
//! The ledger decides *whether* to warn (atomically with the charge, see `charge.lua`); the
//! gateway hands the warning to an [`AlertSink`], which must return at once. The MQTT
//! [`publisher`] drains a bounded queue in the background: a broker that is down or slow
//! fills the queue, then further alerts are counted as dropped — never a delayed request.
//! Without `TOLLGATE_MQTT_URL`, an in-process [`broker`] serves the quickstart.

pub mod broker;
pub mod publisher;

pub use publisher::{AlertPublisher, Alerts, MqttTarget};

use crate::config::{AlertsConfig, ConfigError};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The balance crossed the tenant's low-credit threshold.
    Low,
    /// The balance reached 0, or a charge was refused for lack of credits.
    Exhausted,
}

/// `tenant/{tenant_id}/warning`, QoS 1, also stored in `notifications`.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    pub tenant_id: String,
    pub level: Level,
    pub balance: i64,
    pub threshold: i64,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

/// `tenant/{tenant_id}/credit-success`, QoS 0, per successful charge (sampled).
#[derive(Debug, Clone, Serialize)]
pub struct CreditSuccess {
    pub tenant_id: String,
    pub service: String,
    pub endpoint: String,
    pub credits_used: i64,
    pub balance: i64,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

/// Where the gateway hands alerts; every call must return at once.
pub trait AlertSink: Send + Sync + 'static {
    fn warning(&self, warning: Warning);

    /// Whether this charge gets a credit-success notice (sampling decides here, so the
    /// gateway builds a notice only when one is sent).
    fn wants_credit_success(&self) -> bool {
        false
    }

    fn credit_success(&self, _notice: CreditSuccess) {}
}

/// Alerts switched off (tests, benches).
pub struct NoAlerts;

impl AlertSink for NoAlerts {
    fn warning(&self, _warning: Warning) {}
}

/// Hands the warnings a ledger operation decided on (step 7) to `sink`.
pub fn announce(
    sink: &dyn AlertSink,
    tenant_id: &str,
    warnings: crate::ledger::Warnings,
    balance: i64,
    threshold: i64,
) {
    let levels = [
        (warnings.low, Level::Low),
        (warnings.exhausted, Level::Exhausted),
    ];
    for (_, level) in levels.into_iter().filter(|(fired, _)| *fired) {
        sink.warning(Warning {
            tenant_id: tenant_id.to_owned(),
            level,
            balance,
            threshold,
            timestamp: rfc3339_now(),
        });
    }
}

pub fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Checks the `alerts` section: a broker URL this module can reach or an address for
/// the embedded one, a sampling fraction, a queue.
pub fn check_config(alerts: &AlertsConfig) -> Result<(), ConfigError> {
    match &alerts.mqtt_url {
        Some(url) => {
            MqttTarget::parse(url).map_err(|m| ConfigError::invalid("alerts.mqtt_url", m))?;
        }
        None => {
            crate::config::parse_addr("alerts.embedded_listen", &alerts.embedded_listen)?;
        }
    }
    if !(0.0..=1.0).contains(&alerts.credit_success_sample) {
        return Err(ConfigError::invalid(
            "alerts.credit_success_sample",
            "a fraction from 0 to 1",
        ));
    }
    if alerts.queue_capacity == 0 {
        return Err(ConfigError::invalid(
            "alerts.queue_capacity",
            "must be above 0",
        ));
    }
    Ok(())
}
