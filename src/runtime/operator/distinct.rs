//! Streaming `SELECT DISTINCT`: emits each row the first time it is seen; the rows seen are the
//! operator's state, snapshotted as batches of the rows themselves.

use std::collections::HashSet;

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use std::sync::Arc;

use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;

use super::parallel::Keying;
use super::spill::{load, StateChunk};
use super::Operator;
use crate::error::Result;
use crate::runtime::memory::{Budget, StateMemory};

/// Bytes of bookkeeping per key beyond the key itself (hash table slot, allocation header).
const KEY_OVERHEAD: usize = 40;

/// The first occurrence of every row passes; later ones are dropped.
pub struct Distinct {
    schema: SchemaRef,
    /// Rows in Arrow's row format: comparable bytes, one per key.
    converter: RowConverter,
    seen: HashSet<Box<[u8]>>,
    /// Keys first seen by batches not yet committed.
    pending: HashSet<Box<[u8]>>,
    /// Keys committed since the last snapshot.
    unsnapshotted: Vec<Box<[u8]>>,
    bytes: usize,
    /// Its share of the run's state memory (none: unaccounted). The keys are looked up by
    /// every row, so they stay in memory: past the budget the pipeline fails.
    budget: Option<Budget>,
}

impl Distinct {
    /// A distinct over rows of `schema`.
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Distinct {
            converter: RowConverter::new(fields)?,
            schema,
            seen: HashSet::new(),
            pending: HashSet::new(),
            unsnapshotted: Vec::new(),
            bytes: 0,
            budget: None,
        })
    }

    /// The same, its keys accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "distinct"));
        self
    }

    /// Rows of `schema` from keys in Arrow's row format.
    fn rows_batch<'a>(&self, keys: impl Iterator<Item = &'a Box<[u8]>>) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let columns = self.converter.convert_rows(keys.map(|k| parser.parse(k)))?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn insert(&mut self, key: Box<[u8]>) -> bool {
        let len = key.len();
        let fresh = self.seen.insert(key);
        if fresh {
            self.bytes += len + KEY_OVERHEAD;
        }
        fresh
    }
}

impl Operator for Distinct {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "distinct"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let rows = self.converter.convert_columns(batch.columns())?;
        let keep: BooleanArray = rows
            .iter()
            .map(|r| {
                let key = r.as_ref();
                Some(!self.seen.contains(key) && self.pending.insert(key.into()))
            })
            .collect();
        Ok(vec![filter_record_batch(&batch, &keep)?])
    }

    fn commit_batch(&mut self) {
        for key in std::mem::take(&mut self.pending) {
            if self.insert(key.clone()) {
                self.unsnapshotted.push(key);
            }
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.schema.clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let changed = std::mem::take(&mut self.unsnapshotted);
        let batch = if full {
            self.rows_batch(self.seen.iter())?
        } else {
            self.rows_batch(changed.iter())?
        };
        Ok(super::spill::in_memory([batch]))
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        for chunk in &state {
            for batch in load(std::slice::from_ref(chunk))? {
                let rows = self.converter.convert_columns(batch.columns())?;
                for r in rows.iter() {
                    self.insert(r.as_ref().into());
                }
            }
            self.fit_memory()?;
        }
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        let bytes = self.bytes;
        Budget::hold_in(self.budget.as_mut(), bytes, "DISTINCT's set of rows seen")
    }

    fn state_rows(&self) -> usize {
        self.seen.len()
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    fn keying(&self) -> Option<Keying> {
        let columns = self.schema.fields().iter().enumerate();
        Some(Keying {
            inputs: vec![columns
                .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>)
                .collect()],
            state: (0..self.schema.fields().len()).collect(),
        })
    }
}

/// Rows of `schema` from keys in Arrow's row format: how checkpoints before state files stored
/// the rows a DISTINCT had seen (hex-encoded in the checkpoint document).
pub fn rows_from_row_format(schema: SchemaRef, keys: &[Vec<u8>]) -> Result<RecordBatch> {
    let distinct = Distinct::new(schema)?;
    let keys: Vec<Box<[u8]>> = keys.iter().map(|k| k.as_slice().into()).collect();
    distinct.rows_batch(keys.iter())
}
