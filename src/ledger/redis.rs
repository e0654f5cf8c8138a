//! The Redis ledger: every operation is one Lua script (EVALSHA, loading the script on
//! NOSCRIPT) over one multiplexed, self-reconnecting connection, to one Redis or to a Redis
//! Cluster. Every key of a tenant carries the hash tag `{tenant_id}`, so a cluster keeps
//! them on one slot and every script runs on one node; the few deployment-wide keys are
//! placed as docs/DESIGN.md §Redis Cluster says.

use super::lease::{LeaseReply, LeaseRequest};
use super::{
    AdjustOutcome, Adjustment, Change, Charge, ChargeOutcome, Coordination, Leases, Ledger,
    LedgerError, LoginOp, LoginPolicy, PendingElsewhere, Settle, SettleOutcome, Void, VoidOutcome,
    Warnings, MAX_BALANCE,
};
use crate::config::LedgerConfig;
use crate::idempotency::KeyRecord;
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};
use std::future::Future;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Where the ledger lives.
enum Client {
    Node(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// A connection to either: both multiplex every caller over one socket per node and
/// reconnect by themselves; the cluster one also follows `MOVED`/`ASK` and refreshes the
/// slot map when the topology changes (a failover).
#[derive(Clone)]
enum Connection {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Node(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Node(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

pub struct RedisLedger {
    client: Client,
    /// Created on first use, inside the runtime that will drive it (Pingora starts its
    /// runtimes after `main` has built the services).
    conn: OnceCell<Connection>,
    charge: Script,
    void: Script,
    settle: Script,
    release: Script,
    keep: Script,
    adjust: Script,
    lead: Script,
    login: Script,
    beat: Script,
    lease: Script,
    announce: Script,
    timeout: Duration,
    charge_ttl_ms: u64,
    idempotency_ttl_ms: u64,
}

impl RedisLedger {
    /// The ledger the config names: one Redis (`redis_url`), a cluster
    /// (`redis_cluster_nodes`), or none (the embedded ledger).
    pub fn from_config(config: &LedgerConfig) -> Result<Option<RedisLedger>, LedgerError> {
        if let Some(url) = &config.redis_url {
            return RedisLedger::new(url, config).map(Some);
        }
        if config.redis_cluster_nodes.is_empty() {
            return Ok(None);
        }
        RedisLedger::cluster(&config.redis_cluster_nodes, config).map(Some)
    }

    /// One Redis at `url`.
    pub fn new(url: &str, config: &LedgerConfig) -> Result<RedisLedger, LedgerError> {
        Ok(RedisLedger::with(
            Client::Node(redis::Client::open(url)?),
            config,
        ))
    }

    /// A Redis Cluster, found through any of `nodes`.
    pub fn cluster(nodes: &[String], config: &LedgerConfig) -> Result<RedisLedger, LedgerError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .overall_response_timeout(Some(timeout))
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()?;
        Ok(RedisLedger::with(Client::Cluster(Box::new(client)), config))
    }

    fn with(client: Client, config: &LedgerConfig) -> RedisLedger {
        RedisLedger {
            client,
            conn: OnceCell::new(),
            charge: Script::new(concat!(
                include_str!("sweep.lua"),
                include_str!("charge.lua")
            )),
            void: Script::new(include_str!("void.lua")),
            settle: Script::new(include_str!("settle.lua")),
            release: Script::new(include_str!("release.lua")),
            keep: Script::new(include_str!("keep.lua")),
            adjust: Script::new(concat!(
                include_str!("sweep.lua"),
                include_str!("adjust.lua")
            )),
            lead: Script::new(include_str!("lead.lua")),
            login: Script::new(include_str!("login.lua")),
            beat: Script::new(include_str!("beat.lua")),
            lease: Script::new(concat!(
                include_str!("sweep.lua"),
                include_str!("lease.lua")
            )),
            announce: Script::new(include_str!("announce.lua")),
            timeout: Duration::from_millis(config.timeout_ms),
            charge_ttl_ms: config.charge_ttl_secs * 1000,
            idempotency_ttl_ms: config.idempotency_ttl_secs * 1000,
        }
    }

    async fn conn(&self) -> Result<Connection, LedgerError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                Ok::<_, LedgerError>(match &self.client {
                    Client::Node(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(self.timeout))
                            .set_response_timeout(Some(self.timeout))
                            .set_number_of_retries(2)
                            .set_max_delay(Duration::from_millis(500));
                        Connection::Node(ConnectionManager::new_lazy_with_config(
                            client.clone(),
                            config,
                        )?)
                    }
                    Client::Cluster(client) => {
                        Connection::Cluster(client.get_async_connection().await?)
                    }
                })
            })
            .await?;
        Ok(conn.clone())
    }

