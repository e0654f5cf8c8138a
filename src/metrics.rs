//! Prometheus metrics, registered once in the default registry (the one a Prometheus
//! endpoint serves). A registration that fails (a name taken twice) falls back to an
//! unregistered metric rather than failing the gateway.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
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
/// Charges taken from a leased slice, in memory (docs/DESIGN.md §Leased credits).
pub static LEASED_CHARGES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tollgate_ledger_leased_charges_total",
        "Charges taken from this replica's leased slices without a ledger round trip",
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
/// The usage journal's size: grows while the store is down, back to 0 once replayed; at
/// `usage.journal_max_mb` events start to be dropped.
pub static USAGE_JOURNAL_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "tollgate_usage_journal_bytes",
        "Bytes of usage events waiting in the disk journal for the store",
    )
});
pub static USAGE_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tollgate_usage_dropped_total",
        "Usage events lost because the disk journal failed",
    )
});

/// Calls served while the ledger was unavailable (`on_ledger_error: allow`), by how their
/// charge was settled once it answered (indexed by [`crate::vocab::Settled`]).
pub static DEFERRED_CHARGES: LazyLock<[IntCounter; 4]> = LazyLock::new(|| {
    let vec = counter_vec(
        "tollgate_deferred_charges_total",
        "Calls served while the ledger was unavailable, by how their charge was settled",
        &["outcome"],
    );
    crate::vocab::Settled::ALL.map(|s| vec.with_label_values(&[s.as_str()]))
});
pub static DEFERRED_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "tollgate_deferred_charges_pending",
        "Calls served on credit (on_ledger_error: allow) whose charge is not settled yet",
    )
});

/// Ledger work given up for good, by kind (`void`, `refund`, `deferred`): its exactly-once
/// record was about to expire, so the gateway can no longer tell whether the ledger applied
/// it. Each is also in `ledger-unresolved.log`, which `tollgate reconcile` reports.
pub static LEDGER_UNRESOLVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tollgate_ledger_unresolved_total",
        "Ledger work given up because its exactly-once record was about to expire",
        &["kind"],
    )
});

pub static RECONCILE_MISMATCHED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "tollgate_reconcile_mismatched_tenants",
        "Tenants whose ledger, durable balance and records disagreed at the last check",
    )
});

/// How a request through the gateway ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    /// Answered from an idempotency key's kept response, not forwarded.
    Replayed,
    BadRequest,
    NotFound,
    Unauthorized,
    Forbidden,
    NoCredits,
    LedgerUnavailable,
    UpstreamError,
    /// Refused by a request-rate or concurrency limit (`429`).
    RateLimited,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Forwarded,
        Outcome::Replayed,
        Outcome::BadRequest,
        Outcome::NotFound,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::NoCredits,
        Outcome::LedgerUnavailable,
        Outcome::UpstreamError,
        Outcome::RateLimited,
    ];

    /// The outcome of a response the gateway wrote itself.
    pub fn for_status(status: u16) -> Outcome {
        match status {
            401 => Outcome::Unauthorized,
            402 => Outcome::NoCredits,
            403 => Outcome::Forbidden,
            404 => Outcome::NotFound,
            429 => Outcome::RateLimited,
            503 => Outcome::LedgerUnavailable,
            502 | 504 => Outcome::UpstreamError,
            _ => Outcome::BadRequest,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Replayed => "replayed",
            Outcome::RateLimited => "rate_limited",
            Outcome::BadRequest => "bad_request",
            Outcome::NotFound => "not_found",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::NoCredits => "no_credits",
            Outcome::LedgerUnavailable => "ledger_unavailable",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tollgate_requests_total",
        "Requests through the gateway by service and outcome",
        &["service", "outcome"],
    )
});
static CREDITS_CHARGED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tollgate_credits_charged_total",
        "Credits taken by the ledger (refunds not subtracted)",
        &["service"],
    )
});

/// Request latency, from the request's first byte to the end of logging. Buckets from
/// 0.5 ms (the gateway's own overhead) to 10 s (slow upstreams).
pub static REQUEST_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "tollgate_request_duration_seconds",
        "Time to serve a request through the gateway",
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    )
});

/// One charge round trip (embedded: microseconds; Redis: a loopback or LAN round trip,
/// bounded by the 250 ms default ledger timeout).
pub static LEDGER_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "tollgate_ledger_duration_seconds",
        "Time for one ledger charge",
        vec![
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5,
        ],
    )
});

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| {
        IntCounterVec::new(Opts::new("invalid", "invalid"), labels).expect("static name")
    });
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|_| {
            Histogram::with_opts(HistogramOpts::new("invalid", "invalid")).expect("static name")
        });
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

/// One service's counters, resolved once so the request path does no label lookup.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    requests: [IntCounter; Outcome::ALL.len()],
    credits: IntCounter,
}

