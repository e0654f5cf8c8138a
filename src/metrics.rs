//! Prometheus metrics, registered once in the default registry (the one a Prometheus
//! endpoint serves). A registration that fails (a name taken twice) falls back to an
//! unregistered metric rather than failing the gateway.

use prometheus::{IntCounter, IntGauge};
use std::sync::LazyLock;

fn counter(name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help)
        .unwrap_or_else(|_| IntCounter::new("invalid", "invalid").expect("static name"));
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help)
        .unwrap_or_else(|_| IntGauge::new("invalid", "invalid").expect("static name"));
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

pub static USAGE_QUEUE_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "tollgate_usage_queue_depth",
        "Usage events waiting in memory to be written",
    )
});
pub static USAGE_FLUSHED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tollgate_usage_flushed_total",
        "Usage events written to the store",
    )
});
pub static USAGE_JOURNALED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tollgate_usage_journaled_total",
        "Usage events written to the disk journal",
    )
});
pub static USAGE_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tollgate_usage_dropped_total",
        "Usage events lost because the disk journal failed",
    )
});
