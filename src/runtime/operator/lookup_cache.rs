//! The cache of a lookup join: the rows found per key (in Arrow's row format), used for the
//! source's time to live, least recently used out first once past a number of rows.

use std::collections::HashMap;
use std::time::Instant;

use tributary_connectors::LookupCache;

/// A key's rows as found, in the row format of the columns the join reads.
struct Cached {
    rows: Vec<Box<[u8]>>,
    found_at: Instant,
    /// When last used, on the cache's clock: the least recently used go first.
    used: u64,
}

/// The rows found per key, for the lookup's time to live, within a number of rows.
pub(super) struct KeyCache {
    pub policy: LookupCache,
    entries: HashMap<Box<[u8]>, Cached, ahash::RandomState>,
    clock: u64,
    pub rows: usize,
    pub bytes: usize,
}

impl KeyCache {
    pub fn new(policy: LookupCache) -> Self {
        KeyCache {
            policy,
            entries: HashMap::default(),
            clock: 0,
            rows: 0,
            bytes: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.policy.rows > 0
    }

    /// A key's rows, when found within the time to live.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<&[Box<[u8]>]> {
        let ttl = self.policy.ttl?;
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        if now.duration_since(entry.found_at) > ttl {
            return None;
        }
        entry.used = self.clock;
        Some(&entry.rows)
    }

    /// Weight of an entry: its rows, or one for a key found with none.
    fn weight(rows: &[Box<[u8]>]) -> usize {
        rows.len().max(1)
    }

    /// Bytes an entry holds: its key, its rows and their boxes, and the map's slot.
    fn size(key_len: usize, rows: &[Box<[u8]>]) -> usize {
        key_len + rows.iter().map(|r| r.len() + 16).sum::<usize>() + 64
    }

    pub fn insert(&mut self, key: Box<[u8]>, rows: Vec<Box<[u8]>>, now: Instant) {
        self.clock += 1;
        self.rows += Self::weight(&rows);
        self.bytes += Self::size(key.len(), &rows);
        let cached = Cached {
            rows,
            found_at: now,
            used: self.clock,
        };
        let key_len = key.len();
        if let Some(old) = self.entries.insert(key, cached) {
            self.rows -= Self::weight(&old.rows);
            self.bytes -= Self::size(key_len, &old.rows);
        }
        if self.rows > self.policy.rows {
            self.evict();
        }
    }

    /// Drops the least recently used entries down to nine tenths of the rows allowed, so
    /// eviction happens once per many inserts.
    fn evict(&mut self) {
        let target = self.policy.rows - self.policy.rows / 10;
        let mut by_use: Vec<(u64, usize)> = self
            .entries
            .values()
            .map(|e| (e.used, Self::weight(&e.rows)))
            .collect();
        by_use.sort_unstable();
        let mut excess = self.rows.saturating_sub(target);
        let mut threshold = 0;
        for (used, weight) in by_use {
            if excess == 0 {
                break;
            }
            threshold = used;
            excess = excess.saturating_sub(weight);
        }
        let (mut rows, mut bytes) = (0, 0);
        self.entries.retain(|key, e| {
            let keep = e.used > threshold;
            if keep {
                rows += Self::weight(&e.rows);
                bytes += Self::size(key.len(), &e.rows);
            }
            keep
        });
        self.rows = rows;
        self.bytes = bytes;
    }
}