impl ServiceMetrics {
    pub fn new(service: &str) -> ServiceMetrics {
        ServiceMetrics {
            requests: Outcome::ALL.map(|o| REQUESTS.with_label_values(&[service, o.as_str()])),
            credits: CREDITS_CHARGED.with_label_values(&[service]),
        }
    }

    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
    }

    pub fn charged(&self, credits: i64) {
        if credits > 0 {
            self.credits.inc_by(credits as u64);
        }
    }
}

/// Counters for requests that matched no service (label `service="-"`).
/// Alerts handed to the MQTT client, by kind (`warning`, `credit-success`; never the
/// tenant: cardinality).
pub static ALERTS_PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tollgate_alerts_published_total",
        "Alerts handed to the MQTT client, by topic kind",
        &["topic"],
    )
});

/// Alerts lost because the queue in front of a slow or absent broker was full.
pub static ALERTS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tollgate_alerts_dropped_total",
        "Alerts dropped because the alert queue was full, by topic kind",
        &["topic"],
    )
});

/// Admin API requests by route template (bounded: never a raw path), method and status.
pub static ADMIN_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tollgate_admin_requests_total",
        "Requests to the admin API by route, method and status",
        &["route", "method", "status"],
    )
});

pub static UNROUTED: LazyLock<ServiceMetrics> = LazyLock::new(|| ServiceMetrics::new("-"));

/// Registers every metric now, so a scrape shows each one (at 0) before its first event.
pub fn register_all() {
    LazyLock::force(&USAGE_QUEUE_DEPTH);
    LazyLock::force(&USAGE_FLUSHED);
    LazyLock::force(&LEASED_CHARGES);
    LazyLock::force(&USAGE_JOURNALED);
    LazyLock::force(&USAGE_JOURNAL_BYTES);
    LazyLock::force(&USAGE_DROPPED);
    LazyLock::force(&RECONCILE_MISMATCHED);
    LazyLock::force(&DEFERRED_CHARGES);
    LazyLock::force(&DEFERRED_PENDING);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&LEDGER_DURATION);
    LazyLock::force(&UNROUTED);
    LazyLock::force(&ADMIN_REQUESTS);
    for kind in ["void", "refund", "deferred"] {
        LEDGER_UNRESOLVED.with_label_values(&[kind]);
    }
    for topic in ["warning", "credit-success"] {
        ALERTS_PUBLISHED.with_label_values(&[topic]);
        ALERTS_DROPPED.with_label_values(&[topic]);
    }
}

/// The figures the console's operations page shows (docs/DESIGN.md §Console), read from
/// this process's own registry: cumulative, so the page takes rates between two reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpsSnapshot {
    /// `tollgate_requests_total` summed over services, per outcome.
    pub requests: std::collections::BTreeMap<String, u64>,
    pub credits_charged: u64,
    /// `tollgate_ledger_duration_seconds`: (count, sum of seconds).
    pub ledger: (u64, f64),
    /// `tollgate_request_duration_seconds`: (count, sum of seconds).
    pub request: (u64, f64),
    pub usage_queue_depth: i64,
    pub usage_journal_bytes: i64,
    pub usage_dropped: u64,
    pub usage_flushed: u64,
    pub deferred_pending: i64,
}

/// Reads [`OpsSnapshot`] from the default registry.
pub fn ops_snapshot() -> OpsSnapshot {
    let mut snap = OpsSnapshot::default();
    for family in prometheus::gather() {
        for m in family.get_metric() {
            let counter = m.get_counter().get_value() as u64;
            let gauge = m.get_gauge().get_value() as i64;
            match family.name() {
                "tollgate_requests_total" => {
                    let outcome = m
                        .get_label()
                        .iter()
                        .find(|l| l.name() == "outcome")
                        .map_or("", |l| l.value());
                    *snap.requests.entry(outcome.to_owned()).or_default() += counter;
                }
                "tollgate_credits_charged_total" => snap.credits_charged += counter,
                "tollgate_ledger_duration_seconds" => {
                    let h = m.get_histogram();
                    snap.ledger = (h.get_sample_count(), h.get_sample_sum());
                }
                "tollgate_request_duration_seconds" => {
                    let h = m.get_histogram();
                    snap.request = (h.get_sample_count(), h.get_sample_sum());
                }
                "tollgate_usage_queue_depth" => snap.usage_queue_depth = gauge,
                "tollgate_usage_journal_bytes" => snap.usage_journal_bytes = gauge,
                "tollgate_usage_dropped_total" => snap.usage_dropped = counter,
                "tollgate_usage_flushed_total" => snap.usage_flushed = counter,
                "tollgate_deferred_charges_pending" => snap.deferred_pending = gauge,
                _ => {}
            }
        }
    }
    snap
}
