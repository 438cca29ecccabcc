//! The rows of a keyed table grouped by another key (a GROUP BY's groups over a change stream,
//! a ROW_NUMBER's partitions): each group's row ids, and which groups changed since last asked.

use std::collections::HashMap;

use super::keyed_rows::{Moved, RowId, KEY_OVERHEAD};

/// One group: its key in Arrow's row format, its rows (some may have died since it was last
/// asked for), and what its operator keeps beside them.
pub struct Group<T> {
    pub key: Box<[u8]>,
    pub rows: Vec<RowId>,
    pub extra: T,
}

/// Groups by key, with ids reused once a group is forgotten.
pub struct RowGroups<T> {
    ids: HashMap<Box<[u8]>, u32, ahash::RandomState>,
    all: Vec<Group<T>>,
    free: Vec<u32>,
    /// Groups changed since the last [`RowGroups::take_changed`], once each.
    changed: Vec<u32>,
    is_changed: Vec<bool>,
    bytes: usize,
}

impl<T: Default> Default for RowGroups<T> {
    fn default() -> Self {
        RowGroups {
            ids: HashMap::default(),
            all: Vec::new(),
            free: Vec::new(),
            changed: Vec::new(),
            is_changed: Vec::new(),
            bytes: 0,
        }
    }
}

impl<T: Default> RowGroups<T> {
    /// Row `id` joined the group of `key` (made if new), which changed; returns the group.
    pub fn add(&mut self, key: &[u8], id: RowId) -> u32 {
        let g = match self.ids.get(key) {
            Some(&g) => g,
            None => {
                self.bytes += 2 * (key.len() + KEY_OVERHEAD);
                let group = Group {
                    key: key.into(),
                    rows: Vec::new(),
                    extra: T::default(),
                };
                let g = match self.free.pop() {
                    Some(g) => {
                        self.all[g as usize] = group;
                        g
                    }
                    None => {
                        self.all.push(group);
                        (self.all.len() - 1) as u32
                    }
                };
                self.ids.insert(key.into(), g);
                g
            }
        };
        self.all[g as usize].rows.push(id);
        self.bytes += 8;
        self.touch(g);
        g
    }

    /// Whether there is a group of `key`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.ids.contains_key(key)
    }

    /// Group `g` changed (a row left it).
    pub fn touch(&mut self, g: u32) {
        if self.is_changed.len() <= g as usize {
            self.is_changed.resize(g as usize + 1, false);
        }
        if !std::mem::replace(&mut self.is_changed[g as usize], true) {
            self.changed.push(g);
        }
    }

    /// The groups changed since the last call, once each, each left with its rows that are
    /// `live`.
    pub fn take_changed(&mut self, live: impl Fn(RowId) -> bool) -> Vec<u32> {
        let changed = std::mem::take(&mut self.changed);
        for &g in &changed {
            self.is_changed[g as usize] = false;
            let group = &mut self.all[g as usize];
            let before = group.rows.len();
            group.rows.retain(|&id| live(id));
            self.bytes = self.bytes.saturating_sub(8 * (before - group.rows.len()));
        }
        changed
    }

    pub fn get(&self, g: u32) -> &Group<T> {
        &self.all[g as usize]
    }

    pub fn get_mut(&mut self, g: u32) -> &mut Group<T> {
        &mut self.all[g as usize]
    }

    /// Forgets group `g` (left without rows); its id may be reused.
    pub fn forget(&mut self, g: u32) {
        let key = std::mem::take(&mut self.all[g as usize].key);
        self.bytes = self.bytes.saturating_sub(2 * (key.len() + KEY_OVERHEAD));
        self.ids.remove(&key);
        self.free.push(g);
    }

    /// Follows the rows to where a compaction of the table moved them.
    pub fn remap(&mut self, moved: &Moved) {
        for group in &mut self.all {
            group.rows = group.rows.iter().filter_map(|&id| moved.get(id)).collect();
        }
    }

    /// Bytes of the index: keys and row ids.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
