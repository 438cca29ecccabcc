//! The compact tables behind DISTINCT aggregates' marks: rows interned to dense ids, and the
//! (group, value) pairs counted with the filters each passed, 16 bytes a pair.

use ahash::RandomState;
use hashbrown::hash_table::{Entry, HashTable};

use crate::error::{Error, Result};

/// Bytes of a chunk of interned rows: rows are appended to the last chunk, never moved.
const CHUNK: usize = 1 << 20;

/// Where an interned row's bytes are.
#[derive(Debug, Clone, Copy)]
struct Span {
    chunk: u32,
    start: u32,
    len: u32,
}

/// Rows in Arrow's row format, each stored once, end to end, and known by a dense id.
pub struct Interner {
    chunks: Vec<Vec<u8>>,
    spans: Vec<Span>,
    ids: HashTable<u32>,
    hasher: RandomState,
}

fn bytes_of<'a>(chunks: &'a [Vec<u8>], span: Span) -> &'a [u8] {
    &chunks[span.chunk as usize][span.start as usize..(span.start + span.len) as usize]
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            chunks: Vec::new(),
            spans: Vec::new(),
            ids: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl Interner {
    /// The id of `row`, given one when it is new.
    pub fn intern(&mut self, row: &[u8]) -> Result<u32> {
        let Interner {
            chunks,
            spans,
            ids,
            hasher,
        } = self;
        let hash = hasher.hash_one(row);
        let entry = ids.entry(
            hash,
            |&id| bytes_of(chunks, spans[id as usize]) == row,
            |&id| hasher.hash_one(bytes_of(chunks, spans[id as usize])),
        );
        match entry {
            Entry::Occupied(e) => Ok(*e.get()),
            Entry::Vacant(v) => {
                let id = u32::try_from(spans.len())
                    .map_err(|_| Error::Internal("more than 2^32 distinct keys".into()))?;
                let len = u32::try_from(row.len())
                    .map_err(|_| Error::Internal("a key of over 4 GB".into()))?;
                let fits = chunks
                    .last()
                    .is_some_and(|c| c.capacity() - c.len() >= row.len());
                if !fits {
                    chunks.push(Vec::with_capacity(CHUNK.max(row.len())));
                }
                let chunk = chunks.len() - 1;
                let start = chunks[chunk].len() as u32;
                chunks[chunk].extend_from_slice(row);
                spans.push(Span {
                    chunk: chunk as u32,
                    start,
                    len,
                });
                v.insert(id);
                Ok(id)
            }
        }
    }

    /// The row interned as `id`.
    pub fn row(&self, id: u32) -> &[u8] {
        bytes_of(&self.chunks, self.spans[id as usize])
    }

    /// Rows interned.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Bytes it holds in memory.
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>()
            + self.spans.capacity() * std::mem::size_of::<Span>()
            + self.ids.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

/// Filters one argument's pairs tell apart: a bit each, the last bit marks a changed pair.
pub const MAX_FILTERS: usize = 31;

/// The bit of a pair whose filters changed since the last snapshot.
const CHANGED: u32 = 1 << 31;

/// A pair counted: its group's id, the filters it passed (bit `j`: filter `j`; and
/// [`CHANGED`]), its value (an integer's bits, or an interned row's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub group: u32,
    bits: u32,
    pub value: u64,
}

impl Pair {
    /// The filters it passed.
    pub fn filters(&self) -> u32 {
        self.bits & !CHANGED
    }
}

/// The pairs of one DISTINCT argument counted so far.
pub struct Pairs {
    table: HashTable<Pair>,
    hasher: RandomState,
    /// Pairs marked [`CHANGED`].
    changed: usize,
}

impl Default for Pairs {
    fn default() -> Self {
        Pairs {
            table: HashTable::new(),
            hasher: RandomState::new(),
            changed: 0,
        }
    }
}

impl Pairs {
    fn hash(hasher: &RandomState, group: u32, value: u64) -> u64 {
        hasher.hash_one((group, value))
    }

