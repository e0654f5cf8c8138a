//! The tenants the gateway knows and their status (active or suspended), as the store
//! holds them; [`crate::catalog`] keeps the directory current.

use crate::config::TenantConfig;
use crate::store::TenantRecord;
use crate::vocab::{Limits, TenantStatus, DEFAULT_LOW_CREDIT_THRESHOLD};
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
    /// Its rate and concurrency limits: its own, else its plan's (docs/DESIGN.md §Limits).
    pub limits: Limits,
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
                    limits: Limits::default(),
                };
                (t.id.clone(), tenant)
            })
            .collect();
        TenantDirectory { tenants }
    }

    /// The stored tenants, each with its limits resolved against its plan's (`plans`: plan
    /// id → the limits the plan sets).
    pub fn from_records(
        records: &[TenantRecord],
        plans: &HashMap<String, Limits>,
    ) -> TenantDirectory {
        let tenants = records
            .iter()
            .map(|t| {
                let plan = t.plan_id.as_ref().and_then(|p| plans.get(p));
                let tenant = Tenant {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    status: t.status.clone(),
                    low_credit_threshold: t.low_credit_threshold,
                    plan: t.plan_id.as_deref().map(Arc::from),
                    limits: t.limits.or(plan.copied().unwrap_or_default()),
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
