//! The ledger contract, checked directly against both implementations: the embedded ledger
//! and the Redis scripts on a private `redis-server` and on a Redis Cluster of six.

use tollgate_testkit as common;

use common::cluster::RedisCluster;
use common::RedisServer;
use tollgate::config::LedgerConfig;
use tollgate::idempotency::{KeyClaim, KeyRecord};
use tollgate::ledger::{
    AdjustOutcome, Adjustment, Budget, Change, Charge, ChargeOutcome, Coordination, EmbeddedLedger,
    Ledger, Limiter, RedisLedger, Release, Settle, SettleOutcome, Void, VoidOutcome, Warnings,
    MAX_BALANCE,
};
use tollgate::vocab::RateLimit;

const NONE: Warnings = Warnings::NONE;
const EXHAUSTED: Warnings = Warnings {
    low: false,
    exhausted: true,
};

fn charge<'a>(tenant: &'a str, id: &'a str, cost: i64, key: Option<&'a str>) -> Charge<'a> {
    Charge {
        tenant_id: tenant,
        cost,
        charge_id: id,
        idempotency: key.map(|key| KeyClaim {
            key,
            fingerprint: "fp",
        }),
        threshold: -1,
        fresh: true,
        budget: None,
        limits: &[],
    }
}

fn void<'a>(
    tenant: &'a str,
    id: &'a str,
    applied_cost: Option<i64>,
    key: Option<&'a str>,
) -> Void<'a> {
    Void {
        tenant_id: tenant,
        charge_id: id,
        idempotency_key: key,
        applied_cost,
        budget: None,
    }
}

async fn contract(l: &dyn Ledger) {
    // Seeding only sets a missing balance.
    assert_eq!(
        l.charge(&charge("t", "c0", 5, None)).await.unwrap(),
        ChargeOutcome::NoBalance
    );
    l.seed("t", 10).await.unwrap();
    l.seed("t", 999).await.unwrap();
    assert_eq!(l.balance("t").await.unwrap(), Some(10));
    assert_eq!(l.balance("nobody").await.unwrap(), None);

    // Check-and-decrement, never below zero.
    assert_eq!(
        l.charge(&charge("t", "c1", 7, None)).await.unwrap(),
        ChargeOutcome::Charged {
            balance: 3,
            warnings: NONE,
            rate: None,
        }
    );
    assert_eq!(
        l.charge(&charge("t", "c2", 4, None)).await.unwrap(),
        ChargeOutcome::Insufficient {
            balance: 3,
            warnings: EXHAUSTED
        }
    );

    // A refund of a charge seen applied happens once.
    assert_eq!(
        l.void(&void("t", "c1", Some(7), None)).await.unwrap(),
        VoidOutcome::Refunded { balance: 10 }
    );
    assert_eq!(
        l.void(&void("t", "c1", Some(7), None)).await.unwrap(),
        VoidOutcome::AlreadyVoided
    );
    assert_eq!(l.balance("t").await.unwrap(), Some(10));

    // A void of a charge never seen spends its id: the late charge takes nothing.
    assert_eq!(
        l.void(&void("t", "late", None, None)).await.unwrap(),
        VoidOutcome::NotApplied
    );
    assert_eq!(
        l.charge(&charge("t", "late", 1, None)).await.unwrap(),
        ChargeOutcome::Void
    );
    assert_eq!(l.balance("t").await.unwrap(), Some(10));

    // Idempotency keys: claimed by one charge, per tenant, bound to its fingerprint; a
    // refund releases the key for a fresh charge.
    assert_eq!(l.key_record("t", "k").await.unwrap(), None);
    assert_eq!(
        l.charge(&charge("t", "a", 2, Some("k"))).await.unwrap(),
        ChargeOutcome::Charged {
            balance: 8,
            warnings: NONE,
            rate: None,
        }
    );
    assert_eq!(
        l.charge(&charge("t", "b", 2, Some("k"))).await.unwrap(),
        ChargeOutcome::KeyTaken { balance: 8 }
    );
    let in_flight = KeyRecord {
        charge_id: "a".into(),
        fingerprint: "fp".into(),
        response: None,
    };
    assert_eq!(
        l.key_record("t", "k").await.unwrap(),
        Some(in_flight.clone())
    );
    // Only the claiming charge keeps its response with the key.
    assert!(!l.keep_response("t", "k", "b", b"not mine").await.unwrap());
    assert!(l
        .keep_response("t", "k", "a", b"{}\n\x00body")
        .await
        .unwrap());
    assert_eq!(
        l.key_record("t", "k").await.unwrap(),
        Some(KeyRecord {
            response: Some(b"{}\n\x00body".to_vec().into()),
            ..in_flight
        })
    );
    l.seed("u", 5).await.unwrap();
    assert_eq!(
        l.charge(&charge("u", "a2", 2, Some("k"))).await.unwrap(),
        ChargeOutcome::Charged {
            balance: 3,
            warnings: NONE,
            rate: None,
        }
    );
    l.void(&void("t", "a", Some(2), Some("k"))).await.unwrap();
    assert_eq!(
        l.charge(&charge("t", "c", 2, Some("k"))).await.unwrap(),
        ChargeOutcome::Charged {
            balance: 8,
            warnings: NONE,
            rate: None,
        }
    );
}

