//! The pairs of DISTINCT marks past the state memory: on disk as sorted runs keyed by the
//! group's and the value's bytes (not their interned ids), so that when every pair spills the
//! groups and values interned leave memory with them.

use std::borrow::Cow;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::row::Rows;

use super::{
    from_integer_bits, Counted, DistinctMarks, Encoding, Interner, PairRow, Pairs, SpillWriter,
    StateChunk, STATE_ROWS,
};
use crate::error::Result;
use crate::runtime::memory::StateMemory;
use crate::runtime::operator::key_runs::{Entry, KeyRuns};

/// One argument's pairs on disk, with their filters.
#[derive(Default)]
pub struct OnDisk {
    runs: KeyRuns,
}

impl OnDisk {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Entries on disk (a pair spilled twice, with filters passed after the first spill, is
    /// there twice until the runs merge).
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn memory_bytes(&self) -> usize {
        self.runs.memory_bytes()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.runs.disk_bytes()
    }

    /// Every entry on disk, for a full snapshot.
    pub fn entries(&self) -> impl Iterator<Item = Result<Entry>> + '_ {
        self.runs.keys()
    }

    /// The filters on disk of the pairs of `rows`, whose group and value bytes are `group(row)`
    /// and `value(row)`, by position in `rows`.
    pub fn filters<'a>(
        &self,
        rows: &[usize],
        group: impl Fn(usize) -> &'a [u8],
        value: impl Fn(usize) -> Cow<'a, [u8]>,
    ) -> Result<Vec<u32>> {
        let mut keys: Vec<(Box<[u8]>, usize)> = rows
            .iter()
            .enumerate()
            .map(|(at, &r)| (disk_key(group(r), &value(r)), at))
            .collect();
        keys.sort_unstable();
        let probes: Vec<&[u8]> = keys.iter().map(|(k, _)| k.as_ref()).collect();
        let mut out = vec![0; rows.len()];
        for ((_, at), f) in keys.iter().zip(self.runs.flags_sorted(&probes)?) {
            out[*at] = f;
        }
        Ok(out)
    }
}

/// A pair's key on disk: the group's row length (4 bytes, big-endian), its row, the value's
/// bytes.
fn disk_key(group: &[u8], value: &[u8]) -> Box<[u8]> {
    let mut key = Vec::with_capacity(4 + group.len() + value.len());
    key.extend_from_slice(&(group.len() as u32).to_be_bytes());
    key.extend_from_slice(group);
    key.extend_from_slice(value);
    key.into()
}

/// A key on disk's group and value bytes.
fn split_key(key: &[u8]) -> (&[u8], &[u8]) {
    let len = u32::from_be_bytes(key[..4].try_into().expect("a pair key")) as usize;
    (&key[4..4 + len], &key[4 + len..])
}

impl Encoding {
    /// A value's bytes on disk: an integer's bits (big-endian), another value's row (row `r`
    /// of `rows` when given, else as interned).
    pub(super) fn value_bytes<'a>(
        &'a self,
        bits: u64,
        rows: Option<&'a Rows>,
        r: usize,
    ) -> Cow<'a, [u8]> {
        match (self, rows) {
            (Encoding::Integer { .. }, _) => Cow::Owned(bits.to_be_bytes().to_vec()),
            (Encoding::Interned { .. }, Some(rows)) => Cow::Borrowed(rows.row(r).data()),
            (Encoding::Interned { values, .. }, None) => Cow::Borrowed(values.row(bits as u32)),
        }
    }

    /// Values of type `t` from their bytes on disk.
    fn decode_bytes(&self, values: &[&[u8]], t: &DataType) -> Result<ArrayRef> {
        match self {
            Encoding::Integer { carrier } => {
                let bits: Vec<u64> = values
                    .iter()
                    .map(|v| u64::from_be_bytes((*v).try_into().expect("8 bytes")))
                    .collect();
                from_integer_bits(&bits, carrier, t)
            }
            Encoding::Interned { converter, .. } => {
                let parser = converter.parser();
                Ok(converter
                    .convert_rows(values.iter().map(|v| parser.parse(v)))?
                    .remove(0))
            }
        }
    }

    /// Forgets the values interned (none of them is named by a pair in memory any more).
    fn forget(&mut self) {
        if let Encoding::Interned { values, .. } = self {
            *values = Interner::default();
        }
    }
}

impl Counted {
    /// Bytes in memory: pairs, values interned, the filters and indexes of those on disk.
    pub(super) fn bytes(&self) -> usize {
        self.pairs.bytes() + self.on_disk.memory_bytes() + self.encoding.bytes()
    }

    /// The same while a batch of `rows` more pairs goes in (the pair table may grow).
    pub(super) fn bytes_taking(&self, rows: usize) -> usize {
        self.pairs.bytes_taking(rows) + self.on_disk.memory_bytes() + self.encoding.bytes()
    }
}

impl DistinctMarks {
    /// Moves every pair in memory to disk, then forgets the groups and values interned: new
    /// rows intern them afresh. The pairs changed since the last snapshot go to a state file
    /// too, which the next snapshot takes. Called between batches (nothing pending).
    pub(super) fn spill(&mut self, memory: &StateMemory) -> Result<()> {
        if self.values.iter().all(|c| c.pairs.len() == 0) {
            return Ok(());
        }
        let mut changes = SpillWriter::new(memory, &self.state_schema)?;
        for at in 0..self.values.len() {
            let changed: Vec<PairRow> = self.values[at].pairs.changed().collect();
            for chunk in changed.chunks(STATE_ROWS) {
                changes.write(&self.state_batch(at, chunk)?)?;
            }
        }
        self.spilled_changes
            .extend(changes.finish()?.map(StateChunk::Spilled));
        for counted in &mut self.values {
            let key = |(g, v, f): PairRow| {
                let value = counted.encoding.value_bytes(v, None, 0);
                (disk_key(self.group_ids.row(g), &value), f)
            };
            tracing::debug!(
                pairs = counted.pairs.len(),
                "DISTINCT marks spilled to disk."
            );
            counted
                .on_disk
                .runs
                .spill(memory, counted.pairs.iter().map(key))?;
            counted.pairs = Pairs::default();
            counted.encoding.forget();
        }
        self.group_ids = Interner::default();
        Ok(())
    }

    /// State rows of argument `at` for `entries` on disk.
    pub(super) fn state_batch_of_keys(
        &self,
        at: usize,
        entries: &[(Box<[u8]>, u32)],
    ) -> Result<RecordBatch> {
        let split: Vec<(&[u8], &[u8])> = entries.iter().map(|(k, _)| split_key(k)).collect();
        let parser = self.group_converter.parser();
        let groups = self
            .group_converter
            .convert_rows(split.iter().map(|(g, _)| parser.parse(g)))?;
        let counted = &self.values[at];
        let values: Vec<&[u8]> = split.iter().map(|(_, v)| *v).collect();
        let values = counted.encoding.decode_bytes(&values, &counted.data_type)?;
        let filters = UInt32Array::from_iter_values(entries.iter().map(|(_, f)| *f));
        self.state_rows_of(at, groups, values, filters)
    }
}