    /// A charge by a replica holding `own_slice` credits of the tenant in its leased slice:
    /// warnings are decided on its view (the balance plus that slice). Waits for recalled
    /// slices before refusing.
    pub async fn charge_holding(
        &self,
        charge: &Charge<'_>,
        own_slice: i64,
    ) -> Result<ChargeOutcome, LedgerError> {
        let balance = match until_slices_back(|| self.charge_once(charge, own_slice)).await? {
            Ok(outcome) => return Ok(outcome),
            Err(balance) => balance,
        };
        // Not back in time (a holder cut off: its lease expires): refused, and a refusal
        // announces exhaustion as charge.lua's own does.
        let exhausted = self.announce(charge.tenant_id, "exhausted").await?;
        Ok(ChargeOutcome::Insufficient {
            balance,
            warnings: Warnings {
                low: false,
                exhausted,
            },
        })
    }

    /// One try of charge.lua: `Err(balance)` while slices are out (recalled: ask again).
    async fn charge_once(
        &self,
        charge: &Charge<'_>,
        own_slice: i64,
    ) -> Result<Result<ChargeOutcome, i64>, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let mut invocation = self.charge.prepare_invoke();
            let tenant = charge.tenant_id;
            invocation
                .key(format!("tg:{{{tenant}}}:bal"))
                .key(format!("tg:{{{tenant}}}:ch:{}", charge.charge_id))
                .key(format!("tg:{{{tenant}}}:warn"))
                .key(leases_key(tenant));
            if let Some(claim) = charge.idempotency {
                invocation.key(key_key(tenant, claim.key));
            }
            for limiter in charge.limits {
                invocation
                    .key(format!("tg:{{{tenant}}}:rl:{}", limiter.scope))
                    .key(in_flight_key(tenant, limiter.scope));
            }
            if let Some(budget) = charge.budget {
                invocation.key(budget_key(tenant, budget.counter));
            }
            invocation
                .arg(charge.cost)
                .arg(charge.charge_id)
                .arg(self.charge_ttl_ms)
                .arg(self.idempotency_ttl_ms)
                .arg(charge.threshold)
                .arg(charge.idempotency.map_or("", |c| c.fingerprint))
                .arg(own_slice)
                .arg(
                    charge
                        .budget
                        .map(|b| b.limit.to_string())
                        .unwrap_or_default(),
                )
                .arg(super::BUDGET_COUNTER_LIFE.as_millis() as u64)
                .arg(charge.limits.len())
                .arg(super::IN_FLIGHT_LEASE.as_millis() as u64);
            for limiter in charge.limits {
                let rate = limiter.rate;
                invocation
                    .arg(
                        rate.map(|r| r.requests_per_second.to_string())
                            .unwrap_or_default(),
                    )
                    .arg(rate.map(|r| r.burst.to_string()).unwrap_or_default())
                    .arg(
                        limiter
                            .max_concurrent
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    );
            }
            let values: Vec<i64> = invocation.invoke_async(&mut conn).await?;
            // The third value: the warnings' bits, a refused key's spend (code 7), or the
            // limiter that refused (code 8).
            let (code, balance, third) = match values[..] {
                [code, balance, third, ..] => (code, balance, third),
                _ => return Err(LedgerError::Reply(format!("{values:?}"))),
            };
            let warnings = Warnings::from_bits(third);
            Ok(Ok(match code {
                0 => ChargeOutcome::Charged {
                    balance,
                    warnings,
                    rate: rate_state(&values),
                },
                1 => ChargeOutcome::KeyTaken { balance },
                2 => ChargeOutcome::Insufficient { balance, warnings },
                3 => ChargeOutcome::NoBalance,
                4 => ChargeOutcome::Void,
                5 => ChargeOutcome::AlreadyCharged { balance },
                6 => return Ok(Err(balance)),
                7 => ChargeOutcome::OverBudget {
                    balance,
                    spent: third,
                },
                8 => match values[..] {
                    [_, _, limiter, concurrency, retry_after_ms] => ChargeOutcome::Limited {
                        limiter: (limiter - 1).max(0) as usize,
                        concurrency: concurrency == 1,
                        retry_after_ms: retry_after_ms.max(0) as u64,
                    },
                    _ => return Err(LedgerError::Reply(format!("{values:?}"))),
                },
                _ => return Err(LedgerError::Reply(format!("charge code {code}"))),
            }))
        })
        .await
    }

    /// settle.lua by a replica holding `own_slice` credits of the tenant in its leased
    /// slice (warnings are decided on its view, as a charge's are).
    pub async fn settle_holding(
        &self,
        settle: &Settle<'_>,
        own_slice: i64,
    ) -> Result<SettleOutcome, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let mut invocation = self.settle.prepare_invoke();
            let tenant = settle.tenant_id;
            invocation
                .key(format!("tg:{{{tenant}}}:bal"))
                .key(format!("tg:{{{tenant}}}:ch:{}", settle.charge_id))
                .key(format!("tg:{{{tenant}}}:warn"));
            if let Some(counter) = settle.budget {
                invocation.key(budget_key(tenant, counter));
            }
            invocation
                .arg(settle.reserved)
                .arg(settle.cost)
                .arg(self.charge_ttl_ms)
                .arg(settle.threshold)
                .arg(own_slice);
            let values: Vec<i64> = invocation.invoke_async(&mut conn).await?;
            let [code, balance, charged, warnings] = values[..] else {
                return Err(LedgerError::Reply(format!("{values:?}")));
            };
            Ok(match code {
                0 => SettleOutcome::Settled {
                    charged,
                    balance,
                    warnings: Warnings::from_bits(warnings),
                },
                1 => SettleOutcome::Void,
                2 => SettleOutcome::NoBalance,
                _ => return Err(LedgerError::Reply(format!("settle code {code}"))),
            })
        })
        .await
    }

    /// One try of adjust.lua: `Err(())` while slices are out (recalled: ask again).
    async fn adjust_once(
        &self,
        adjustment: &Adjustment<'_>,
    ) -> Result<Result<AdjustOutcome, ()>, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let tenant = adjustment.tenant_id;
            let (mode, value) = match adjustment.change {
                Change::Add(amount) => ("add", amount),
                Change::Set(balance) => ("set", balance),
            };
            let values: Vec<i64> = self
                .adjust
                .key(format!("tg:{{{tenant}}}:bal"))
                .key(format!("tg:{{{tenant}}}:adj:{}", adjustment.op_id))
                .key(format!("tg:{{{tenant}}}:warn"))
                .key(leases_key(tenant))
                .arg(mode)
                .arg(value.to_string())
                .arg(MAX_BALANCE.to_string())
                .arg(super::ADJUSTMENT_RECORD_LIFE.as_millis() as u64)
                .arg(adjustment.threshold)
                .invoke_async(&mut conn)
                .await?;
            let [code, amount, balance] = values[..] else {
                return Err(LedgerError::Reply(format!("{values:?}")));
            };
            Ok(Ok(match code {
                0 | 1 => AdjustOutcome::Applied { amount, balance },
                2 => AdjustOutcome::NoBalance,
                3 => AdjustOutcome::OutOfRange { amount, balance },
                4 => return Ok(Err(())),
                _ => return Err(LedgerError::Reply(format!("adjust code {code}"))),
            }))
        })
        .await
    }

    /// Reports what `holder` spent of its slice of `tenant`'s balance and grows, keeps or
    /// returns the slice (lease.lua; docs/DESIGN.md §Leased credits).
    pub async fn lease(
        &self,
        tenant: &str,
        request: &LeaseRequest<'_>,
    ) -> Result<LeaseReply, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let values: Vec<i64> = self
                .lease
                .key(format!("tg:{{{tenant}}}:bal"))
                .key(leases_key(tenant))
                .arg(request.holder)
                .arg(request.spent)
                .arg(request.want)
                .arg(request.least)
                .arg(request.margin)
                .arg(request.ttl.as_millis() as u64)
                .arg(if request.give_back { "return" } else { "sync" })
                .arg(request.report)
                .invoke_async(&mut conn)
                .await?;
            let [code, balance, held, recall] = values[..] else {
                return Err(LedgerError::Reply(format!("{values:?}")));
            };
            Ok(match code {
                0 => LeaseReply::Held {
                    balance,
                    held,
                    recall: recall == 1,
                },
                1 => LeaseReply::Returned { balance },
                2 => LeaseReply::NoLease { balance },
                3 => LeaseReply::NoBalance,
                _ => return Err(LedgerError::Reply(format!("lease code {code}"))),
            })
        })
        .await
    }

    /// Whether this replica announces `warning` for `tenant` (the first to ask does).
    pub async fn announce(&self, tenant: &str, warning: &str) -> Result<bool, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let first: i64 = self
                .announce
                .key(format!("tg:{{{tenant}}}:warn"))
                .arg(warning)
                .invoke_async(&mut conn)
                .await?;
            Ok(first == 1)
        })
        .await
    }

    /// Bounds every ledger call, whatever the connection is doing.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| LedgerError::Timeout)?
    }
}