#[tokio::test]
async fn embedded_ledger_keeps_the_contract() {
    let ledger = EmbeddedLedger::in_memory(&LedgerConfig::default());
    contract(&ledger).await;
    adjustments(&ledger).await;
    warnings(&ledger).await;
    settlements(&ledger).await;
    budgets(&ledger).await;
    limits(&ledger).await;
}

/// A charge drawing on an API key's monthly budget `counter` of `limit`.
fn budgeted<'a>(id: &'a str, cost: i64, counter: &'a str, limit: i64) -> Charge<'a> {
    Charge {
        budget: Some(Budget { counter, limit }),
        ..charge("kb", id, cost, None)
    }
}

/// API key budgets (docs/DESIGN.md §API keys): a charge past the key's limit takes
/// nothing and says what the key spent; the tenant's other keys go on; a refund and a
/// settlement move the key's spend as they move the balance.
async fn budgets(l: &dyn Ledger) {
    l.seed("kb", 1000).await.unwrap();
    let charged = |balance| ChargeOutcome::Charged {
        balance,
        warnings: NONE,
        rate: None,
    };
    assert_eq!(
        l.charge(&budgeted("b1", 30, "a:2026-12", 50))
            .await
            .unwrap(),
        charged(970)
    );
    assert_eq!(
        l.charge(&budgeted("b2", 30, "a:2026-12", 50))
            .await
            .unwrap(),
        ChargeOutcome::OverBudget {
            balance: 970,
            spent: 30
        }
    );
    assert_eq!(l.balance("kb").await.unwrap(), Some(970), "nothing taken");
    // Another key, and the same key's next month, have budgets of their own.
    assert_eq!(
        l.charge(&budgeted("b3", 40, "b:2026-12", 50))
            .await
            .unwrap(),
        charged(930)
    );
    assert_eq!(
        l.charge(&budgeted("b4", 50, "a:2027-01", 50))
            .await
            .unwrap(),
        charged(880)
    );
    // Up to the limit exactly; a free call passes a spent budget.
    assert_eq!(
        l.charge(&budgeted("b5", 20, "a:2026-12", 50))
            .await
            .unwrap(),
        charged(860)
    );
    assert_eq!(
        l.charge(&budgeted("b6", 0, "a:2026-12", 50)).await.unwrap(),
        charged(860)
    );
    assert!(matches!(
        l.charge(&budgeted("b7", 1, "a:2026-12", 50)).await.unwrap(),
        ChargeOutcome::OverBudget { spent: 50, .. }
    ));
    // A refund gives the key's spend back with the credits: 30 more fit.
    let refund = Void {
        budget: Some("a:2026-12"),
        ..void("kb", "b1", Some(30), None)
    };
    assert_eq!(
        l.void(&refund).await.unwrap(),
        VoidOutcome::Refunded { balance: 890 }
    );
    assert_eq!(l.void(&refund).await.unwrap(), VoidOutcome::AlreadyVoided);
    assert_eq!(
        l.charge(&budgeted("b8", 30, "a:2026-12", 50))
            .await
            .unwrap(),
        charged(860)
    );
    assert!(matches!(
        l.charge(&budgeted("b9", 1, "a:2026-12", 50)).await.unwrap(),
        ChargeOutcome::OverBudget { spent: 50, .. }
    ));
    // A reserve of 10 settled at 4: the key spent 4.
    assert_eq!(
        l.charge(&budgeted("s1", 10, "c:2026-12", 10))
            .await
            .unwrap(),
        charged(850)
    );
    let settlement = Settle {
        budget: Some("c:2026-12"),
        ..settle("kb", "s1", 10, 4)
    };
    assert_eq!(l.settle(&settlement).await.unwrap(), settled(4, 856));
    assert_eq!(
        l.settle(&settlement).await.unwrap(),
        settled(4, 856),
        "once"
    );
    assert_eq!(
        l.charge(&budgeted("s2", 6, "c:2026-12", 10)).await.unwrap(),
        charged(850)
    );
    assert!(matches!(
        l.charge(&budgeted("s3", 1, "c:2026-12", 10)).await.unwrap(),
        ChargeOutcome::OverBudget { spent: 10, .. }
    ));
}

