//! Where a table's rows are by join key: the index that the joins with tables kept by change
//! streams keep beside the table's rows. Ids of rows that died since are dropped as found.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows};
use datafusion::physical_expr::PhysicalExpr;

use super::keyed_rows::{KeyedRows, Moved, RowId, KEY_OVERHEAD};
use crate::error::Result;

/// The join keys of `batch`'s rows: `exprs` evaluated, in row format.
pub fn join_keys(
    converter: &RowConverter,
    exprs: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Rows> {
    let n = batch.num_rows();
    let values = exprs
        .iter()
        .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
        .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
    Ok(converter.convert_columns(&values)?)
}

/// Row ids by join key.
#[derive(Default)]
pub struct KeyIndex {
    by_key: HashMap<Box<[u8]>, Vec<RowId>, ahash::RandomState>,
    bytes: usize,
}

impl KeyIndex {
    /// Notes row `id` under join key `key`.
    pub fn insert(&mut self, key: &[u8], id: RowId) {
        match self.by_key.get_mut(key) {
            Some(ids) => ids.push(id),
            None => {
                self.bytes += key.len() + KEY_OVERHEAD;
                self.by_key.insert(key.into(), vec![id]);
            }
        }
        self.bytes += 8;
    }

    /// The rows of `rows` that are current under join key `key`.
    pub fn live(&mut self, key: &[u8], rows: &KeyedRows) -> Vec<(usize, usize)> {
        let Some(ids) = self.by_key.get_mut(key) else {
            return Vec::new();
        };
        ids.retain(|&id| rows.is_live(id));
        ids.iter().map(|&(b, i)| (b as usize, i as usize)).collect()
    }

    /// Follows the rows a compaction of their table moved; the dead ones leave.
    pub fn remap(&mut self, moved: &Moved) {
        self.by_key.retain(|_, ids| {
            *ids = ids.iter().filter_map(|&id| moved.get(id)).collect();
            !ids.is_empty()
        });
        self.bytes = self
            .by_key
            .iter()
            .map(|(k, ids)| k.len() + KEY_OVERHEAD + 8 * ids.len())
            .sum();
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
