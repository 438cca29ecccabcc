//! An inner join of two streams: each side keeps its rows, and every arriving batch joins the
//! other side's kept rows that share its keys. Bounded by event time (`ON a.k = b.k AND b.ts
//! BETWEEN a.ts - INTERVAL '1' HOUR AND a.ts`, an interval join), a row is kept until the
//! watermark shows that no row of the other side can still match it; without a bound (a
//! regular join), until `state_ttl` of processing time has passed, or for ever. DataFusion's
//! planned join evaluates the keys and the band; this operator only picks candidate rows and
//! forgets the expired ones. The output appends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt8Array};
use arrow::compute::{cast, filter_record_batch, interleave_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::spill::{in_memory, load, StateChunk};
use super::{run_plan_inputs, Operator};
use crate::error::{Error, Result};
use crate::runtime::event_time::END_OF_TIME;
use crate::runtime::memory::{Budget, StateMemory};

/// What the operator is built from, as the SQL front end plans it.
#[derive(Debug, Clone)]
pub struct StreamJoinSpec {
    /// DataFusion's join over a placeholder for each side, left first: equi-keys and band.
    pub join: Arc<dyn ExecutionPlan>,
    /// Each side's equi-key expressions, over its rows.
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// Each side's columns.
    pub schemas: [SchemaRef; 2],
    /// Per side, when the join's conditions bound the other side's event time by its rows':
    /// the side's event-time column, and the microseconds after it past which no row of the
    /// other side can match a row. The row is dropped once the watermark passes that.
    pub expiry: [Option<(usize, i64)>; 2],
}

/// A batch of one side's rows, kept until its last row expires.
struct Kept {
    batch: RecordBatch,
    /// The latest expiry of its rows (event time).
    expires: i64,
    /// When it was kept (UTC microseconds of the wall clock), for `state_ttl`.
    kept_at: i64,
    /// Bytes it holds, with its index entries.
    bytes: usize,
}

/// One side's kept rows, found by key.
#[derive(Default)]
struct Side {
    kept: HashMap<u64, Kept>,
    /// Rows by key: (batch id, row). Entries of dropped batches go at the next rebuild.
    index: HashMap<Box<[u8]>, Vec<(u64, u32)>, ahash::RandomState>,
    index_rows: usize,
    dropped_rows: usize,
    /// Batches processed, not yet committed.
    pending: Vec<RecordBatch>,
    /// Batches kept since the last snapshot.
    unsnapshotted: Vec<u64>,
    rows: usize,
    bytes: usize,
}

impl Side {
    fn keep(&mut self, id: u64, batch: RecordBatch, keys: &Rows, expires: i64, kept_at: i64) {
        for (r, key) in keys.iter().enumerate() {
            self.index
                .entry(key.as_ref().into())
                .or_default()
                .push((id, r as u32));
        }
        self.index_rows += batch.num_rows();
        self.rows += batch.num_rows();
        let bytes = batch.get_array_memory_size() + keys.size() + 16 * batch.num_rows();
        self.bytes += bytes;
        self.kept.insert(
            id,
            Kept {
                batch,
                expires,
                kept_at,
                bytes,
            },
        );
        self.unsnapshotted.push(id);
    }

    /// Drops the batches whose every row expired by `watermark`, or was kept before
    /// `kept_before`.
    fn expire(&mut self, watermark: i64, kept_before: i64) {
        let before = self.kept.len();
        let (mut rows, mut bytes) = (0, 0);
        self.kept.retain(|_, k| {
            let live = k.expires >= watermark && k.kept_at >= kept_before;
            if !live {
                rows += k.batch.num_rows();
                bytes += k.bytes;
            }
            live
        });
        if self.kept.len() == before {
            return;
        }
        self.rows -= rows;
        self.bytes -= bytes;
        self.dropped_rows += rows;
        if self.dropped_rows * 2 > self.index_rows {
            let kept = &self.kept;
            self.index.retain(|_, ids| {
                ids.retain(|(b, _)| kept.contains_key(b));
                !ids.is_empty()
            });
            self.index_rows -= self.dropped_rows;
            self.dropped_rows = 0;
        }
    }
}

/// An inner join of two streams within event-time bounds.
pub struct StreamJoin {
    spec: StreamJoinSpec,
    keys: RowConverter,
    sides: [Side; 2],
    next_id: u64,
    state_schema: SchemaRef,
    /// How long a row is kept at most, in processing time.
    ttl: Option<std::time::Duration>,
    /// The watermark, for expiries between watermarks.
    watermark: i64,
    task: Arc<TaskContext>,
    budget: Option<Budget>,
}

/// The wall clock in UTC microseconds.
fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl StreamJoin {
    /// The operator for a planned join.
    pub fn new(spec: StreamJoinSpec) -> Result<Self> {
        let types = spec.keys[0]
            .iter()
            .map(|k| Ok(SortField::new(k.data_type(&spec.schemas[0])?)))
            .collect::<Result<Vec<_>>>()?;
        if types.is_empty() || spec.keys[1].len() != types.len() {
            return Err(Error::Internal(
                "a join of two streams needs keys on both sides".into(),
            ));
        }
        // State rows: which side, when kept, then the left's columns, then the right's.
        let fields: Vec<Field> = [
            Field::new("__side", DataType::UInt8, false),
            Field::new("__kept_at", DataType::Int64, false),
        ]
        .into_iter()
        .chain(spec.schemas.iter().enumerate().flat_map(|(s, schema)| {
            schema
                .fields()
                .iter()
                .map(move |f| Field::new(format!("{s}.{}", f.name()), f.data_type().clone(), true))
        }))
        .collect();
        Ok(StreamJoin {
            keys: RowConverter::new(types)?,
            spec,
            sides: Default::default(),
            next_id: 0,
            state_schema: Arc::new(Schema::new(fields)),
            ttl: None,
            watermark: i64::MIN,
            task: Arc::new(TaskContext::default()),
            budget: None,
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "stream_join"));
        self
    }

    /// The same, keeping a row `ttl` of processing time at most.
    pub fn with_ttl(mut self, ttl: Option<std::time::Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Drops the rows expired by `watermark` (event time) and by the TTL; at the end of the
    /// input, all.
    fn expire(&mut self, watermark: i64) {
        let kept_before = match self.ttl {
            _ if watermark >= END_OF_TIME => i64::MAX,
            Some(ttl) => now_micros().saturating_sub(ttl.as_micros() as i64),
            None => i64::MIN,
        };
        for side in &mut self.sides {
            side.expire(watermark, kept_before);
        }
    }

    /// Key columns of `batch`, a batch of side `side`.
    fn key_columns(&self, side: usize, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let n = batch.num_rows();
        Ok(self.spec.keys[side]
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?)
    }

    /// Keeps a committed batch of `side`, kept at `kept_at`: its rows that can match (a key,
    /// and a time when its rows expire by event time), with the latest of their expiries.
    fn keep(&mut self, side: usize, batch: RecordBatch, kept_at: i64) -> Result<()> {
        let keys = self.key_columns(side, &batch)?;
        let time = match self.spec.expiry[side] {
            Some((column, _)) => Some(cast(
                batch.column(column),
                &DataType::Timestamp(TimeUnit::Microsecond, None),
            )?),
            None => None,
        };
        let usable: arrow::array::BooleanArray = (0..batch.num_rows())
            .map(|i| {
                Some(
                    time.as_ref().is_none_or(|t| t.is_valid(i))
                        && keys.iter().all(|k| k.is_valid(i)),
                )
            })
            .collect();
        let (batch, keys, time) = if usable.true_count() == batch.num_rows() {
            (batch, keys, time)
        } else {
            let keys = keys
                .iter()
                .map(|k| Ok(arrow::compute::filter(k, &usable)?))
                .collect::<Result<Vec<_>>>()?;
            let time = match time {
                Some(t) => Some(arrow::compute::filter(&t, &usable)?),
                None => None,
            };
            (filter_record_batch(&batch, &usable)?, keys, time)
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let expires = match (time, self.spec.expiry[side]) {
            (Some(time), Some((_, after))) => {
                let latest = arrow::compute::max(time.as_primitive::<TimestampMicrosecondType>());
                latest.unwrap_or(i64::MIN).saturating_add(after)
            }
            _ => i64::MAX,
        };
        let rows = self.keys.convert_columns(&keys)?;
        let id = self.next_id;
        self.next_id += 1;
        self.sides[side].keep(id, batch, &rows, expires, kept_at);
        Ok(())
    }

    /// The rows of side `side` whose keys are among `keys`, and its pending batches whole.
    fn candidates(&self, side: usize, keys: &Rows, valid: &[bool]) -> Result<Vec<RecordBatch>> {
        let s = &self.sides[side];
        let mut seen = HashSet::new();
        let mut ids: Vec<(u64, u32)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if !valid[i] || !seen.insert(key) {
                continue;
            }
            if let Some(found) = s.index.get(key.as_ref()) {
                ids.extend(found.iter().filter(|(b, _)| s.kept.contains_key(b)));
            }
        }
        let mut out = Vec::new();
        if !ids.is_empty() {
            let mut order: HashMap<u64, usize> = HashMap::new();
            let mut batches: Vec<&RecordBatch> = Vec::new();
            let indices: Vec<(usize, usize)> = ids
                .iter()
                .map(|(b, r)| {
                    let at = *order.entry(*b).or_insert_with(|| {
                        batches.push(&s.kept[b].batch);
                        batches.len() - 1
                    });
                    (at, *r as usize)
                })
                .collect();
            out.push(interleave_record_batch(&batches, &indices)?);
        }
        out.extend(s.pending.iter().cloned());
        Ok(out)
    }

    /// State rows of `batch`, a batch of side `side`.
    fn state_batch(&self, side: usize, kept: &Kept) -> Result<RecordBatch> {
        let batch = &kept.batch;
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from(vec![side as u8; n])),
            Arc::new(Int64Array::from(vec![kept.kept_at; n])),
        ];
        for (s, schema) in self.spec.schemas.iter().enumerate() {
            if s == side {
                columns.extend(batch.columns().iter().cloned());
            } else {
                columns.extend(
                    schema
                        .fields()
                        .iter()
                        .map(|f| new_null_array(f.data_type(), n)),
                );
            }
        }
        Ok(RecordBatch::try_new(self.state_schema.clone(), columns)?)
    }
}