/// Rate and concurrency limits (docs/DESIGN.md §Limits): a limited charge takes nothing
/// and counts against no limit; only charged calls use the rate; a place in flight comes
/// back when released; each scope is limited apart.
async fn limits(l: &dyn Ledger) {
    l.seed("lim", 100).await.unwrap();
    let rate = Limiter {
        scope: "t",
        rate: Some(RateLimit {
            requests_per_second: 1,
            burst: 2,
        }),
        max_concurrent: None,
    };
    let one_at_a_time = Limiter {
        scope: "k:one",
        rate: None,
        max_concurrent: Some(1),
    };
    let limited = |id, cost, limits| Charge {
        limits,
        ..charge("lim", id, cost, None)
    };
    let by_rate = [rate];
    let first = l.charge(&limited("r1", 1, &by_rate)).await.unwrap();
    let ChargeOutcome::Charged {
        balance: 99,
        rate: Some(state),
        ..
    } = first
    else {
        panic!("{first:?}");
    };
    assert_eq!((state.limiter, state.remaining), (0, 1));
    // Refused for credits: not counted against the rate.
    assert!(matches!(
        l.charge(&limited("r2", 1000, &by_rate)).await.unwrap(),
        ChargeOutcome::Insufficient { .. }
    ));
    let second = l.charge(&limited("r3", 1, &by_rate)).await.unwrap();
    assert!(
        matches!(second, ChargeOutcome::Charged { balance: 98, rate: Some(s), .. } if s.remaining == 0),
        "{second:?}"
    );
    let third = l.charge(&limited("r4", 1, &by_rate)).await.unwrap();
    let ChargeOutcome::Limited {
        limiter: 0,
        concurrency: false,
        retry_after_ms,
    } = third
    else {
        panic!("{third:?}");
    };
    assert!((1..=1000).contains(&retry_after_ms), "{retry_after_ms}");
    assert_eq!(l.balance("lim").await.unwrap(), Some(98), "nothing taken");

    // One call in flight under the key's limit; the tenant's rate is another scope's.
    let by_key = [one_at_a_time];
    assert!(matches!(
        l.charge(&limited("c1", 1, &by_key)).await.unwrap(),
        ChargeOutcome::Charged { balance: 97, .. }
    ));
    let both = [rate, one_at_a_time];
    assert!(matches!(
        l.charge(&limited("c2", 1, &both)).await.unwrap(),
        ChargeOutcome::Limited {
            limiter: 0,
            concurrency: false,
            ..
        }
    ));
    assert!(matches!(
        l.charge(&limited("c3", 1, &by_key)).await.unwrap(),
        ChargeOutcome::Limited {
            limiter: 0,
            concurrency: true,
            ..
        }
    ));
    let release = Release {
        tenant_id: "lim",
        charge_id: "c1",
        scopes: &["k:one"],
    };
    l.release(&release).await.unwrap();
    assert!(matches!(
        l.charge(&limited("c4", 1, &by_key)).await.unwrap(),
        ChargeOutcome::Charged { balance: 96, .. }
    ));
    assert_eq!(l.balance("lim").await.unwrap(), Some(96));
}

fn settle<'a>(tenant: &'a str, id: &'a str, reserved: i64, cost: i64) -> Settle<'a> {
    Settle {
        tenant_id: tenant,
        charge_id: id,
        reserved,
        cost,
        threshold: -1,
        budget: None,
    }
}

fn settled(charged: i64, balance: i64) -> SettleOutcome {
    SettleOutcome::Settled {
        charged,
        balance,
        warnings: NONE,
    }
}

