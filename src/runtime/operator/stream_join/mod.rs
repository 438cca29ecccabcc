//! A join of two streams: each side keeps its rows, and every arriving batch joins the other
//! side's kept rows that share its keys. Bounded by event time (`ON a.k = b.k AND b.ts BETWEEN
//! a.ts - INTERVAL '1' HOUR AND a.ts`, an interval join), a row is kept until the watermark
//! shows that no row of the other side can still match it; without a bound (a regular join),
//! until `state_ttl` of processing time has passed, or for ever. In a LEFT, RIGHT or FULL join
//! the preserved sides' rows that never matched are emitted with NULLs when they leave. DataFusion's
//! planned join evaluates the keys and the band; this operator only picks candidate rows,
//! notes which matched and forgets the expired ones. The output appends.

mod side;
mod state;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt64Array};
use arrow::compute::{cast, filter_record_batch, interleave, interleave_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType, UInt64Type};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::parallel::Keying;
use super::spill::{StateChunk, StoredBatch};
use super::{now_micros, run_plan_inputs, Operator};
use crate::error::{Error, Result};
use crate::runtime::event_time::END_OF_TIME;
use crate::runtime::memory::{Budget, StateMemory};
use side::{Kept, Pending, Side};

/// The row id column the matching join carries after a preserved side's columns (the left
/// side's; the right side's is [`RIGHT_ROW_ID`]).
pub const ROW_ID: &str = "__rid";
/// The right side's row id column in the matching join of a FULL join.
pub const RIGHT_ROW_ID: &str = "__rid_right";

/// What the operator is built from, as the SQL front end plans it.
#[derive(Debug, Clone)]
pub struct StreamJoinSpec {
    /// DataFusion's join as the query writes it (INNER, LEFT or RIGHT), over a placeholder
    /// for each side, left first: equi-keys and band.
    pub join: Arc<dyn ExecutionPlan>,
    /// Each side's equi-key expressions, over its rows.
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// Each side's columns.
    pub schemas: [SchemaRef; 2],
    /// Per side, the bounds the join's conditions put on the other side's event time by its
    /// rows: a row is dropped once the watermark passes the earliest. Empty: no bound.
    pub expiry: [Vec<ExpiryBound>; 2],
    /// For a LEFT, RIGHT or FULL join: which sides are preserved, and the matching inner join.
    pub outer: Option<OuterJoin>,
}

/// When a row can match no row of the other side still to come: the watermark passed `at`
/// (a time, over the row's columns) plus `after` microseconds.
#[derive(Debug, Clone)]
pub struct ExpiryBound {
    /// A time of the row.
    pub at: Arc<dyn PhysicalExpr>,
    /// Microseconds after it.
    pub after: i64,
}

/// The preserved sides of a LEFT, RIGHT or FULL join of two streams.
#[derive(Debug, Clone)]
pub struct OuterJoin {
    /// Which sides (0, left; 1, right) keep their unmatched rows.
    pub preserved: [bool; 2],
    /// The INNER join of the same conditions, each preserved side's placeholder carrying a
    /// row id (UInt64) after its columns: which preserved rows matched.
    pub matching: Arc<dyn ExecutionPlan>,
}

/// The candidate rows of one side for a batch of the other, with their ids and places.
struct Candidates {
    batches: Vec<RecordBatch>,
    /// Row ids, one array per batch.
    rids: Vec<ArrayRef>,
    /// Where each candidate row is, in order: (batch id, row), the batch id `None` for a
    /// pending batch (then its index among the pending ones).
    places: Vec<(Option<u64>, usize, u32)>,
}

/// A join of two streams.
pub struct StreamJoin {
    spec: StreamJoinSpec,
    keys: RowConverter,
    sides: [Side; 2],
    next_id: u64,
    /// Row ids go on from here: a random start per instance, so ids do not collide.
    next_rid: u64,
    state_schema: SchemaRef,
    /// How long a row is kept at most, in processing time.
    ttl: Option<std::time::Duration>,
    /// The watermark, for expiries between watermarks.
    watermark: i64,
    /// Whether each side's inputs ended in this run.
    ended: [bool; 2],
    task: Arc<TaskContext>,
    budget: Option<Budget>,
}

