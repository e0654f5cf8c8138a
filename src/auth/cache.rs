//! Tokens whose signature was verified. An RS256 verification costs ~66 µs and an HS256
//! one ~1.6 µs (`cargo bench --bench hot_path`: base64, two JSON parses, the MAC and the
//! claims' strings), a lookup a fraction of either, and clients send the same token for
//! its whole lifetime. A hit compares the full token, and the time claims are checked on
//! every use, so a cached token is accepted exactly when a fresh verification would
//! accept it. The claims are shared (`Arc`), so a hit allocates nothing.

use super::Claims;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Tokens kept at most (~1 KB each for RS256: ~10 MB; an HS256 token ~300 bytes). When full the cache is emptied at
/// once, which costs one verification per active token and never grows memory.
pub const CAPACITY: usize = 10_000;

/// A token's claims and the key-set generation it was verified under.
type Verified = (Arc<Claims>, u64);

#[derive(Default)]
pub struct VerifiedTokens {
    /// Token → its claims and the identity provider's key-set generation it was verified
    /// under: a token verified before the set changed (a key retired) is verified again.
    map: Mutex<HashMap<Box<str>, Verified>>,
}

impl VerifiedTokens {
    pub fn get(&self, token: &str, generation: u64) -> Option<Arc<Claims>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .filter(|(_, seen)| *seen == generation)
            .map(|(claims, _)| Arc::clone(claims))
    }

    pub fn insert(&self, token: &str, claims: &Arc<Claims>, generation: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(token.into(), (Arc::clone(claims), generation));
    }
}
