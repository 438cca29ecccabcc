//! The state of a join of two streams as Arrow rows: each kept row with its side, when it was
//! kept, its id, whether it matched, its key (parallel instances split the state by it) and its
//! columns; and, in change snapshots, a row per mark set on a row written before.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    new_null_array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
    UInt64Array, UInt8Array,
};
use arrow::compute::{filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type, UInt8Type};

use super::side::{Kept, Pending};
use super::{StreamJoin, RIGHT_ROW_ID, ROW_ID};
use crate::error::Result;
use crate::runtime::operator::spill::{in_memory, writer_in, SpillWriter, StateChunk, StoredBatch};
use crate::runtime::operator::Operator;

/// `__side` of a mark: row `__rid` of a preserved side matched (row ids are unique across
/// sides).
const MARK: u8 = 2;
/// Columns before the key: `__side`, `__kept_at`, `__rid`, `__matched`.
const LEADING: usize = 4;

/// The state schema of a join keyed by `keys` over sides of `schemas`.
pub(super) fn schema(keys: &[DataType], schemas: &[SchemaRef; 2]) -> SchemaRef {
    let fields: Vec<Field> = [
        Field::new("__side", DataType::UInt8, false),
        Field::new("__kept_at", DataType::Int64, false),
        Field::new(ROW_ID, DataType::UInt64, false),
        Field::new("__matched", DataType::Boolean, false),
    ]
    .into_iter()
    .chain(
        keys.iter()
            .enumerate()
            .map(|(i, t)| Field::new(format!("__key{i}"), t.clone(), true)),
    )
    .chain(schemas.iter().enumerate().flat_map(|(s, schema)| {
        schema
            .fields()
            .iter()
            .map(move |f| Field::new(format!("{s}.{}", f.name()), f.data_type().clone(), true))
    }))
    .collect();
    Arc::new(Schema::new(fields))
}

/// The state columns that hold the key.
pub(super) fn key_columns(keys: usize) -> Vec<usize> {
    (LEADING..LEADING + keys).collect()
}

/// `schema`, side `side`'s, with a row id column after its own.
pub(super) fn with_row_id(schema: &SchemaRef, side: usize) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let name = if side == 0 { ROW_ID } else { RIGHT_ROW_ID };
    fields.push(Field::new(name, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// State rows: `side`, `kept_at`, row ids, marks and keys for each row, then `columns` as the
/// side `side`'s columns (none for marks) and NULLs for the rest.
fn state_rows(
    op: &StreamJoin,
    side: u8,
    kept_at: i64,
    rids: &UInt64Array,
    matched: BooleanArray,
    keys: Vec<ArrayRef>,
    columns: Option<&RecordBatch>,
) -> Result<RecordBatch> {
    let n = rids.len();
    let mut out: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from(vec![side; n])),
        Arc::new(Int64Array::from(vec![kept_at; n])),
        Arc::new(rids.clone()),
        Arc::new(matched),
    ];
    out.extend(keys);
    for (s, schema) in op.spec.schemas.iter().enumerate() {
        match columns {
            Some(batch) if s == side as usize => out.extend(batch.columns().iter().cloned()),
            _ => out.extend(
                schema
                    .fields()
                    .iter()
                    .map(|f| new_null_array(f.data_type(), n)),
            ),
        }
    }
    Ok(RecordBatch::try_new(op.state_schema.clone(), out)?)
}

/// A kept batch as state rows.
fn kept_rows(op: &StreamJoin, side: usize, kept: &Kept) -> Result<RecordBatch> {
    let batch = kept.columns.batch()?;
    let n = batch.num_rows();
    let matched: BooleanArray = (0..n)
        .map(|i| Some(kept.matched.get(i).copied().unwrap_or(false)))
        .collect();
    let keys = op.key_columns(side, &batch)?;
    state_rows(
        op,
        side as u8,
        kept.kept_at,
        &kept.rids,
        matched,
        keys,
        Some(&batch),
    )
}