/// Reserved charges settled at what the calls cost (docs/DESIGN.md §Settled prices).
async fn settlements(l: &dyn Ledger) {
    l.seed("s", 100).await.unwrap();
    let charged = |balance| ChargeOutcome::Charged {
        balance,
        warnings: NONE,
        rate: None,
    };
    // Under the reserve: the rest goes back, once, however often it is asked.
    assert_eq!(
        l.charge(&charge("s", "a", 50, None)).await.unwrap(),
        charged(50)
    );
    assert_eq!(
        l.settle(&settle("s", "a", 50, 12)).await.unwrap(),
        settled(12, 88)
    );
    assert_eq!(
        l.settle(&settle("s", "a", 50, 12)).await.unwrap(),
        settled(12, 88)
    );
    assert_eq!(
        l.settle(&settle("s", "a", 50, 40)).await.unwrap(),
        settled(12, 88),
        "a second settlement of the same charge changes nothing"
    );
    // Over it: the extra is taken as far as the balance goes, never below 0.
    assert_eq!(
        l.charge(&charge("s", "b", 50, None)).await.unwrap(),
        charged(38)
    );
    assert_eq!(
        l.settle(&settle("s", "b", 50, 70)).await.unwrap(),
        settled(70, 18)
    );
    assert_eq!(
        l.charge(&charge("s", "c", 10, None)).await.unwrap(),
        charged(8)
    );
    let outcome = l.settle(&settle("s", "c", 10, 500)).await.unwrap();
    assert!(
        matches!(
            outcome,
            SettleOutcome::Settled {
                charged: 18,
                balance: 0,
                ..
            }
        ),
        "{outcome:?}"
    );
    // A settled charge voided gives back what it took in the end.
    assert_eq!(
        l.void(&void("s", "b", Some(50), None)).await.unwrap(),
        VoidOutcome::Refunded { balance: 70 }
    );
    // A voided charge settles nothing.
    assert_eq!(
        l.charge(&charge("s", "d", 5, None)).await.unwrap(),
        charged(65)
    );
    l.void(&void("s", "d", Some(5), None)).await.unwrap();
    assert_eq!(
        l.settle(&settle("s", "d", 5, 1)).await.unwrap(),
        SettleOutcome::Void
    );
    assert_eq!(l.balance("s").await.unwrap(), Some(70));
    // No balance (lost since the charge): nothing moves.
    assert_eq!(
        l.settle(&settle("nobody", "e", 5, 1)).await.unwrap(),
        SettleOutcome::NoBalance
    );
}

fn adjustment(op: &str, change: Change) -> Adjustment<'_> {
    Adjustment {
        tenant_id: "a",
        op_id: op,
        change,
        threshold: 100,
    }
}

/// Top-ups, corrections and set-balance: atomic, bounded, once per operation id.
async fn adjustments(l: &dyn Ledger) {
    let add = |op, amount| adjustment(op, Change::Add(amount));
    assert_eq!(
        l.adjust(&add("o1", 5)).await.unwrap(),
        AdjustOutcome::NoBalance
    );
    l.seed("a", 10).await.unwrap();
    let applied = |amount, balance| AdjustOutcome::Applied { amount, balance };
    assert_eq!(l.adjust(&add("o1", 5)).await.unwrap(), applied(5, 15));
    assert_eq!(
        l.adjust(&add("o1", 5)).await.unwrap(),
        applied(5, 15),
        "replay"
    );
    assert_eq!(l.adjust(&add("o2", -15)).await.unwrap(), applied(-15, 0));
    assert_eq!(
        l.adjust(&add("o3", -1)).await.unwrap(),
        AdjustOutcome::OutOfRange {
            amount: -1,
            balance: 0
        }
    );
    let set = |op, balance| adjustment(op, Change::Set(balance));
    assert_eq!(l.adjust(&set("o4", 42)).await.unwrap(), applied(42, 42));
    assert_eq!(l.adjust(&set("o5", 40)).await.unwrap(), applied(-2, 40));
    let huge = MAX_BALANCE;
    assert_eq!(
        l.adjust(&set("o6", huge)).await.unwrap(),
        applied(huge - 40, huge)
    );
    assert!(matches!(
        l.adjust(&add("o7", 1)).await.unwrap(),
        AdjustOutcome::OutOfRange { .. }
    ));
    assert_eq!(l.balance("a").await.unwrap(), Some(huge), "exact at 10^15");
    assert_eq!(l.adjust(&set("o8", 0)).await.unwrap(), applied(-huge, 0));
}