fn keys(tenant_id: &str, charge_id: &str, idempotency_key: Option<&str>) -> [Option<String>; 3] {
    [
        Some(format!("tg:{{{tenant_id}}}:bal")),
        Some(format!("tg:{{{tenant_id}}}:ch:{charge_id}")),
        idempotency_key.map(|k| key_key(tenant_id, k)),
    ]
}

/// An idempotency key's hash (`charge`, `fp`, `resp`). `idk`, not the `idem` strings of
/// earlier versions, which bound no request and are left to expire.
fn key_key(tenant_id: &str, key: &str) -> String {
    format!("tg:{{{tenant_id}}}:idk:{key}")
}

/// The calls in flight under a limit (docs/DESIGN.md §Limits).
fn in_flight_key(tenant_id: &str, scope: &str) -> String {
    format!("tg:{{{tenant_id}}}:cc:{scope}")
}

/// A charged call's standing against its tightest rate limit: charge.lua's 4th to 6th values.
fn rate_state(values: &[i64]) -> Option<super::RateState> {
    match values {
        [_, _, _, limiter, remaining, reset_ms] if *limiter > 0 => Some(super::RateState {
            limiter: (*limiter - 1) as usize,
            remaining: (*remaining).clamp(0, i64::from(u32::MAX)) as u32,
            reset_ms: (*reset_ms).max(0) as u64,
        }),
        _ => None,
    }
}

