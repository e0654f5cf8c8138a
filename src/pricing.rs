//! What a call costs (docs/DESIGN.md §Pricing): the endpoint's price, unless the tenant's
//! plan overrides it. A plan's `price_overrides` name an endpoint by service, method and
//! declared path; the catalog keeps them current with the plans and the tenants' plan
//! (set by a subscription), so a plan change reaches every replica within the catalog's
//! reload bound. The request path looks them up without allocating.

use crate::store::Doc;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// One endpoint's price on a plan, as a plan document stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceOverride {
    pub service: String,
    pub method: String,
    /// The endpoint's declared path (`/notes/{id}`), as the service lists it.
    pub path: String,
    pub credits: u32,
}

/// A plan's overrides, by service: (method, path, credits).
#[derive(Debug, Default)]
struct PlanOverrides {
    plan: Arc<str>,
    by_service: HashMap<String, Vec<(String, String, u32)>>,
}

/// Every plan's overrides, by plan id.
#[derive(Debug, Default)]
pub struct PlanPrices {
    plans: HashMap<String, PlanOverrides>,
}

/// What a call costs and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub credits: u32,
    /// The plan whose override applied; `None`: the service's own price.
    pub plan: Option<Arc<str>>,
}

impl PlanPrices {
    /// The overrides of the stored plan documents; a document without a readable
    /// `price_overrides` contributes none (and is logged: the admin API never writes one).
    pub fn from_docs(docs: &[Doc]) -> PlanPrices {
        #[derive(Deserialize)]
        struct Stored {
            id: String,
            #[serde(default)]
            price_overrides: Vec<PriceOverride>,
        }
        let mut plans = HashMap::new();
        for doc in docs {
            let stored: Stored = match serde_json::from_value(serde_json::Value::Object(
                doc.clone(),
            )) {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(error = %e, "stored plan's prices unreadable; its tenants pay the services' prices");
                    continue;
                }
            };
            let mut overrides = PlanOverrides {
                plan: Arc::from(stored.id.as_str()),
                by_service: HashMap::new(),
            };
            for o in stored.price_overrides {
                overrides.by_service.entry(o.service).or_default().push((
                    o.method.to_ascii_uppercase(),
                    o.path,
                    o.credits,
                ));
            }
            plans.insert(stored.id, overrides);
        }
        PlanPrices { plans }
    }

    /// The price of `service`'s endpoint `method path` (its declared pattern) for a tenant on
    /// `plan`, whose own price is `credits`.
    pub fn price(
        &self,
        plan: Option<&str>,
        service: &str,
        method: &str,
        path: &str,
        credits: u32,
    ) -> Price {
        let found = plan.and_then(|plan| self.plans.get(plan)).and_then(|p| {
            let (_, _, credits) = p
                .by_service
                .get(service)?
                .iter()
                .find(|(m, p, _)| m == method && p == path)?;
            Some(Price {
                credits: *credits,
                plan: Some(Arc::clone(&p.plan)),
            })
        });
        found.unwrap_or(Price {
            credits,
            plan: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(value: serde_json::Value) -> Doc {
        match value {
            serde_json::Value::Object(doc) => doc,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_plan_overrides_only_the_endpoints_it_names() {
        let prices = PlanPrices::from_docs(&[
            doc(serde_json::json!({
                "id": "pro", "name": "Pro", "monthly_credits": 10,
                "price_overrides": [
                    {"service": "notes", "method": "get", "path": "/notes/{id}", "credits": 1},
                    {"service": "notes", "method": "POST", "path": "/notes", "credits": 0},
                ],
            })),
            doc(serde_json::json!({"id": "free", "name": "Free"})),
            doc(serde_json::json!({"id": "broken", "price_overrides": "nope"})),
        ]);
        let pro = |method, path| prices.price(Some("pro"), "notes", method, path, 5);
        assert_eq!(pro("GET", "/notes/{id}").credits, 1);
        assert_eq!(pro("GET", "/notes/{id}").plan.as_deref(), Some("pro"));
        assert_eq!(pro("POST", "/notes").credits, 0, "free on this plan");
        assert_eq!(
            pro("DELETE", "/notes/{id}"),
            Price {
                credits: 5,
                plan: None
            }
        );
        assert_eq!(
            prices.price(Some("pro"), "other", "GET", "/notes/{id}", 5),
            Price {
                credits: 5,
                plan: None
            }
        );
        for plan in [None, Some("free"), Some("broken"), Some("gone")] {
            assert_eq!(
                prices.price(plan, "notes", "GET", "/notes/{id}", 5),
                Price {
                    credits: 5,
                    plan: None
                },
                "{plan:?}"
            );
        }
    }
}
