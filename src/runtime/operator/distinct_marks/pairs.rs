//! The compact tables behind DISTINCT aggregates' marks: rows interned to dense ids, and the
//! (group, value) pairs counted with the filters each passed, 16 bytes a pair.

use ahash::RandomState;
use hashbrown::hash_table::{Entry, HashTable};

use crate::error::{Error, Result};

/// Bytes of the largest chunk of interned rows: rows are appended to the last chunk, never
/// moved; chunks double from [`FIRST_CHUNK`] (a handful of groups takes a few kB) up to it.
const CHUNK: usize = 1 << 20;
const FIRST_CHUNK: usize = 4 << 10;

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

fn bytes_of(chunks: &[Vec<u8>], span: Span) -> &[u8] {
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
                    let size = chunks
                        .last()
                        .map_or(FIRST_CHUNK, |c| (2 * c.capacity()).min(CHUNK));
                    chunks.push(Vec::with_capacity(size.max(row.len())));
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

/// A pair counted, as a slot of the table: its group's id, the filters it passed (bit `j`:
/// filter `j`; and [`CHANGED`]), its value (an integer's bits, or an interned row's id).
trait Slot: Copy {
    fn new(group: u32, value: u64, bits: u32) -> Self;
    fn group(&self) -> u32;
    fn value(&self) -> u64;
    fn bits(&self) -> u32;
    fn bits_mut(&mut self) -> &mut u32;
}

/// A pair whose value fits 32 bits: 12 bytes.
#[derive(Debug, Clone, Copy)]
struct Narrow {
    group: u32,
    bits: u32,
    value: u32,
}

/// Any pair: 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Wide {
    group: u32,
    bits: u32,
    value: u64,
}

impl Slot for Narrow {
    fn new(group: u32, value: u64, bits: u32) -> Self {
        Narrow {
            group,
            bits,
            value: value as u32,
        }
    }
    fn group(&self) -> u32 {
        self.group
    }
    fn value(&self) -> u64 {
        u64::from(self.value)
    }
    fn bits(&self) -> u32 {
        self.bits
    }
    fn bits_mut(&mut self) -> &mut u32 {
        &mut self.bits
    }
}

impl Slot for Wide {
    fn new(group: u32, value: u64, bits: u32) -> Self {
        Wide { group, bits, value }
    }
    fn group(&self) -> u32 {
        self.group
    }
    fn value(&self) -> u64 {
        self.value
    }
    fn bits(&self) -> u32 {
        self.bits
    }
    fn bits_mut(&mut self) -> &mut u32 {
        &mut self.bits
    }
}

/// The pairs, in 12-byte slots while every value fits 32 bits (ids and small counts mostly
/// do), in 16-byte ones from the first that does not.
enum Table {
    Narrow(HashTable<Narrow>),
    Wide(HashTable<Wide>),
}

fn hash_of(hasher: &RandomState, group: u32, value: u64) -> u64 {
    hasher.hash_one((group, value))
}

fn find<T: Slot>(table: &HashTable<T>, hasher: &RandomState, group: u32, value: u64) -> u32 {
    table
        .find(hash_of(hasher, group, value), |p| {
            p.group() == group && p.value() == value
        })
        .map_or(0, |p| p.bits() & !CHANGED)
}

/// Adds `filters | changed` to the pair's bits; returns whether it became changed.
fn add_to<T: Slot>(
    table: &mut HashTable<T>,
    hasher: &RandomState,
    group: u32,
    value: u64,
    filters: u32,
    changed: u32,
) -> bool {
    match table.entry(
        hash_of(hasher, group, value),
        |p| p.group() == group && p.value() == value,
        |p| hash_of(hasher, p.group(), p.value()),
    ) {
        Entry::Occupied(mut e) => {
            let bits = e.get_mut().bits_mut();
            if *bits | filters == *bits {
                return false;
            }
            let became = *bits & CHANGED == 0 && changed != 0;
            *bits |= filters | changed;
            became
        }
        Entry::Vacant(v) => {
            v.insert(T::new(group, value, filters | changed));
            changed != 0
        }
    }
}

/// A pair as snapshots read it: group id, value, filters.
pub type PairRow = (u32, u64, u32);

fn row_of<T: Slot>(p: &T) -> PairRow {
    (p.group(), p.value(), p.bits() & !CHANGED)
}

/// The pairs of one DISTINCT argument counted so far.
pub struct Pairs {
    table: Table,
    hasher: RandomState,
    /// Pairs marked [`CHANGED`].
    changed: usize,
}