impl StreamJoin {
    /// The operator for a planned join.
    pub fn new(spec: StreamJoinSpec) -> Result<Self> {
        let types = spec.keys[0]
            .iter()
            .map(|k| k.data_type(&spec.schemas[0]))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        if types.is_empty() || spec.keys[1].len() != types.len() {
            return Err(Error::Internal(
                "a join of two streams needs keys on both sides".into(),
            ));
        }
        let state_schema = state::schema(&types, &spec.schemas);
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Ok(StreamJoin {
            keys: RowConverter::new(types.into_iter().map(SortField::new).collect())?,
            spec,
            sides: Default::default(),
            next_id: 0,
            // The top bit clear: ids a long run takes stay clear of wrapping.
            next_rid: random >> 1,
            state_schema,
            ttl: None,
            watermark: i64::MIN,
            ended: [false; 2],
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

    /// Whether `side` keeps its unmatched rows (an outer join's preserved side).
    fn preserves(&self, side: usize) -> bool {
        self.spec.outer.as_ref().is_some_and(|o| o.preserved[side])
    }

    /// Ids for `n` new rows.
    fn new_rids(&mut self, n: usize) -> UInt64Array {
        let first = self.next_rid;
        self.next_rid = self.next_rid.wrapping_add(n as u64);
        UInt64Array::from_iter_values((0..n as u64).map(|i| first.wrapping_add(i)))
    }

    /// Drops the rows expired by `watermark` (event time) and by the TTL (at the end of the
    /// input, all), and returns the preserved sides' unmatched ones with NULLs, when `emit`.
    fn expire(&mut self, watermark: i64, emit: bool) -> Result<Vec<RecordBatch>> {
        let kept_before = match self.ttl {
            _ if watermark == END_OF_TIME => i64::MAX,
            Some(ttl) => now_micros().saturating_sub(ttl.as_micros() as i64),
            None => i64::MIN,
        };
        let mut out = Vec::new();
        for side in 0..2 {
            let dropped = self.sides[side].expire(watermark, kept_before);
            if !emit || !self.preserves(side) {
                continue;
            }
            for k in dropped {
                let unmatched: BooleanArray = k.matched.iter().map(|m| Some(!m)).collect();
                let rows = filter_record_batch(&k.columns.batch()?, &unmatched)?;
                out.extend(self.padded(side, rows)?);
            }
        }
        Ok(out)
    }

    /// `rows` of the preserved side `side`, joined with nothing: with NULLs for the other side.
    fn padded(&self, side: usize, rows: RecordBatch) -> Result<Vec<RecordBatch>> {
        if rows.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let mine = (self.spec.schemas[side].clone(), vec![rows]);
        let none = (self.spec.schemas[1 - side].clone(), Vec::new());
        run_plan_inputs(&self.spec.join, ordered(side, mine, none), &self.task)
    }

    /// Key columns of `batch`, a batch of side `side`.
    fn key_columns(&self, side: usize, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let n = batch.num_rows();
        Ok(self.spec.keys[side]
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?)
    }

    /// Each row's expiry (the earliest of its bounds), `None` for a side without bounds; NULL
    /// where a bound is NULL (the row can match nothing).
    fn expiries(&self, side: usize, batch: &RecordBatch) -> Result<Option<Int64Array>> {
        let n = batch.num_rows();
        let mut earliest: Option<Int64Array> = None;
        for bound in &self.spec.expiry[side] {
            let at = bound.at.evaluate(batch)?.into_array(n)?;
            let at = cast(&at, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let these: Int64Array = at
                .as_primitive::<TimestampMicrosecondType>()
                .iter()
                .map(|t| t.map(|t| t.saturating_add(bound.after)))
                .collect();
            earliest = Some(match earliest {
                None => these,
                Some(e) => e
                    .iter()
                    .zip(these.iter())
                    .map(|(a, b)| Some(a?.min(b?)))
                    .collect(),
            });
        }
        Ok(earliest)
    }

    /// Keeps a committed batch of `side`, kept at `kept_at`: its rows that can match, with
    /// the latest of their expiries.
    fn keep(&mut self, side: usize, pending: Pending, kept_at: i64) -> Result<()> {
        // No row of the other side is to come.
        if self.ended[1 - side] && !self.preserves(side) {
            return Ok(());
        }
        let Pending {
            batch,
            keys,
            rids,
            matched,
        } = pending;
        let expiries = self.expiries(side, &batch)?;
        let usable = usable_rows(&keys, expiries.as_ref());
        let (batch, keys, expiries, rids, matched) = if usable.true_count() == batch.num_rows() {
            (batch, keys, expiries, rids, matched)
        } else {
            let matched = matched
                .iter()
                .zip(usable.iter())
                .filter(|(_, u)| *u == Some(true))
                .map(|(m, _)| *m)
                .collect();
            let rids = arrow::compute::filter(&rids, &usable)?;
            let rids = rids.as_primitive::<UInt64Type>().clone();
            let keys = keys
                .iter()
                .map(|k| Ok(arrow::compute::filter(k, &usable)?))
                .collect::<Result<Vec<_>>>()?;
            let expiries = match expiries {
                Some(e) => Some(arrow::compute::filter(&e, &usable)?.as_primitive().clone()),
                None => None,
            };
            let batch = filter_record_batch(&batch, &usable)?;
            (batch, keys, expiries, rids, matched)
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let expires = match expiries {
            Some(e) => arrow::compute::max(&e).unwrap_or(i64::MIN),
            None => i64::MAX,
        };
        let rows = self.keys.convert_columns(&keys)?;
        let id = self.next_id;
        self.next_id += 1;
        let kept = Kept {
            columns: StoredBatch::Memory(batch),
            rids,
            matched,
            expires,
            kept_at,
            overhead: 0,
        };
        self.sides[side].keep(id, kept, &rows);
        Ok(())
    }

    /// The rows of side `side` whose keys are among `keys`, and its pending batches whole.
    fn candidates(&self, side: usize, keys: &Rows, valid: &[bool]) -> Result<Candidates> {
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
        let mut out = Candidates {
            batches: Vec::new(),
            rids: Vec::new(),
            places: Vec::new(),
        };
        if !ids.is_empty() {
            let mut order: HashMap<u64, usize> = HashMap::new();
            let mut kept: Vec<&Kept> = Vec::new();
            let indices: Vec<(usize, usize)> = ids
                .iter()
                .map(|(b, r)| {
                    let at = *order.entry(*b).or_insert_with(|| {
                        kept.push(&s.kept[b]);
                        kept.len() - 1
                    });
                    (at, *r as usize)
                })
                .collect();
            let batches = kept
                .iter()
                .map(|k| k.columns.batch())
                .collect::<Result<Vec<RecordBatch>>>()?;
            let batches: Vec<&RecordBatch> = batches.iter().collect();
            out.batches
                .push(interleave_record_batch(&batches, &indices)?);
            let rids: Vec<&dyn Array> = kept.iter().map(|k| &k.rids as &dyn Array).collect();
            out.rids.push(interleave(&rids, &indices)?);
            out.places
                .extend(ids.iter().map(|(b, r)| (Some(*b), 0, *r)));
        }
        for (i, p) in s.pending.iter().enumerate() {
            out.batches.push(p.batch.clone());
            out.rids.push(Arc::new(p.rids.clone()));
            out.places
                .extend((0..p.batch.num_rows() as u32).map(|r| (None, i, r)));
        }
        Ok(out)
    }

    /// Batches of side `side` with their row ids after their columns, for the matching join.
    fn with_rids(
        &self,
        side: usize,
        batches: &[RecordBatch],
        rids: &[ArrayRef],
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let schema = state::with_row_id(&self.spec.schemas[side], side);
        let batches = batches
            .iter()
            .zip(rids)
            .map(|(b, r)| {
                let mut columns = b.columns().to_vec();
                columns.push(r.clone());
                Ok(RecordBatch::try_new(schema.clone(), columns)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((schema, batches))
    }

    /// Runs the matching join of a batch and candidates (ordered by side, each preserved side
    /// with its row ids), and returns its rows without the row ids, and the row ids that matched.
    fn matching(
        &self,
        sides: Vec<(SchemaRef, Vec<RecordBatch>)>,
    ) -> Result<(Vec<RecordBatch>, HashSet<u64>)> {
        let Some(outer) = &self.spec.outer else {
            return Err(Error::Internal(
                "an inner join matched as an outer one".into(),
            ));
        };
        let left = self.spec.schemas[0].fields().len();
        let mut rid_columns = Vec::new();
        if outer.preserved[0] {
            rid_columns.push(left);
        }
        if outer.preserved[1] {
            rid_columns
                .push(left + usize::from(outer.preserved[0]) + self.spec.schemas[1].fields().len());
        }
        let schema = self.spec.join.schema();
        let mut matched = HashSet::new();
        let mut out = Vec::new();
        for b in run_plan_inputs(&outer.matching, sides, &self.task)? {
            for &at in &rid_columns {
                matched.extend(
                    b.column(at)
                        .as_primitive::<UInt64Type>()
                        .values()
                        .iter()
                        .copied(),
                );
            }
            let mut columns = b.columns().to_vec();
            for &at in rid_columns.iter().rev() {
                columns.remove(at);
            }
            out.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        Ok((out, matched))
    }
}

/// Which rows can match at all: a key and, for a side with bounds, an expiry.
fn usable_rows(keys: &[ArrayRef], expiries: Option<&Int64Array>) -> BooleanArray {
    let n = keys.first().map_or(0, |k| k.len());
    (0..n)
        .map(|i| Some(expiries.is_none_or(|e| e.is_valid(i)) && keys.iter().all(|k| k.is_valid(i))))
        .collect()
}

/// Inputs of a join plan in its order (left first) from this side's and the other's.
fn ordered<T>(side: usize, mine: T, theirs: T) -> Vec<T> {
    if side == 0 {
        vec![mine, theirs]
    } else {
        vec![theirs, mine]
    }
}

impl Operator for StreamJoin {
    fn emits_only_when_processing(&self) -> bool {
        // An outer join emits the rows that never matched when they leave.
        self.spec.outer.is_none()
    }

    fn kind(&self) -> &'static str {
        "stream_join"
    }

    /// Joins a batch of one side with the other side's rows that share its keys; the batch is
    /// kept once committed. In an outer join, what it matched is noted, and its preserved rows
    /// that can never match are emitted with NULLs at once.
    fn process(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let side = input.min(1);
        let other = 1 - side;
        let batch =
            RecordBatch::try_new(self.spec.schemas[side].clone(), batch.columns().to_vec())?;
        let keys = self.key_columns(side, &batch)?;
        let valid: Vec<bool> = (0..batch.num_rows())
            .map(|i| keys.iter().all(|k| k.is_valid(i)))
            .collect();
        let key_rows = self.keys.convert_columns(&keys)?;
        let mut candidates = self.candidates(other, &key_rows, &valid)?;
        let rids = self.new_rids(batch.num_rows());
        let mut out = Vec::new();
        let mut matched = Vec::new();
        if self.spec.outer.is_none() {
            if !candidates.batches.is_empty() {
                let mine = (self.spec.schemas[side].clone(), vec![batch.clone()]);
                let theirs = (self.spec.schemas[other].clone(), candidates.batches);
                out = run_plan_inputs(&self.spec.join, ordered(side, mine, theirs), &self.task)?;
            }
        } else {
            let (mine_kept, theirs_kept) = (self.preserves(side), self.preserves(other));
            if mine_kept {
                matched = vec![false; batch.num_rows()];
            }
            if !candidates.batches.is_empty() {
                let mine = if mine_kept {
                    let rid_array: ArrayRef = Arc::new(rids.clone());
                    self.with_rids(side, std::slice::from_ref(&batch), &[rid_array])?
                } else {
                    (self.spec.schemas[side].clone(), vec![batch.clone()])
                };
                let places = std::mem::take(&mut candidates.places);
                let theirs = if theirs_kept {
                    self.with_rids(other, &candidates.batches, &candidates.rids)?
                } else {
                    (self.spec.schemas[other].clone(), candidates.batches)
                };
                let (joined, found) = self.matching(ordered(side, mine, theirs))?;
                out = joined;
                if mine_kept {
                    for (m, rid) in matched.iter_mut().zip(rids.values()) {
                        *m = found.contains(rid);
                    }
                }
                if theirs_kept {
                    let all_rids = candidates
                        .rids
                        .iter()
                        .flat_map(|r| r.as_primitive::<UInt64Type>().values().to_vec());
                    for (rid, (batch_id, pending, row)) in all_rids.zip(places) {
                        if !found.contains(&rid) {
                            continue;
                        }
                        let s = &mut self.sides[other];
                        match batch_id {
                            Some(b) => s.pending_marks.push((b, row)),
                            None => s.pending[pending].matched[row as usize] = true,
                        }
                    }
                }
            }
            if mine_kept {
                // Rows without a key or an expiry never match: with NULLs now.
                let expiries = self.expiries(side, &batch)?;
                let unusable = arrow::compute::not(&usable_rows(&keys, expiries.as_ref()))?;
                out.extend(self.padded(side, filter_record_batch(&batch, &unusable)?)?);
            }
        }
        self.sides[side].pending.push(Pending {
            batch,
            keys,
            rids,
            matched,
        });
        Ok(out)
    }

    fn commit_batch(&mut self) {
        let now = now_micros();
        for side in 0..2 {
            for pending in std::mem::take(&mut self.sides[side].pending) {
                if let Err(e) = self.keep(side, pending, now) {
                    // Evaluating the keys succeeded when the batch was processed.
                    tracing::error!(error = %e, "A joined batch could not be kept.");
                }
            }
            for (b, r) in std::mem::take(&mut self.sides[side].pending_marks) {
                self.sides[side].mark(b, r);
            }
        }
    }

    fn abort_batch(&mut self) {
        for side in &mut self.sides {
            side.pending.clear();
            side.pending_marks.clear();
        }
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        self.watermark = watermark;
        self.expire(watermark, true)
    }

    /// A side's rows are kept for rows of the other side still to come: once that side's
    /// inputs ended, they go (but a preserved side's, whose unmatched rows wait for their
    /// bound), and no more are kept.
    fn on_input_end(&mut self, port: usize) -> Result<Vec<RecordBatch>> {
        let ended = port.min(1);
        self.ended[ended] = true;
        let other = 1 - ended;
        if !self.preserves(other) {
            self.sides[other].expire(i64::MIN, i64::MAX);
        }
        Ok(Vec::new())
    }

    /// Rows past the TTL leave at checkpoints too, when no watermark moves.
    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        match self.ttl {
            Some(_) => self.expire(self.watermark, true),
            None => Ok(Vec::new()),
        }
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.state_schema.clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        state::snapshot(self, full)
    }

    /// Rebuilds the kept rows and their marks; rows that expired by the checkpoint's
    /// watermark stay out (what they were to emit was emitted before the checkpoint).
    fn restore(&mut self, state: Vec<StateChunk>, watermark: Option<i64>) -> Result<()> {
        state::restore(self, state)?;
        self.watermark = watermark.unwrap_or(i64::MIN);
        self.expire(self.watermark, false)?;
        Ok(())
    }

    /// Past its share of memory, the oldest half of each side's kept columns spill to disk,
    /// then all of them; the keys, row ids and marks stay in memory.
    fn fit_memory(&mut self) -> Result<()> {
        let Some(budget) = &mut self.budget else {
            return Ok(());
        };
        budget.fit_spilling(
            &mut self.sides,
            |sides| sides.iter().map(|s| s.bytes).sum(),
            |sides, memory, all| {
                for side in sides.iter_mut() {
                    let keep = if all { 0 } else { side.columns_in_memory() / 2 };
                    side.spill(memory, keep)?;
                }
                let spilled: u64 = sides.iter().map(|s| s.spilled).sum();
                tracing::debug!(spilled, "Join state spilled to disk.");
                Ok(())
            },
            "a join of two streams (the keys of the rows each side keeps for the other)",
        )
    }

    fn spilled_bytes(&self) -> u64 {
        self.sides.iter().map(|s| s.spilled).sum()
    }

    fn state_rows(&self) -> usize {
        self.sides.iter().map(|s| s.rows).sum()
    }

    fn state_bytes(&self) -> usize {
        self.sides.iter().map(|s| s.bytes).sum()
    }

    /// Rows of both sides go to the instance of their key.
    fn keying(&self) -> Option<Keying> {
        Some(Keying {
            inputs: self.spec.keys.to_vec(),
            state: state::key_columns(self.spec.keys[0].len()),
        })
    }
}

#[cfg(test)]
mod tests;
