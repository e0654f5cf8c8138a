//! `TOLLGATE_*` environment overrides, applied on top of the file. The lookup is a
//! parameter so tests can supply an environment without touching the process's own.

use super::{Config, ConfigError};
use std::path::PathBuf;

impl Config {
    /// Applies every `TOLLGATE_*` override that `lookup` returns. An empty value counts as
    /// unset, so `TOLLGATE_REDIS_URL=` switches back to the embedded ledger.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        if let Some(v) = get("TOLLGATE_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("TOLLGATE_ADMIN_LISTEN") {
            self.admin_listen = v;
        }
        if let Some(v) = get("TOLLGATE_METRICS_LISTEN") {
            self.metrics_listen = v;
        }
        if let Some(v) = get("TOLLGATE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("TOLLGATE_JWT_SECRET") {
            self.auth.secret = v;
        }
        if let Some(v) = lookup("TOLLGATE_REDIS_URL") {
            self.ledger.redis_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = lookup("TOLLGATE_REDIS_CLUSTER_NODES") {
            self.ledger.redis_cluster_nodes = v
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = lookup("TOLLGATE_MONGODB_URI") {
            self.store.mongodb_uri = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = get("TOLLGATE_MONGODB_DB") {
            self.store.mongodb_db = v;
        }
        if let Some(v) = get("TOLLGATE_MQTT_EMBEDDED_LISTEN") {
            self.alerts.embedded_listen = v;
        }
        if let Some(v) = get("TOLLGATE_SUMMARY_INTERVAL_SECS") {
            self.scheduler.interval_secs = v.parse().map_err(|_| {
                ConfigError::invalid("TOLLGATE_SUMMARY_INTERVAL_SECS", "a number of seconds")
            })?;
        }
        if let Some(v) = lookup("TOLLGATE_MQTT_URL") {
            self.alerts.mqtt_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = get("TOLLGATE_THREADS") {
            self.threads = v.parse().map_err(|_| {
                ConfigError::invalid("TOLLGATE_THREADS", format!("`{v}` is not a number"))
            })?;
        }
        Ok(())
    }
}