/// The committed state: all of it when `full`; otherwise the batches kept since the last
/// snapshot, and marks set since on rows written before.
pub(super) fn snapshot(op: &mut StreamJoin, full: bool) -> Result<Vec<StateChunk>> {
    let mut out = Vec::new();
    // The rows of spilled batches go to a file, not back into memory.
    let memory = op.budget.as_ref().map(|b| b.memory().clone());
    let mut to_disk: Option<SpillWriter> = None;
    for side in 0..2 {
        let s = &op.sides[side];
        let ids: Vec<u64> = if full {
            let mut ids: Vec<u64> = s.kept.keys().copied().collect();
            ids.sort_unstable();
            ids
        } else {
            s.unsnapshotted.clone()
        };
        for id in &ids {
            let Some(k) = s.kept.get(id) else {
                continue;
            };
            let rows = kept_rows(op, side, k)?;
            match (&k.columns, &memory) {
                (StoredBatch::Spilled { .. }, Some(memory)) => {
                    writer_in(&mut to_disk, memory, &op.state_schema)?.write(&rows)?
                }
                _ => out.push(rows),
            }
        }
        if !full {
            // A batch written now holds its marks already.
            let written: HashSet<u64> = ids.into_iter().collect();
            for (b, r) in &s.marked {
                let Some(k) = s.kept.get(b).filter(|_| !written.contains(b)) else {
                    continue;
                };
                let at = UInt32Array::from(vec![*r]);
                let keys = op
                    .key_columns(side, &k.columns.batch()?)?
                    .iter()
                    .map(|c| Ok(take(c, &at, None)?))
                    .collect::<Result<Vec<_>>>()?;
                let rid = take(&k.rids, &at, None)?
                    .as_primitive::<UInt64Type>()
                    .clone();
                let matched = BooleanArray::from(vec![true]);
                out.push(state_rows(op, MARK, 0, &rid, matched, keys, None)?);
            }
        }
        let s = &mut op.sides[side];
        s.unsnapshotted.clear();
        s.marked.clear();
    }
    let mut chunks = in_memory(out);
    if let Some(file) = to_disk.map(SpillWriter::finish).transpose()?.flatten() {
        chunks.push(StateChunk::Spilled(file));
    }
    Ok(chunks)
}

/// Rebuilds the kept rows from snapshots in order, then sets the marks they record.
pub(super) fn restore(op: &mut StreamJoin, state: Vec<StateChunk>) -> Result<()> {
    let widths = [
        op.spec.schemas[0].fields().len(),
        op.spec.schemas[1].fields().len(),
    ];
    let keys = op.spec.keys[0].len();
    let mut marks: HashSet<u64> = HashSet::new();
    // A chunk at a time, spilling as the state grows past its memory.
    let batches = state.iter().map(|c| c.batches());
    for batch in batches.flat_map(|b| match b {
        Ok(batches) => batches,
        Err(e) => Box::new(std::iter::once(Err(e))),
    }) {
        let batch = batch?;
        let sides = batch.column(0).as_primitive::<UInt8Type>();
        let rids = batch.column(2).as_primitive::<UInt64Type>();
        for (s, rid) in sides.iter().zip(rids.iter()) {
            if let (Some(MARK), Some(rid)) = (s, rid) {
                marks.insert(rid);
            }
        }
        for side in 0..2 {
            let mask: BooleanArray = sides
                .iter()
                .map(|s| s.map(|s| s as usize == side))
                .collect();
            let rows = filter_record_batch(&batch, &mask)?;
            if rows.num_rows() == 0 {
                continue;
            }
            let start = LEADING + keys + if side == 0 { 0 } else { widths[0] };
            // Batches are stored as kept; were some merged, the latest keeps them all.
            let kept_at =
                arrow::compute::max(rows.column(1).as_primitive::<Int64Type>()).unwrap_or(i64::MIN);
            let matched = match op.preserves(side) {
                true => rows
                    .column(3)
                    .as_boolean()
                    .iter()
                    .map(|m| m.unwrap_or(false))
                    .collect(),
                false => Vec::new(),
            };
            let batch = RecordBatch::try_new(
                op.spec.schemas[side].clone(),
                rows.columns()[start..start + widths[side]].to_vec(),
            )?;
            let pending = Pending {
                keys: op.key_columns(side, &batch)?,
                batch,
                rids: rows.column(2).as_primitive::<UInt64Type>().clone(),
                matched,
            };
            op.keep(side, pending, kept_at)?;
        }
        op.fit_memory()?;
    }
    let preserved: Vec<usize> = (0..2).filter(|&p| op.preserves(p)).collect();
    for p in preserved {
        let s = &mut op.sides[p];
        for k in s.kept.values_mut() {
            for (m, rid) in k.matched.iter_mut().zip(k.rids.values()) {
                *m |= marks.contains(rid);
            }
        }
    }
    for side in &mut op.sides {
        side.unsnapshotted.clear();
        side.marked.clear();
    }
    Ok(())
}