    /// The filters the pair passed so far (0 when it was never counted).
    pub fn filters(&self, group: u32, value: u64) -> u32 {
        let hash = Self::hash(&self.hasher, group, value);
        self.table
            .find(hash, |p| p.group == group && p.value == value)
            .map_or(0, Pair::filters)
    }

    /// Adds `filters` to the pair's, marking it changed when they are new to it (unless
    /// `restored`: then it is as of the last snapshot).
    pub fn add(&mut self, group: u32, value: u64, filters: u32, restored: bool) {
        let hasher = &self.hasher;
        let hash = Self::hash(hasher, group, value);
        let changed = if restored { 0 } else { CHANGED };
        let filters = filters & !CHANGED;
        match self.table.entry(
            hash,
            |p| p.group == group && p.value == value,
            |p| Self::hash(hasher, p.group, p.value),
        ) {
            Entry::Occupied(mut e) => {
                let pair = e.get_mut();
                if pair.bits | filters != pair.bits {
                    if pair.bits & CHANGED == 0 && changed != 0 {
                        self.changed += 1;
                    }
                    pair.bits |= filters | changed;
                }
            }
            Entry::Vacant(v) => {
                v.insert(Pair {
                    group,
                    bits: filters | changed,
                    value,
                });
                if changed != 0 {
                    self.changed += 1;
                }
            }
        }
    }

    /// Every pair, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Pair> {
        self.table.iter()
    }

    /// The pairs changed since [`Pairs::clear_changed`], in no order.
    pub fn changed(&self) -> impl Iterator<Item = &Pair> {
        self.table.iter().filter(|p| p.bits & CHANGED != 0)
    }

    /// How many pairs changed since [`Pairs::clear_changed`].
    pub fn changed_len(&self) -> usize {
        self.changed
    }

    /// Marks every pair as of the snapshot just taken.
    pub fn clear_changed(&mut self) {
        if self.changed > 0 {
            for p in self.table.iter_mut() {
                p.bits &= !CHANGED;
            }
            self.changed = 0;
        }
    }

    /// Pairs counted.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes it holds in memory.
    pub fn bytes(&self) -> usize {
        self.table.capacity() * (std::mem::size_of::<Pair>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_intern_once_and_read_back() {
        let mut interner = Interner::default();
        let rows: Vec<Vec<u8>> = (0..50_000u32)
            .map(|i| format!("row-{}", i % 20_000).into_bytes())
            .collect();
        let ids: Vec<u32> = rows.iter().map(|r| interner.intern(r).unwrap()).collect();
        assert_eq!(interner.len(), 20_000);
        for (row, id) in rows.iter().zip(&ids) {
            assert_eq!(interner.row(*id), row.as_slice());
        }
        assert_eq!(ids[0], ids[20_000]);
        // A row longer than a chunk gets a chunk of its own.
        let long = vec![7u8; CHUNK + 3];
        let id = interner.intern(&long).unwrap();
        assert_eq!(interner.row(id), long.as_slice());
        assert_eq!(interner.intern(&long).unwrap(), id);
    }

    #[test]
    fn pairs_gather_their_filters_and_changes() {
        let mut pairs = Pairs::default();
        for i in 0..100_000u64 {
            pairs.add((i % 7) as u32, i / 3, 1 << (i % 3), i >= 90_000);
        }
        assert_eq!(pairs.filters(0, 0), 1);
        // 0..3 are (0,0,1), (1,0,2), (2,0,4): groups differ.
        assert_eq!(pairs.filters(1, 0), 2);
        assert_eq!(pairs.filters(3, 999_999), 0);
        assert_eq!(pairs.len(), 100_000);
        assert_eq!(pairs.changed_len(), 90_000);
        assert_eq!(pairs.changed().count(), 90_000);
        pairs.clear_changed();
        assert_eq!(pairs.changed().count(), 0);
        pairs.add(0, 0, 4, false);
        pairs.add(0, 0, 1, false);
        assert_eq!(pairs.filters(0, 0), 5);
        assert_eq!(pairs.changed_len(), 1);
        assert_eq!(pairs.changed().count(), 1);
        assert!(pairs.bytes() >= 100_000 * 17);
    }
}
