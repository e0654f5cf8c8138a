//! What the processes sharing a ledger agree on besides balances: the catalog version
//! every replica polls, the scheduler's leader lease and the failed-login count. A
//! separate trait from [`super::Ledger`], so each caller asks for what it needs (the
//! catalog watcher, the scheduler, sign-in); the same two backends implement both, on the
//! same connection (docs/DESIGN.md §Layering).

use super::LedgerError;
use async_trait::async_trait;

/// What a login attempt tells the shared failed-login count (see [`Coordination::login_attempts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOp {
    /// Only ask whether the account is locked.
    Check,
    /// Count a failure.
    Fail,
    /// A success: forget the failures.
    Reset,
}

/// How failed logins lock an account: after `free` failures within `window`, a lock of
/// `first_lock`, doubling with each further failure up to `longest_lock`.
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicy {
    pub free: u32,
    pub window: std::time::Duration,
    pub first_lock: std::time::Duration,
    pub longest_lock: std::time::Duration,
}

#[async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// The version of the catalog (services, endpoints, tenant status) that every replica
    /// polls: a bump makes each reload its catalog from the store.
    async fn catalog_version(&self) -> Result<u64, LedgerError>;

    /// Announces a change of the catalog; returns the new version.
    async fn bump_catalog_version(&self) -> Result<u64, LedgerError>;

    /// Takes or renews the scheduler's leader lock for `owner`, for `ttl`; true when
    /// `owner` leads. The embedded ledger belongs to one process: it always leads.
    async fn lead(&self, _owner: &str, _ttl: std::time::Duration) -> Result<bool, LedgerError> {
        Ok(true)
    }

    /// Applies `op` to the failed-login count of `account`, shared by every process on this
    /// ledger, and returns how long the account stays locked. `None`: this ledger shares
    /// nothing (the embedded one serves one process), and the caller counts in memory.
    async fn login_attempts(
        &self,
        _account: &str,
        _op: LoginOp,
        _policy: &LoginPolicy,
    ) -> Result<Option<std::time::Duration>, LedgerError> {
        Ok(None)
    }
}