/// docs/DESIGN.md §Alerts: `low` once when a charge crosses the threshold, `exhausted` once at 0 (or on a
/// refusal), both re-armed by a top-up above the threshold.
async fn warnings(l: &dyn Ledger) {
    l.seed("w", 250).await.unwrap();
    let mut seen = Vec::new();
    let drain = async |seen: &mut Vec<(i64, Warnings)>, round: &str| {
        for i in 0..60 {
            let id = format!("{round}-{i}");
            let c = Charge {
                tenant_id: "w",
                cost: 10,
                charge_id: &id,
                idempotency: None,
                threshold: 100,
                fresh: true,
                budget: None,
                limits: &[],
            };
            match l.charge(&c).await.unwrap() {
                ChargeOutcome::Charged {
                    balance, warnings, ..
                }
                | ChargeOutcome::Insufficient { balance, warnings } => {
                    if warnings.any() {
                        seen.push((balance, warnings));
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    };
    drain(&mut seen, "a").await;
    let low = Warnings {
        low: true,
        exhausted: false,
    };
    assert_eq!(seen, vec![(100, low), (0, EXHAUSTED)]);
    // A top-up that stays at or below the threshold re-arms `exhausted` only.
    let topup = |op, amount| Adjustment {
        tenant_id: "w",
        op_id: op,
        change: Change::Add(amount),
        threshold: 100,
    };
    l.adjust(&topup("t1", 30)).await.unwrap();
    seen.clear();
    drain(&mut seen, "b").await;
    assert_eq!(seen, vec![(0, EXHAUSTED)]);
    l.adjust(&topup("t2", 500)).await.unwrap();
    seen.clear();
    drain(&mut seen, "c").await;
    assert_eq!(seen, vec![(100, low), (0, EXHAUSTED)]);
    // A refusal while credits remain is `exhausted` too.
    l.adjust(&topup("t3", 205)).await.unwrap();
    seen.clear();
    let c = Charge {
        tenant_id: "w",
        cost: 300,
        charge_id: "big",
        idempotency: None,
        threshold: 100,
        fresh: true,
        budget: None,
        limits: &[],
    };
    assert_eq!(
        l.charge(&c).await.unwrap(),
        ChargeOutcome::Insufficient {
            balance: 205,
            warnings: EXHAUSTED
        }
    );
}

#[tokio::test]
async fn redis_ledger_keeps_the_contract() {
    let redis = RedisServer::start();
    let ledger = RedisLedger::new(&redis.url(), &LedgerConfig::default()).unwrap();
    contract(&ledger).await;
    adjustments(&ledger).await;
    warnings(&ledger).await;
    settlements(&ledger).await;
    budgets(&ledger).await;
    limits(&ledger).await;
    // A charge that applied but whose answer was lost (timeout) is found by its record.
    assert_eq!(
        ledger.charge(&charge("t", "lost", 3, None)).await.unwrap(),
        ChargeOutcome::Charged {
            balance: 5,
            warnings: NONE,
            rate: None,
        }
    );
    // Retried by the same id (a deferred charge): found applied, not taken again.
    assert_eq!(
        ledger.charge(&charge("t", "lost", 3, None)).await.unwrap(),
        ChargeOutcome::AlreadyCharged { balance: 5 }
    );
    assert_eq!(
        ledger.void(&void("t", "lost", None, None)).await.unwrap(),
        VoidOutcome::Refunded { balance: 8 }
    );
    // Voided, the id is spent: a late charge with it takes nothing, and says so.
    assert_eq!(
        ledger.charge(&charge("t", "lost", 3, None)).await.unwrap(),
        ChargeOutcome::Void
    );
    // A refund after Redis lost the balance says so, and still releases the key it
    // claimed (before: "never applied", and the key stayed claimed).
    ledger.seed("gone", 10).await.unwrap();
    ledger
        .charge(&charge("gone", "g1", 4, Some("kg")))
        .await
        .unwrap();
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("DEL")
        .arg("tg:{gone}:bal")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        ledger
            .void(&void("gone", "g1", Some(4), Some("kg")))
            .await
            .unwrap(),
        VoidOutcome::NoBalance
    );
    assert_eq!(ledger.key_record("gone", "kg").await.unwrap(), None);
    // Keys carry the tenant's hash tag.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| ["t", "u", "a", "w", "s", "kb", "lim", "gone"]
                .iter()
                .any(|t| k.starts_with(&format!("tg:{{{t}}}:")))),
        "{keys:?}"
    );
    login_attempts(&ledger).await;
}

/// The same contract on a Redis Cluster (three masters, three replicas), with tenants on
/// every master: each script's keys share their tenant's slot, the deployment-wide keys
/// (catalog version, leader, pipelines) are reachable wherever they live, and the pending
/// credits of tenants on different masters are published in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_ledger_keeps_the_contract() {
    let cluster = RedisCluster::start();
    let ledger = RedisLedger::cluster(&cluster.urls(), &LedgerConfig::default()).unwrap();
    contract(&ledger).await;
    adjustments(&ledger).await;
    warnings(&ledger).await;
    settlements(&ledger).await;
    budgets(&ledger).await;
    limits(&ledger).await;
    login_attempts(&ledger).await;

    // One tenant on each master.
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let mut tenants: Vec<String> = Vec::new();
    for master in &masters {
        tenants.push(cluster.tenant_on(*master, "on-"));
    }
    for (i, tenant) in tenants.iter().enumerate() {
        ledger.seed(tenant, 100).await.unwrap();
        let outcome = ledger
            .charge(&charge(tenant, &format!("c{i}"), 10 + i as i64, None))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            ChargeOutcome::Charged {
                balance: 90 - i as i64,
                warnings: NONE,
                rate: None,
            }
        );
        assert_eq!(cluster.balance(tenant).await, Some(90 - i as i64));
    }
    let changes: Vec<(String, i64)> = tenants.iter().map(|t| (t.clone(), 5)).collect();
    assert!(!ledger.publish_pending("p1", &changes).await.unwrap());
    assert!(ledger.publish_pending("p1", &changes).await.unwrap());
    for tenant in &tenants {
        let view = ledger
            .pending_elsewhere(tenant, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.live.len(), 1, "{view:?}");
        assert_eq!((view.live[0].0.as_str(), view.live[0].1), ("p1", 5));
    }
    assert_eq!(ledger.bump_catalog_version().await.unwrap(), 1);
    assert_eq!(ledger.catalog_version().await.unwrap(), 1);
    let ttl = std::time::Duration::from_secs(5);
    assert!(ledger.lead("a", ttl).await.unwrap());
    assert!(!ledger.lead("b", ttl).await.unwrap());
}

