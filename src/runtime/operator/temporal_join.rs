//! A stream joined with a table kept up to date by its change stream (a CDC source), in
//! processing time: each stream row joins the table's rows as they are when the row is
//! processed, and later changes to the table do not rewrite rows already joined. The table is
//! the state; stream rows are not kept. DataFusion's planned join does the joining, over the
//! stream batch and the table rows its keys find.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::key_index::{join_keys, KeyIndex};
use super::keyed_rows::{Changes, KeyedRows};
use super::spill::StateChunk;
use super::{run_plan_inputs, Operator};
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};

/// What the operator is built from, as the SQL front end plans it.
#[derive(Debug, Clone)]
pub struct TemporalJoinSpec {
    /// DataFusion's join over a placeholder for each side, left first.
    pub join: Arc<dyn ExecutionPlan>,
    /// Which input (0, left; 1, right) is the table.
    pub table_port: usize,
    /// The join's key expressions over the stream side's rows.
    pub stream_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The same over the table side's rows.
    pub table_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The stream side's columns.
    pub stream_schema: SchemaRef,
    /// The table side's columns, as the join reads them.
    pub table_schema: SchemaRef,
    /// The table side's rows as they arrive: its columns, its primary key, `_op`.
    pub change_schema: SchemaRef,
}

/// Changes to the table with their join keys, waiting for their commit.
struct Prepared {
    changes: Changes,
    keys: Rows,
}

/// A stream joined with the current rows of a table.
pub struct TemporalJoin {
    spec: TemporalJoinSpec,
    key_values: RowConverter,
    table: KeyedRows,
    /// The current rows by join key.
    by_key: KeyIndex,
    pending: Vec<Prepared>,
    task: Arc<TaskContext>,
    budget: Option<Budget>,
}

impl TemporalJoin {
    /// The operator for a planned join.
    pub fn new(spec: TemporalJoinSpec) -> Result<Self> {
        let columns = spec.table_schema.fields().len();
        let width = spec.change_schema.fields().len();
        if width < columns + 2 {
            return Err(Error::Internal(
                "a join with a change stream needs its rows' primary key and _op".into(),
            ));
        }
        let table = KeyedRows::new(spec.change_schema.clone(), columns..width - 1)?;
        let key_values = RowConverter::new(
            spec.table_keys
                .iter()
                .map(|k| Ok(SortField::new(k.data_type(&spec.table_schema)?)))
                .collect::<Result<Vec<_>>>()?,
        )?;
        Ok(TemporalJoin {
            spec,
            key_values,
            table,
            by_key: KeyIndex::default(),
            pending: Vec::new(),
            task: Arc::new(TaskContext::default()),
            budget: None,
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "temporal_join"));
        self
    }

    fn prepare(&self, batch: &RecordBatch) -> Result<Prepared> {
        let changes = self.table.prepare(batch)?;
        let keys = join_keys(&self.key_values, &self.spec.table_keys, &changes.batch)?;
        Ok(Prepared { changes, keys })
    }

    fn apply(&mut self, p: Prepared) {
        let Prepared { changes, keys } = p;
        let Self { table, by_key, .. } = self;
        table.apply(
            changes,
            |_, _| {},
            |i, id| {
                by_key.insert(keys.row(i).as_ref(), id);
                0
            },
        );
    }

    /// Joins a batch of the stream with the table's current rows.
    fn probe(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let keys = join_keys(&self.key_values, &self.spec.stream_keys, &batch)?;
        let mut seen = HashSet::new();
        let mut found: Vec<(usize, usize)> = Vec::new();
        for key in keys.iter() {
            for id in self.by_key.live(key.as_ref(), &self.table) {
                if seen.insert(id) {
                    found.push(id);
                }
            }
        }
        let columns = self.spec.table_schema.fields().len();
        let candidates = RecordBatch::try_new(
            self.spec.table_schema.clone(),
            self.table.gather(0..columns, &found)?,
        )?;
        let stream =
            RecordBatch::try_new(self.spec.stream_schema.clone(), batch.columns().to_vec())?;
        let sides = match self.spec.table_port {
            0 => vec![
                (self.spec.table_schema.clone(), vec![candidates]),
                (self.spec.stream_schema.clone(), vec![stream]),
            ],
            _ => vec![
                (self.spec.stream_schema.clone(), vec![stream]),
                (self.spec.table_schema.clone(), vec![candidates]),
            ],
        };
        run_plan_inputs(&self.spec.join, sides, &self.task)
    }

    fn memory_bytes(&self) -> usize {
        self.table.memory_bytes() + self.by_key.bytes()
    }
}

