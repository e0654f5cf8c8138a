//! A map whose entries share one lifetime, expired from a time-ordered queue: sweeping
//! costs only what expired, never a scan of everything that is still live (a full scan
//! under the ledger's lock stalled every request once the map held millions of entries).

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
pub struct ExpiringMap<V> {
    entries: HashMap<String, (V, u64)>,
    /// (expiry, key) in insertion order, which is expiry order for a fixed lifetime.
    order: VecDeque<(u64, String)>,
}

impl<V> Default for ExpiringMap<V> {
    fn default() -> Self {
        ExpiringMap {
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V> ExpiringMap<V> {
    pub fn insert(&mut self, key: String, value: V, expires: u64) {
        self.order.push_back((expires, key.clone()));
        self.entries.insert(key, (value, expires));
    }

    /// Live entries only (an entry past its expiry is absent even before a sweep).
    pub fn get(&self, key: &str, now: u64) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value)
    }

    /// A live entry, to change in place (its expiry stays).
    pub fn get_mut(&mut self, key: &str, now: u64) -> Option<&mut V> {
        self.entries
            .get_mut(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value)
    }

    /// When `key` expires, if it is held.
    pub fn expiry(&self, key: &str) -> Option<u64> {
        self.entries.get(key).map(|(_, expires)| *expires)
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Drops what has expired by `now`.
    pub fn expire(&mut self, now: u64) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            let Some((expires, key)) = self.order.pop_front() else {
                break;
            };
            // The key may have been set again since with a later expiry: keep that one.
            if self.entries.get(&key).is_some_and(|(_, e)| *e == expires) {
                self.entries.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_order_and_keeps_renewed_keys() {
        let mut map = ExpiringMap::default();
        map.insert("a".into(), 1, 10);
        map.insert("b".into(), 2, 20);
        map.insert("a".into(), 3, 30);
        assert_eq!(
            map.get("b", 25),
            None,
            "expired entries are invisible before a sweep"
        );
        map.expire(25);
        assert_eq!(map.len(), 1);
        assert_eq!(map.get("a", 25), Some(&3));
        map.remove("a");
        assert_eq!(map.get("a", 25), None);
        map.expire(100);
        assert_eq!(map.len(), 0);
    }
}
