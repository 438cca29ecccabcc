//! A table kept by its change stream, its rows grouped by a key of their own: what both stages of
//! a GROUP BY over a change stream keep, apply, snapshot and restore alike.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};

use crate::error::Result;
use crate::runtime::memory::{Budget, StateMemory};
use crate::runtime::operator::keyed_rows::{Changes, KeyedRows};
use crate::runtime::operator::row_groups::RowGroups;
use crate::runtime::operator::spill::StateChunk;

/// A batch of changes with each row's group, waiting for its commit.
pub(super) struct Prepared {
    pub changes: Changes,
    groups: Rows,
}

/// The groups a checkpoint emits: the rows of those that have rows, and those left empty.
pub(super) struct Changed {
    /// The current rows of the changed groups, group after group.
    pub rows: Vec<(usize, usize)>,
    emptied: Vec<u32>,
}

/// Rows by key, grouped by the values of some of their columns (or values computed from them).
pub(super) struct GroupedTable {
    pub table: KeyedRows,
    group_values: RowConverter,
    groups: RowGroups<()>,
    pending: Vec<Prepared>,
    budget: Option<Budget>,
    /// What the state holds, for the error when it does not fit.
    what: &'static str,
}

impl GroupedTable {
    /// A table of rows of `schema` (`_op` last) keyed by `key`, grouped by values of
    /// `group_types`.
    pub fn new(
        schema: SchemaRef,
        key: Range<usize>,
        group_types: &[DataType],
        what: &'static str,
    ) -> Result<Self> {
        Ok(GroupedTable {
            table: KeyedRows::new(schema, key)?,
            group_values: RowConverter::new(
                group_types
                    .iter()
                    .map(|t| SortField::new(t.clone()))
                    .collect(),
            )?,
            groups: RowGroups::default(),
            pending: Vec::new(),
            budget: None,
            what,
        })
    }

    pub fn with_memory(&mut self, memory: &Arc<StateMemory>, name: &'static str) {
        self.budget = Some(Budget::new(memory, name));
    }

    /// Converts a batch of changes, `group_of` giving the group values of its rows (as the
    /// table's rows).
    pub fn prepare(
        &self,
        batch: &RecordBatch,
        group_of: impl FnOnce(&RecordBatch) -> Result<Vec<ArrayRef>>,
    ) -> Result<Prepared> {
        let changes = self.table.prepare(batch)?;
        let groups = self
            .group_values
            .convert_columns(&group_of(&changes.batch)?)?;
        Ok(Prepared { changes, groups })
    }

    /// Stages prepared changes until the batch is committed.
    pub fn stage(&mut self, prepared: Prepared) {
        self.pending.push(prepared);
    }

    pub fn commit(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.apply(p);
        }
    }

    pub fn abort(&mut self) {
        self.pending.clear();
    }

    /// Applies a batch of changes: the groups of the rows replaced and of the new rows change.
    fn apply(&mut self, p: Prepared) {
        let Prepared { changes, groups } = p;
        let mut left = Vec::new();
        let all = &mut self.groups;
        self.table.apply(
            changes,
            |_, g| left.push(g),
            |i, id| all.add(groups.row(i).as_ref(), id),
        );
        // The groups of rows replaced (always known groups).
        for g in left {
            all.touch(g);
        }
    }

    /// The groups changed since the last call.
    pub fn take_changed(&mut self) -> Changed {
        let mut rows = Vec::new();
        let mut emptied = Vec::new();
        let table = &self.table;
        for g in self.groups.take_changed(|id| table.is_live(id)) {
            let group = self.groups.get(g);
            if group.rows.is_empty() {
                emptied.push(g);
            } else {
                rows.extend(group.rows.iter().map(|&(b, i)| (b as usize, i as usize)));
            }
        }
        Changed { rows, emptied }
    }

    /// Whether the group of `key` (its values in Arrow's row format) has rows, or had them
    /// when last asked for changes.
    pub fn has_group(&self, key: &[u8]) -> bool {
        self.groups.contains(key)
    }

    /// A delete (`_op`) of each group left without rows, as rows of `schema`: the group values,
    /// then `extra` (one value, repeated), then NULLs. The groups are forgotten.
    pub fn deletes(
        &mut self,
        changed: &Changed,
        schema: &SchemaRef,
        extra: &[ArrayRef],
    ) -> Result<Option<RecordBatch>> {
        if changed.emptied.is_empty() {
            return Ok(None);
        }
        let parser = self.group_values.parser();
        let keys: Vec<&[u8]> = changed
            .emptied
            .iter()
            .map(|&g| self.groups.get(g).key.as_ref())
            .collect();
        let mut columns = self
            .group_values
            .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
        let n = changed.emptied.len();
        let repeat = UInt32Array::from(vec![0; n]);
        for value in extra {
            columns.push(take(value.as_ref(), &repeat, None)?);
        }
        let batch = delete_rows(schema, columns, n)?;
        for &g in &changed.emptied {
            self.groups.forget(g);
        }
        Ok(Some(batch))
    }

    /// Rebuilds the table from snapshots, `group_of` as in [`GroupedTable::prepare`]. Every
    /// group restored is left changed, to be emitted again.
    pub fn restore(
        &mut self,
        state: Vec<StateChunk>,
        group_of: impl Fn(&RecordBatch) -> Result<Vec<ArrayRef>>,
    ) -> Result<()> {
        for chunk in &state {
            // A batch at a time: a spilled chunk may not fit in memory whole.
            for batch in chunk.batches()? {
                let prepared = self.prepare(&batch?, &group_of)?;
                self.apply(prepared);
                self.fit_memory()?;
            }
        }
        self.table.restored();
        Ok(())
    }

    pub fn fit_memory(&mut self) -> Result<()> {
        if let Some(moved) = self.table.compact_if_due()? {
            self.groups.remap(&moved);
        }
        let other = self.memory_bytes() - self.table.memory_bytes();
        self.table.fit(self.budget.as_mut(), other, self.what)
    }

    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes() + self.groups.bytes()
    }
}

/// `n` deletes as rows of `schema`: `columns` lead them, NULLs follow, then `_op` = delete.
pub(super) fn delete_rows(
    schema: &SchemaRef,
    mut columns: Vec<ArrayRef>,
    n: usize,
) -> Result<RecordBatch> {
    let fields = schema.fields();
    for f in &fields[columns.len()..fields.len() - 1] {
        columns.push(new_null_array(f.data_type(), n));
    }
    columns.push(Arc::new(StringArray::from(vec!["delete"; n])));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