impl Operator for TemporalJoin {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "temporal_join"
    }

    /// A change to the table is staged until its batch commits; a stream batch joins the
    /// table as committed.
    fn process(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        if input == self.spec.table_port {
            let prepared = self.prepare(&batch)?;
            self.pending.push(prepared);
            return Ok(Vec::new());
        }
        self.probe(batch)
    }

    fn commit_batch(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.apply(p);
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.table.schema().clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        self.table.snapshot(full)
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        for chunk in &state {
            // A batch at a time: a spilled chunk may not fit in memory whole.
            for batch in chunk.batches()? {
                let batch = batch?;
                let prepared = self.prepare(&batch)?;
                self.apply(prepared);
                self.fit_memory()?;
            }
        }
        self.table.restored();
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        if let Some(moved) = self.table.compact_if_due()? {
            self.by_key.remap(&moved);
        }
        let other = self.memory_bytes() - self.table.memory_bytes();
        self.table.fit(
            self.budget.as_mut(),
            other,
            "a join's table (the keys of the current rows of its change stream)",
        )
    }

    fn spilled_bytes(&self) -> u64 {
        self.table.spilled_bytes()
    }

    fn state_rows(&self) -> usize {
        self.table.live_rows()
    }

    fn state_bytes(&self) -> usize {
        self.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::display::array_value_to_string;
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::runtime::operator::stateless::OP;
    use crate::runtime::operator::tests::{customers, join_plan, orders};

    /// `orders LEFT JOIN customers ON customer = id`, planned as the SQL front end plans it.
    async fn operator() -> TemporalJoin {
        let join = join_plan(
            &[("orders", orders()), ("customers", customers())],
            "SELECT order_id, name FROM orders LEFT JOIN customers ON customer = id",
        )
        .await;
        let mut changes: Vec<Field> = customers()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        changes.push(Field::new("id", DataType::Int32, true));
        changes.push(Field::new(OP, DataType::Utf8, true));
        TemporalJoin::new(TemporalJoinSpec {
            join,
            table_port: 1,
            stream_keys: vec![Arc::new(Column::new("customer", 1))],
            table_keys: vec![Arc::new(Column::new("id", 0))],
            stream_schema: orders(),
            table_schema: customers(),
            change_schema: Arc::new(Schema::new(changes)),
        })
        .unwrap()
    }

    /// Changes to customers: (id, name, op); a delete carries its key alone.
    fn changes(rows: &[(i32, Option<&str>, &str)]) -> RecordBatch {
        let mut fields: Vec<Field> = customers()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("id", DataType::Int32, true));
        fields.push(Field::new(OP, DataType::Utf8, true));
        let ids = Arc::new(Int32Array::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        ));
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            vec![
                ids.clone(),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                ids,
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn order_batch(rows: &[(i32, i32)]) -> RecordBatch {
        RecordBatch::try_new(
            orders(),
            vec![
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// (order, name) of joined rows (the join's columns: the order's, then the customer's),
    /// sorted.
    fn joined(batches: &[RecordBatch]) -> Vec<String> {
        let mut out: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(|i| {
                    let value = |c: usize| array_value_to_string(b.column(c), i).unwrap();
                    format!("{} {}", value(0), value(3))
                })
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn each_order_joins_the_table_as_it_is_when_the_order_arrives() {
        let mut op = operator().await;
        op.process(
            1,
            changes(&[(1, Some("ann"), "insert"), (2, Some("bob"), "insert")]),
        )
        .unwrap();
        op.commit_batch();
        let first = op
            .process(0, order_batch(&[(10, 1), (11, 2), (12, 3)]))
            .unwrap();
        assert_eq!(joined(&first), ["10 ann", "11 bob", "12 "]);
        // A change a later operator failed on leaves nothing behind.
        op.process(1, changes(&[(1, Some("nobody"), "update")]))
            .unwrap();
        op.abort_batch();
        let full = op.snapshot(true).unwrap();
        op.process(
            1,
            changes(&[
                (1, Some("ANN"), "update"),
                (2, None, "delete"),
                (3, Some("cy"), "insert"),
            ]),
        )
        .unwrap();
        op.commit_batch();
        let changed = op.snapshot(false).unwrap();
        let later = op
            .process(0, order_batch(&[(13, 1), (14, 2), (15, 3)]))
            .unwrap();
        assert_eq!(joined(&later), ["13 ANN", "14 ", "15 cy"]);
        assert_eq!(op.state_rows(), 2);
        // Restored from its snapshots, it joins the same.
        let mut restored = operator().await;
        restored.restore([full, changed].concat(), None).unwrap();
        let again = restored
            .process(0, order_batch(&[(13, 1), (14, 2), (15, 3)]))
            .unwrap();
        assert_eq!(joined(&again), joined(&later));
    }

    #[tokio::test]
    async fn a_table_changed_many_times_compacts_and_joins_the_same() {
        let mut op = operator().await;
        for round in 0..60 {
            let rows: Vec<(i32, String)> =
                (0..200).map(|id| (id, format!("n{round}-{id}"))).collect();
            let batch: Vec<(i32, Option<&str>, &str)> = rows
                .iter()
                .map(|(id, n)| (*id, Some(n.as_str()), "update"))
                .collect();
            op.process(1, changes(&batch)).unwrap();
            op.commit_batch();
            op.fit_memory().unwrap();
        }
        assert!(
            op.table.dead_rows() < 4_096 + 200,
            "{}",
            op.table.dead_rows()
        );
        let out = op
            .process(0, order_batch(&[(1, 7), (2, 199), (3, 200)]))
            .unwrap();
        assert_eq!(joined(&out), ["1 n59-7", "2 n59-199", "3 "]);
    }
}