/// An API key's budget counter (docs/DESIGN.md §API keys).
fn budget_key(tenant_id: &str, counter: &str) -> String {
    format!("tg:{{{tenant_id}}}:kb:{counter}")
}

/// One key for the whole deployment (not per tenant): replicas poll it.
const CATALOG_VERSION_KEY: &str = "tg:catalog:version";

/// The registry of usage pipelines (one key for the deployment): id → last publish.
const PIPELINES_KEY: &str = "tg:pipelines";

/// A pipeline that has not published for this long is dead: what it last said it held is
/// subtracted by hydration rather than waited for.
const PIPELINE_DEAD_AFTER_MS: u64 = 5_000;

/// A tenant's pending credits per pipeline (a hash: pipeline id → credits).
fn pending_key(tenant_id: &str) -> String {
    format!("tg:{{{tenant_id}}}:pending")
}

/// A tenant's leased slices (sweep.lua).
fn leases_key(tenant_id: &str) -> String {
    format!("tg:{{{tenant_id}}}:leases")
}

/// How long a charge or a balance set waits for recalled slices to come back before it is
/// refused (a charge: `402`) or left to its caller's retry (a set). Live holders return
/// theirs at their next sync (every [`super::lease::SYNC_TICK`]); a dead one's come back
/// when its lease expires.
const RECALL_WAIT: Duration = Duration::from_secs(1);
const RECALL_POLL: Duration = Duration::from_millis(20);

