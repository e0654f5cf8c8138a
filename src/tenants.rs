//! The tenants the gateway knows: status (active or suspended) and the starting balance
//! used to hydrate a ledger that has none. Today they come from the config file; the
//! durable store will feed the same directory.

use crate::config::{TenantConfig, TenantStatus};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    /// Balance to seed the ledger with when it holds none for this tenant.
    pub initial_credits: i64,
}

#[derive(Debug, Default)]
pub struct TenantDirectory {
    tenants: HashMap<String, Tenant>,
}

impl TenantDirectory {
    pub fn new(configs: &[TenantConfig]) -> TenantDirectory {
        let tenants = configs
            .iter()
            .map(|t| {
                let tenant = Tenant {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    status: t.status.clone(),
                    initial_credits: t.credits,
                };
                (t.id.clone(), tenant)
            })
            .collect();
        TenantDirectory { tenants }
    }

    pub fn get(&self, id: &str) -> Option<&Tenant> {
        self.tenants.get(id)
    }
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