/// The shared failed-login count: free failures, then a lock that doubles; a success
/// forgets it; accounts are apart.
async fn login_attempts(ledger: &RedisLedger) {
    use std::time::Duration;
    use tollgate::ledger::{LoginOp, LoginPolicy};
    let policy = LoginPolicy {
        free: 3,
        window: Duration::from_secs(900),
        first_lock: Duration::from_secs(30),
        longest_lock: Duration::from_secs(100),
    };
    let op = async |account: &str, op| {
        ledger
            .login_attempts(account, op, &policy)
            .await
            .unwrap()
            .unwrap()
            .as_secs()
    };
    assert_eq!(op("a@x", LoginOp::Fail).await, 0);
    assert_eq!(op("a@x", LoginOp::Fail).await, 0);
    assert!(
        (29..=30).contains(&op("a@x", LoginOp::Fail).await),
        "the 3rd failure locks"
    );
    assert!((29..=30).contains(&op("a@x", LoginOp::Check).await));
    assert_eq!(op("b@x", LoginOp::Check).await, 0, "per account");
    assert!(
        (59..=60).contains(&op("a@x", LoginOp::Fail).await),
        "doubled"
    );
    assert!(
        (99..=100).contains(&op("a@x", LoginOp::Fail).await),
        "capped"
    );
    assert_eq!(op("a@x", LoginOp::Reset).await, 0);
    assert_eq!(op("a@x", LoginOp::Check).await, 0, "a success forgets");
}

