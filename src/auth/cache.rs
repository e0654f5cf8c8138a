//! Tokens whose signature was verified, kept for the asymmetric algorithms: an RS256
//! verification costs ~66 µs (`cargo bench --bench hot_path`), a lookup well under 1 µs,
//! and clients send the same token for its whole lifetime. A hit compares the full token,
//! and the time claims are checked on every use, so a cached token is accepted exactly
//! when a fresh verification would accept it.

use super::Claims;
use std::collections::HashMap;
use std::sync::Mutex;

/// Tokens kept at most (~1 KB each for RS256: ~10 MB). When full the cache is emptied at
/// once, which costs one verification per active token and never grows memory.
pub const CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct VerifiedTokens {
    map: Mutex<HashMap<Box<str>, Claims>>,
}

impl VerifiedTokens {
    pub fn get(&self, token: &str) -> Option<Claims> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    pub fn insert(&self, token: &str, claims: &Claims) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(token.into(), claims.clone());
    }
}