impl Operator for StreamJoin {
    fn kind(&self) -> &'static str {
        "stream_join"
    }

    /// Joins a batch of one side with the other side's rows that share its keys; the batch is
    /// kept once committed.
    fn process(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let side = input.min(1);
        let batch =
            RecordBatch::try_new(self.spec.schemas[side].clone(), batch.columns().to_vec())?;
        let keys = self.key_columns(side, &batch)?;
        let valid: Vec<bool> = (0..batch.num_rows())
            .map(|i| keys.iter().all(|k| k.is_valid(i)))
            .collect();
        let rows = self.keys.convert_columns(&keys)?;
        let other = 1 - side;
        let candidates = self.candidates(other, &rows, &valid)?;
        self.sides[side].pending.push(batch.clone());
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mine = (self.spec.schemas[side].clone(), vec![batch]);
        let theirs = (self.spec.schemas[other].clone(), candidates);
        let sides = if side == 0 {
            vec![mine, theirs]
        } else {
            vec![theirs, mine]
        };
        run_plan_inputs(&self.spec.join, sides, &self.task)
    }

    fn commit_batch(&mut self) {
        let now = now_micros();
        for side in 0..2 {
            for batch in std::mem::take(&mut self.sides[side].pending) {
                if let Err(e) = self.keep(side, batch, now) {
                    // Evaluating the keys succeeded when the batch was processed.
                    tracing::error!(error = %e, "A joined batch could not be kept.");
                }
            }
        }
    }

    fn abort_batch(&mut self) {
        for side in &mut self.sides {
            side.pending.clear();
        }
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        self.watermark = watermark;
        self.expire(watermark);
        Ok(Vec::new())
    }

    /// Rows past the TTL leave at checkpoints too, when no watermark moves.
    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        if self.ttl.is_some() {
            self.expire(self.watermark);
        }
        Ok(Vec::new())
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.state_schema.clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let mut out = Vec::new();
        for side in 0..2 {
            let ids: Vec<u64> = if full {
                let mut ids: Vec<u64> = self.sides[side].kept.keys().copied().collect();
                ids.sort_unstable();
                ids
            } else {
                self.sides[side].unsnapshotted.clone()
            };
            for id in ids {
                if let Some(k) = self.sides[side].kept.get(&id) {
                    out.push(self.state_batch(side, k)?);
                }
            }
            self.sides[side].unsnapshotted.clear();
        }
        Ok(in_memory(out))
    }

    /// Rebuilds the kept rows; rows that expired by the checkpoint's watermark stay out.
    fn restore(&mut self, state: Vec<StateChunk>, watermark: Option<i64>) -> Result<()> {
        let widths = [
            self.spec.schemas[0].fields().len(),
            self.spec.schemas[1].fields().len(),
        ];
        for batch in load(&state)? {
            let sides = batch
                .column(0)
                .as_primitive::<arrow::datatypes::UInt8Type>();
            for side in 0..2 {
                let mask: arrow::array::BooleanArray = sides
                    .iter()
                    .map(|s| s.map(|s| s as usize == side))
                    .collect();
                let rows = filter_record_batch(&batch, &mask)?;
                if rows.num_rows() == 0 {
                    continue;
                }
                let start = 2 + if side == 0 { 0 } else { widths[0] };
                // Batches are stored as kept; were some merged, the latest keeps them all.
                let kept_at = arrow::compute::max(
                    rows.column(1).as_primitive::<arrow::datatypes::Int64Type>(),
                )
                .unwrap_or(i64::MIN);
                let columns = rows.columns()[start..start + widths[side]].to_vec();
                let rows = RecordBatch::try_new(self.spec.schemas[side].clone(), columns)?;
                self.keep(side, rows, kept_at)?;
            }
        }
        for side in &mut self.sides {
            side.unsnapshotted.clear();
        }
        self.watermark = watermark.unwrap_or(i64::MIN);
        self.expire(self.watermark);
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        let bytes = self.state_bytes();
        Budget::hold_in(
            self.budget.as_mut(),
            bytes,
            "a join of two streams (the rows each side keeps for the other)",
        )
    }

    fn state_rows(&self) -> usize {
        self.sides.iter().map(|s| s.rows).sum()
    }

    fn state_bytes(&self) -> usize {
        self.sides.iter().map(|s| s.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, TimestampMicrosecondArray};
    use arrow::util::display::array_value_to_string;
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::runtime::operator::tests::join_plan;

    const SECOND: i64 = 1_000_000;

    fn schema(names: &[&str]) -> SchemaRef {
        Arc::new(Schema::new(
            names
                .iter()
                .map(|n| match *n {
                    "ts" => {
                        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true)
                    }
                    n => Field::new(n, DataType::Int32, true),
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// Rows of `names` (an `ts` column in seconds, the others integers).
    fn batch(names: &[&str], rows: &[&[i64]]) -> RecordBatch {
        let columns = names
            .iter()
            .enumerate()
            .map(|(c, n)| -> ArrayRef {
                let values = rows.iter().map(|r| r[c]);
                match *n {
                    "ts" => Arc::new(TimestampMicrosecondArray::from_iter_values(
                        values.map(|s| s * SECOND),
                    )),
                    _ => Arc::new(Int32Array::from_iter_values(values.map(|v| v as i32))),
                }
            })
            .collect();
        RecordBatch::try_new(schema(names), columns).unwrap()
    }

    const LEFT: &[&str] = &["id", "ts"];
    const RIGHT: &[&str] = &["aid", "ts", "v"];

    /// `l JOIN r ON id = aid AND r.ts BETWEEN l.ts AND l.ts + 10 s`, as the front end plans it.
    async fn operator() -> StreamJoin {
        let join = join_plan(
            &[("l", schema(LEFT)), ("r", schema(RIGHT))],
            "SELECT * FROM l JOIN r ON l.id = r.aid AND r.ts BETWEEN l.ts AND l.ts + INTERVAL '10' SECOND",
        )
        .await;
        StreamJoin::new(StreamJoinSpec {
            join,
            keys: [
                vec![Arc::new(Column::new("id", 0))],
                vec![Arc::new(Column::new("aid", 0))],
            ],
            schemas: [schema(LEFT), schema(RIGHT)],
            expiry: [Some((1, 10 * SECOND)), Some((1, 0))],
        })
        .unwrap()
    }

    /// The same join with no bound on event time (a regular join), keeping rows for `ttl`.
    async fn regular(ttl: Option<std::time::Duration>) -> StreamJoin {
        let mut op = operator().await;
        op.spec.expiry = [None, None];
        op.with_ttl(ttl)
    }

    /// `id v` of joined rows, sorted.
    fn joined(batches: &[RecordBatch]) -> Vec<String> {
        let mut out: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(|i| {
                    let value = |c: usize| array_value_to_string(b.column(c), i).unwrap();
                    format!("{} {}", value(0), value(4))
                })
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn rows_join_within_the_band_and_leave_when_the_watermark_passes_it() {
        let mut op = operator().await;
        op.process(0, batch(LEFT, &[&[1, 0], &[2, 0]])).unwrap();
        op.commit_batch();
        let out = op
            .process(
                1,
                batch(
                    RIGHT,
                    &[&[1, 5, 100], &[1, 20, 200], &[2, 3, 300], &[3, 4, 400]],
                ),
            )
            .unwrap();
        op.commit_batch();
        assert_eq!(joined(&out), ["1 100", "2 300"]);
        // A batch that fails later leaves nothing behind.
        op.process(0, batch(LEFT, &[&[1, 19]])).unwrap();
        op.abort_batch();
        assert_eq!(op.state_rows(), 6);
        // The left rows can match right rows up to their time + 10 s: gone past it.
        op.on_watermark(11 * SECOND).unwrap();
        assert_eq!(op.state_rows(), 4);
        let full = op.snapshot(true).unwrap();
        let out = op.process(0, batch(LEFT, &[&[1, 15]])).unwrap();
        op.commit_batch();
        assert_eq!(joined(&out), ["1 200"]);
        let changed = op.snapshot(false).unwrap();
        // Restored from its snapshots, it holds and joins the same.
        let mut restored = operator().await;
        restored
            .restore([full, changed].concat(), Some(11 * SECOND))
            .unwrap();
        assert_eq!(restored.state_rows(), 5);
        let late_right = batch(RIGHT, &[&[1, 24, 500]]);
        assert_eq!(
            joined(&restored.process(1, late_right.clone()).unwrap()),
            joined(&op.process(1, late_right).unwrap())
        );
        // Right rows can match left rows up to their own time: the batch with 20 s goes past it.
        op.abort_batch();
        op.on_watermark(21 * SECOND).unwrap();
        assert_eq!(op.state_rows(), 1);
        op.on_watermark(crate::runtime::event_time::END_OF_TIME)
            .unwrap();
        assert_eq!((op.state_rows(), op.state_bytes()), (0, 0));
    }

    #[tokio::test]
    async fn a_regular_join_keeps_rows_for_its_ttl_or_to_the_end_of_the_input() {
        let mut forever = regular(None).await;
        let mut brief = regular(Some(std::time::Duration::from_millis(1))).await;
        for op in [&mut forever, &mut brief] {
            op.process(0, batch(LEFT, &[&[1, 0]])).unwrap();
            op.commit_batch();
            // No watermark expires a row of a regular join.
            op.on_watermark(1_000 * SECOND).unwrap();
            assert_eq!(op.state_rows(), 1);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        forever.on_checkpoint().unwrap();
        brief.on_checkpoint().unwrap();
        assert_eq!((forever.state_rows(), brief.state_rows()), (1, 0));
        // The row past its TTL joins nothing; the kept one still does.
        let right = batch(RIGHT, &[&[1, 5, 100]]);
        assert!(brief.process(1, right.clone()).unwrap().is_empty());
        assert_eq!(joined(&forever.process(1, right).unwrap()), ["1 100"]);
        forever.commit_batch();
        forever
            .on_watermark(crate::runtime::event_time::END_OF_TIME)
            .unwrap();
        assert_eq!(forever.state_rows(), 0);
    }
}
