//! The tenants the gateway knows and their status (active or suspended), as the store
//! holds them; [`crate::catalog`] keeps the directory current.

use crate::config::TenantConfig;
use crate::store::TenantRecord;
use crate::vocab::{TenantStatus, DEFAULT_LOW_CREDIT_THRESHOLD};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub low_credit_threshold: i64,
    /// The plan whose prices the tenant pays (docs/DESIGN.md §Pricing), if any.
    pub plan: Option<Arc<str>>,
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
                    low_credit_threshold: DEFAULT_LOW_CREDIT_THRESHOLD,
                    plan: None,
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
                    plan: t.plan_id.as_deref().map(Arc::from),
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
