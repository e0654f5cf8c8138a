//! The tenants the gateway knows and their status (active or suspended), as the store
//! holds them; [`crate::catalog`] keeps the directory current.

use crate::config::{TenantConfig, TenantStatus};
use crate::store::TenantRecord;
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub low_credit_threshold: i64,
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
                    low_credit_threshold: crate::store::DEFAULT_LOW_CREDIT_THRESHOLD,
                };
                (t.id.clone(), tenant)
            })
            .collect();
        TenantDirectory { tenants }
    }

    pub fn from_records(records: &[TenantRecord]) -> TenantDirectory {
        let tenants = records
            .iter()
            .map(|t| {
                let tenant = Tenant {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    status: t.status.clone(),
                    low_credit_threshold: t.low_credit_threshold,
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