/// Asks `once` until it decides (`Ok`) or [`RECALL_WAIT`] has passed with slices still
/// out; then its last undecided answer (`Err`).
async fn until_slices_back<T, U, F>(
    mut once: impl FnMut() -> F,
) -> Result<Result<T, U>, LedgerError>
where
    F: Future<Output = Result<Result<T, U>, LedgerError>>,
{
    let deadline = tokio::time::Instant::now() + RECALL_WAIT;
    loop {
        match once().await? {
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(RECALL_POLL).await
            }
            answer => return Ok(answer),
        }
    }
}

fn reply(values: Vec<i64>) -> Result<(i64, i64), LedgerError> {
    match values[..] {
        [code, balance] => Ok((code, balance)),
        _ => Err(LedgerError::Reply(format!("{values:?}"))),
    }
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn charge(&self, charge: &Charge<'_>) -> Result<ChargeOutcome, LedgerError> {
        self.charge_holding(charge, 0).await
    }

    async fn void(&self, void: &Void<'_>) -> Result<VoidOutcome, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let mut invocation = self.void.prepare_invoke();
            for key in keys(void.tenant_id, void.charge_id, void.idempotency_key)
                .into_iter()
                .flatten()
            {
                invocation.key(key);
            }
            if let Some(counter) = void.budget {
                invocation.key(budget_key(void.tenant_id, counter));
            }
            let applied_cost = void.applied_cost.map(|c| c.to_string()).unwrap_or_default();
            invocation
                .arg(void.charge_id)
                .arg(self.charge_ttl_ms)
                .arg(applied_cost)
                .arg(if void.budget.is_some() { "1" } else { "" });
            let (code, balance) = reply(invocation.invoke_async(&mut conn).await?)?;
            Ok(match code {
                0 => VoidOutcome::Refunded { balance },
                1 => VoidOutcome::NotApplied,
                2 => VoidOutcome::AlreadyVoided,
                3 => VoidOutcome::NoBalance,
                _ => return Err(LedgerError::Reply(format!("void code {code}"))),
            })
        })
        .await
    }

    async fn settle(&self, settle: &Settle<'_>) -> Result<SettleOutcome, LedgerError> {
        self.settle_holding(settle, 0).await
    }

    async fn release(&self, release: &super::Release<'_>) -> Result<(), LedgerError> {
        if release.scopes.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            let mut conn = self.conn().await?;
            let mut invocation = self.release.prepare_invoke();
            for scope in release.scopes {
                invocation.key(in_flight_key(release.tenant_id, scope));
            }
            let _: i64 = invocation
                .arg(release.charge_id)
                .invoke_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn key_record(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<KeyRecord>, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let (charge, fp, resp): (Option<String>, Option<String>, Option<Vec<u8>>) =
                redis::cmd("HMGET")
                    .arg(key_key(tenant_id, key))
                    .arg("charge")
                    .arg("fp")
                    .arg("resp")
                    .query_async(&mut conn)
                    .await?;
            Ok(charge.map(|charge_id| KeyRecord {
                charge_id,
                fingerprint: fp.unwrap_or_default(),
                response: resp.map(Into::into),
            }))
        })
        .await
    }

    async fn keep_response(
        &self,
        tenant_id: &str,
        key: &str,
        charge_id: &str,
        response: &[u8],
    ) -> Result<bool, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let kept: i64 = self
                .keep
                .key(key_key(tenant_id, key))
                .arg(charge_id)
                .arg(response)
                .invoke_async(&mut conn)
                .await?;
            Ok(kept == 1)
        })
        .await
    }

    async fn adjust(&self, adjustment: &Adjustment<'_>) -> Result<AdjustOutcome, LedgerError> {
        // A balance is set only with every slice back: recalled, they return within a
        // tick or two; past the wait the change is left to the caller's retry.
        until_slices_back(|| self.adjust_once(adjustment))
            .await?
            .map_err(|()| LedgerError::Timeout)
    }

    async fn publish_pending(
        &self,
        pipeline: &str,
        changes: &[(String, i64)],
    ) -> Result<bool, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            // One command per tenant, all in flight at once: each tenant's key lives on its
            // own slot, so a cluster cannot take them as one pipeline.
            let writes = changes.iter().map(|(tenant, credits)| {
                let mut conn = conn.clone();
                async move {
                    if *credits == 0 {
                        conn.hdel::<_, _, ()>(pending_key(tenant), pipeline).await
                    } else {
                        conn.hset::<_, _, _, ()>(pending_key(tenant), pipeline, *credits)
                            .await
                    }
                }
            });
            futures_util::future::try_join_all(writes).await?;
            // The heartbeat last: a publish time at or after t says every change before
            // it is in place.
            let (known, _, _): (i64, u64, u64) = self
                .beat
                .key(PIPELINES_KEY)
                .arg(pipeline)
                .invoke_async(&mut conn)
                .await?;
            Ok(known == 1)
        })
        .await
    }

    async fn pending_elsewhere(
        &self,
        tenant: &str,
        own: Option<&str>,
    ) -> Result<Option<PendingElsewhere>, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let time: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
            let now_ms = time.0 * 1000 + time.1 / 1000;
            let registry: std::collections::HashMap<String, u64> =
                conn.hgetall(PIPELINES_KEY).await?;
            let pending: std::collections::HashMap<String, i64> =
                conn.hgetall(pending_key(tenant)).await?;
            let mut view = PendingElsewhere {
                now_ms,
                registry_since_ms: registry.get("_since").copied(),
                ..PendingElsewhere::default()
            };
            for (pipeline, published) in &registry {
                if pipeline == "_since" || Some(pipeline.as_str()) == own {
                    continue;
                }
                let credits = pending.get(pipeline).copied().unwrap_or(0);
                if now_ms.saturating_sub(*published) > PIPELINE_DEAD_AFTER_MS {
                    view.dead_credits += credits;
                } else {
                    view.live.push((pipeline.clone(), credits, *published));
                }
            }
            // Pending of pipelines gone from the registry (a flush, then not back): dead.
            for (pipeline, credits) in &pending {
                if !registry.contains_key(pipeline) && Some(pipeline.as_str()) != own {
                    view.dead_credits += credits;
                }
            }
            Ok(Some(view))
        })
        .await
    }

    async fn leases(&self, tenant_id: &str) -> Result<Leases, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let fields: std::collections::HashMap<String, String> =
                conn.hgetall(leases_key(tenant_id)).await?;
            let mut leases = Leases::default();
            for (holder, value) in &fields {
                match holder.as_str() {
                    "_forfeited" => leases.forfeited = value.parse().unwrap_or(0),
                    "_recall" => {}
                    _ => {
                        let held = value.split(':').next().and_then(|h| h.parse().ok());
                        leases.held += held.unwrap_or(0);
                        leases.holders += 1;
                    }
                }
            }
            Ok(leases)
        })
        .await
    }

    async fn seed(&self, tenant_id: &str, balance: i64) -> Result<(), LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let key = format!("tg:{{{tenant_id}}}:bal");
            let _: bool = conn.set_nx(key, balance).await?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn balance(&self, tenant_id: &str) -> Result<Option<i64>, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            Ok(conn.get(format!("tg:{{{tenant_id}}}:bal")).await?)
        })
        .await
    }
}

