//! Step 6 of the request path: one usage event per charged call, handed to a
//! [`UsageSink`] from Pingora's logging phase. The sink never blocks the request: the
//! [`UsagePipeline`] queues the event for batched writes to the store (docs/DESIGN.md §Usage pipeline and journal).

mod journal;
mod pipeline;
mod seq;

pub use pipeline::{journaled_credits, Flusher, UsagePipeline, UsageSettings};

use crate::vocab::UsageEvent;

pub trait UsageSink: Send + Sync + 'static {
    /// Takes the event; must return at once (docs/DESIGN.md §Usage pipeline and journal: never awaited on the request path).
    fn record(&self, event: UsageEvent);

    /// The ledger just took `credits` from the tenant: they are pending until the event
    /// that carries them reaches the store. Counting from the charge (not from the event,
    /// which comes at the end of the request) lets hydration see requests in flight.
    fn charged(&self, _tenant_id: &str, _credits: i64) {}

    /// A charge counted by [`UsageSink::charged`] was given back.
    fn refunded(&self, _tenant_id: &str, _credits: i64) {}

    /// Credits charged for `tenant_id` that the store has not applied yet.
    fn pending_credits(&self, _tenant_id: &str) -> i64 {
        0
    }

    /// This sink's pipeline id, when it has one (it publishes its pending credits under it).
    fn pipeline_id(&self) -> Option<&str> {
        None
    }

    /// Every tenant's pending credits (non-zero only).
    fn pending_snapshot(&self) -> std::collections::HashMap<String, i64> {
        std::collections::HashMap::new()
    }

    /// Held while a batch is written to the store and stops counting as pending. A reader
    /// of the durable balance and the pending credits holds it across both reads, so no
    /// batch counts twice or not at all.
    fn settle_lock(&self) -> Option<std::sync::Arc<tokio::sync::Mutex<()>>> {
        None
    }
}

/// The sink of a process that charges nothing (the control plane run alone): nothing is
/// ever pending in it.
pub struct NoUsage;

impl UsageSink for NoUsage {
    fn record(&self, event: UsageEvent) {
        tracing::error!(request_id = %event.request_id, "usage event in a process without a usage pipeline: dropped");
    }
}