#[tokio::test]
async fn the_embedded_journal_survives_a_reopen() {
    let dir = std::env::temp_dir().join(format!("tollgate-ledger-{}", uuid::Uuid::now_v7()));
    let config = LedgerConfig::default();
    {
        let l = EmbeddedLedger::open(&dir, &config).unwrap();
        l.seed("t", 10).await.unwrap();
        l.charge(&charge("t", "a", 4, Some("k"))).await.unwrap();
        l.close().await;
    }
    let l = EmbeddedLedger::open(&dir, &config).unwrap();
    assert_eq!(l.balance("t").await.unwrap(), Some(6));
    assert_eq!(
        l.charge(&charge("t", "b", 4, Some("k"))).await.unwrap(),
        ChargeOutcome::KeyTaken { balance: 6 }
    );
    assert!(l.keep_response("t", "k", "a", b"kept").await.unwrap());
    l.close().await;
    drop(l);
    let l = EmbeddedLedger::open(&dir, &config).unwrap();
    let record = l.key_record("t", "k").await.unwrap().unwrap();
    assert_eq!(record.response.as_deref(), Some(&b"kept"[..]));
    // A settlement is remembered across a reopen: asked again (a restart finishing the
    // journaled work), it moves nothing twice.
    l.charge(&charge("t", "s", 5, None)).await.unwrap();
    assert_eq!(
        l.settle(&settle("t", "s", 5, 2)).await.unwrap(),
        settled(2, 4)
    );
    l.close().await;
    drop(l);
    let l = EmbeddedLedger::open(&dir, &config).unwrap();
    assert_eq!(
        l.settle(&settle("t", "s", 5, 5)).await.unwrap(),
        settled(2, 4)
    );
    assert_eq!(l.balance("t").await.unwrap(), Some(4));
    // An API key's spend this month is remembered too.
    l.seed("kb", 100).await.unwrap();
    assert!(matches!(
        l.charge(&budgeted("k1", 7, "a:2026-12", 10)).await.unwrap(),
        ChargeOutcome::Charged { balance: 93, .. }
    ));
    l.close().await;
    drop(l);
    let l = EmbeddedLedger::open(&dir, &config).unwrap();
    assert_eq!(
        l.charge(&budgeted("k2", 4, "a:2026-12", 10)).await.unwrap(),
        ChargeOutcome::OverBudget {
            balance: 93,
            spent: 7
        }
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The lease script (docs/DESIGN.md §Leased credits): a grant leaves ¾ of the balance; a
/// report whose answer was lost, sent again with its number, takes its spent once; a
/// return gives the rest back; an expired lease gives back all but its margin, which it
/// keeps as forfeited.
#[tokio::test]
async fn leases_are_reported_once_and_expire_keeping_their_margin() {
    use std::time::Duration;
    use tollgate::ledger::lease::{LeaseReply, LeaseRequest};
    let redis = RedisServer::start();
    let ledger = RedisLedger::new(&redis.url(), &LedgerConfig::default()).unwrap();
    ledger.seed("t", 1000).await.unwrap();
    let request = |spent, want, report, give_back| LeaseRequest {
        holder: "a",
        spent,
        want,
        least: 2,
        margin: 20,
        ttl: Duration::from_secs(60),
        give_back,
        report,
    };
    assert_eq!(
        ledger.lease("t", &request(0, 400, 1, false)).await.unwrap(),
        LeaseReply::Held {
            balance: 750,
            held: 250,
            recall: false
        },
        "at most a quarter of the balance"
    );
    let reported = LeaseReply::Held {
        balance: 750,
        held: 220,
        recall: false,
    };
    assert_eq!(
        ledger.lease("t", &request(30, 0, 2, false)).await.unwrap(),
        reported
    );
    assert_eq!(
        ledger.lease("t", &request(30, 0, 2, false)).await.unwrap(),
        reported,
        "the same report again (its answer was lost): its spent taken once"
    );
    assert_eq!(
        ledger.lease("t", &request(10, 0, 3, true)).await.unwrap(),
        LeaseReply::Returned { balance: 960 }
    );
    assert_eq!(ledger.leases("t").await.unwrap().holders, 0);

    // A holder that stops reporting: its lease expires; Redis takes back all but the margin
    // at the next look (here another holder's report).
    let dying = LeaseRequest {
        ttl: Duration::from_millis(50),
        ..request(0, 100, 4, false)
    };
    assert!(matches!(
        ledger.lease("t", &dying).await.unwrap(),
        LeaseReply::Held { held: 100, .. }
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = LeaseRequest {
        holder: "b",
        ..request(0, 0, 1, false)
    };
    assert!(matches!(
        ledger.lease("t", &other).await.unwrap(),
        LeaseReply::NoLease { balance: 940 }
    ));
    let leases = ledger.leases("t").await.unwrap();
    assert_eq!((leases.holders, leases.forfeited), (0, 20));
}