impl Default for Pairs {
    fn default() -> Self {
        Pairs {
            table: Table::Narrow(HashTable::new()),
            hasher: RandomState::new(),
            changed: 0,
        }
    }
}

impl Pairs {
    /// The filters the pair passed so far (0 when it was never counted).
    pub fn filters(&self, group: u32, value: u64) -> u32 {
        match &self.table {
            // A narrow table holds no value past 32 bits.
            Table::Narrow(_) if value > u64::from(u32::MAX) => 0,
            Table::Narrow(t) => find(t, &self.hasher, group, value),
            Table::Wide(t) => find(t, &self.hasher, group, value),
        }
    }

    /// Adds `filters` to the pair's, marking it changed when they are new to it (unless
    /// `restored`: then it is as of the last snapshot).
    pub fn add(&mut self, group: u32, value: u64, filters: u32, restored: bool) {
        let changed = if restored { 0 } else { CHANGED };
        let filters = filters & !CHANGED;
        if let Table::Narrow(narrow) = &self.table {
            if value > u64::from(u32::MAX) {
                let mut wide = HashTable::with_capacity(narrow.len() + 1);
                for p in narrow.iter() {
                    wide.insert_unique(
                        hash_of(&self.hasher, p.group, u64::from(p.value)),
                        Wide::new(p.group, u64::from(p.value), p.bits),
                        |w| hash_of(&self.hasher, w.group, w.value),
                    );
                }
                self.table = Table::Wide(wide);
            }
        }
        let became = match &mut self.table {
            Table::Narrow(t) => add_to(t, &self.hasher, group, value, filters, changed),
            Table::Wide(t) => add_to(t, &self.hasher, group, value, filters, changed),
        };
        if became {
            self.changed += 1;
        }
    }

    /// Every pair, in no order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = PairRow> + '_> {
        match &self.table {
            Table::Narrow(t) => Box::new(t.iter().map(row_of)),
            Table::Wide(t) => Box::new(t.iter().map(row_of)),
        }
    }

    /// The pairs changed since [`Pairs::clear_changed`], in no order.
    pub fn changed(&self) -> Box<dyn Iterator<Item = PairRow> + '_> {
        match &self.table {
            Table::Narrow(t) => Box::new(t.iter().filter(|p| p.bits & CHANGED != 0).map(row_of)),
            Table::Wide(t) => Box::new(t.iter().filter(|p| p.bits & CHANGED != 0).map(row_of)),
        }
    }

    /// How many pairs changed since [`Pairs::clear_changed`].
    pub fn changed_len(&self) -> usize {
        self.changed
    }

    /// Marks every pair as of the snapshot just taken.
    pub fn clear_changed(&mut self) {
        if self.changed == 0 {
            return;
        }
        match &mut self.table {
            Table::Narrow(t) => t.iter_mut().for_each(|p| p.bits &= !CHANGED),
            Table::Wide(t) => t.iter_mut().for_each(|p| p.bits &= !CHANGED),
        }
        self.changed = 0;
    }

    /// Pairs counted.
    pub fn len(&self) -> usize {
        match &self.table {
            Table::Narrow(t) => t.len(),
            Table::Wide(t) => t.len(),
        }
    }

    /// Bytes it holds in memory.
    pub fn bytes(&self) -> usize {
        match &self.table {
            Table::Narrow(t) => t.capacity() * (std::mem::size_of::<Narrow>() + 1),
            Table::Wide(t) => t.capacity() * (std::mem::size_of::<Wide>() + 1),
        }
    }

    /// Bytes it may hold while `more` pairs go in: when they may not fit its capacity, the
    /// table grows, holding the old table and one twice its size at once.
    pub fn bytes_taking(&self, more: usize) -> usize {
        let capacity = match &self.table {
            Table::Narrow(t) => t.capacity(),
            Table::Wide(t) => t.capacity(),
        };
        match self.len() + more > capacity {
            true => 3 * self.bytes(),
            false => self.bytes(),
        }
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
        assert!(pairs.bytes() >= 100_000 * 13);
        // A value past 32 bits widens the table; the pairs stay.
        let narrow = pairs.bytes();
        pairs.add(9, u64::MAX - 1, 2, false);
        assert!(pairs.bytes() > narrow);
        assert_eq!(pairs.filters(9, u64::MAX - 1), 2);
        assert_eq!(pairs.filters(0, 0), 5);
        assert_eq!(pairs.len(), 100_001);
        assert_eq!(pairs.changed_len(), 2);
        let mut changed: Vec<PairRow> = pairs.changed().collect();
        changed.sort_unstable();
        assert_eq!(changed, vec![(0, 0, 5), (9, u64::MAX - 1, 2)]);
    }
}