#[async_trait]
impl Coordination for RedisLedger {
    async fn catalog_version(&self) -> Result<u64, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let version: Option<u64> = conn.get(CATALOG_VERSION_KEY).await?;
            Ok(version.unwrap_or(0))
        })
        .await
    }

    async fn bump_catalog_version(&self) -> Result<u64, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            Ok(conn.incr(CATALOG_VERSION_KEY, 1u64).await?)
        })
        .await
    }

    async fn lead(&self, owner: &str, ttl: Duration) -> Result<bool, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let led: i64 = self
                .lead
                .key("tg:scheduler:leader")
                .arg(owner)
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?;
            Ok(led == 1)
        })
        .await
    }

    async fn login_attempts(
        &self,
        account: &str,
        op: LoginOp,
        policy: &LoginPolicy,
    ) -> Result<Option<Duration>, LedgerError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let op = match op {
                LoginOp::Check => "check",
                LoginOp::Fail => "fail",
                LoginOp::Reset => "reset",
            };
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let locked_ms: u64 = self
                .login
                .key(format!("tg:login:{account}"))
                .arg(op)
                .arg(now_ms)
                .arg(policy.free)
                .arg(policy.window.as_millis() as u64)
                .arg(policy.first_lock.as_millis() as u64)
                .arg(policy.longest_lock.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?;
            Ok(Some(Duration::from_millis(locked_ms)))
        })
        .await
    }
}
