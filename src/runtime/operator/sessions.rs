//! Session windows: how a window aggregate's partial states merge into sessions. Each row comes
//! as its own session `[time, time + gap)`; the partial states of a key whose sessions overlap
//! are merged into one session (start of the first, end of the last), which the window
//! aggregate emits, once, when the watermark passes its end.

use std::cmp::Ordering;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};

use super::two_stage::TwoStage;
use crate::error::Result;

/// Where a session aggregate's windows and keys are among its partial states' columns.
pub struct Sessions {
    /// Columns of `window_start` and `window_end`.
    start: usize,
    end: usize,
    /// The other group columns: the key sessions are per.
    keys: Vec<usize>,
    /// Compares keys.
    converter: Option<RowConverter>,
}

impl Sessions {
    /// Sessions over the partial states of `stages`, whose group columns `start` and `end` are
    /// `window_start` and `window_end`.
    pub fn new(stages: &TwoStage, start: usize, end: usize) -> Result<Self> {
        let keys: Vec<usize> = (0..stages.groups())
            .filter(|c| *c != start && *c != end)
            .collect();
        let converter = if keys.is_empty() {
            None
        } else {
            let schema = stages.state_schema();
            Some(RowConverter::new(
                keys.iter()
                    .map(|k| SortField::new(schema.field(*k).data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(Sessions {
            start,
            end,
            keys,
            converter,
        })
    }

    /// The group columns sessions are per.
    pub fn keys(&self) -> &[usize] {
        &self.keys
    }

    /// The key (the group columns besides the window) of each of `states`, in Arrow's row
    /// format; empty when sessions have no key.
    pub fn keys_of(&self, states: &RecordBatch) -> Result<Vec<Box<[u8]>>> {
        Ok(match self.key_rows(states)? {
            Some(rows) => rows.iter().map(|r| r.as_ref().into()).collect(),
            None => vec![Box::default(); states.num_rows()],
        })
    }

    /// The keys of `states` in Arrow's row format; `None` when sessions have no key.
    fn key_rows(&self, states: &RecordBatch) -> Result<Option<Rows>> {
        let Some(converter) = &self.converter else {
            return Ok(None);
        };
        let columns: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|k| states.column(*k).clone())
            .collect();
        Ok(Some(converter.convert_columns(&columns)?))
    }

    /// `states` with each row's window widened to its session: the sessions of a key that
    /// overlap become one, from the earliest start to the latest end. Also returns how many
    /// sessions there are.
    pub fn sessionize(&self, states: &RecordBatch) -> Result<(RecordBatch, usize)> {
        let start_column = states.column(self.start);
        let end_column = states.column(self.end);
        let starts = cast(start_column, &DataType::Int64)?;
        let starts = starts.as_primitive::<Int64Type>();
        let ends = cast(end_column, &DataType::Int64)?;
        let ends = ends.as_primitive::<Int64Type>();
        let keys = self.key_rows(states)?;
        let key_order = |a: usize, b: usize| match &keys {
            Some(rows) => rows.row(a).cmp(&rows.row(b)),
            None => Ordering::Equal,
        };
        let timed = |i: &usize| starts.is_valid(*i) && ends.is_valid(*i);
        let mut order: Vec<usize> = (0..states.num_rows()).filter(timed).collect();
        let untimed = states.num_rows() - order.len();
        order.sort_unstable_by(|a, b| {
            key_order(*a, *b).then_with(|| starts.value(*a).cmp(&starts.value(*b)))
        });
        let mut new_starts = starts.values().to_vec();
        let mut new_ends = ends.values().to_vec();
        let mut sessions = untimed;
        let mut i = 0;
        while i < order.len() {
            let first = order[i];
            let (start, mut end) = (starts.value(first), ends.value(first));
            let mut j = i + 1;
            while j < order.len()
                && key_order(order[j], first) == Ordering::Equal
                && starts.value(order[j]) < end
            {
                end = end.max(ends.value(order[j]));
                j += 1;
            }
            for row in &order[i..j] {
                new_starts[*row] = start;
                new_ends[*row] = end;
            }
            sessions += 1;
            i = j;
        }
        let rebuilt = |values: Vec<i64>, like: &ArrayRef, nulls| -> Result<ArrayRef> {
            Ok(cast(
                &Int64Array::new(values.into(), nulls),
                like.data_type(),
            )?)
        };
        let mut columns = states.columns().to_vec();
        columns[self.start] = rebuilt(new_starts, start_column, starts.nulls().cloned())?;
        columns[self.end] = rebuilt(new_ends, end_column, ends.nulls().cloned())?;
        Ok((RecordBatch::try_new(states.schema(), columns)?, sessions))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};

    use std::sync::Arc;

    use arrow::datatypes::SchemaRef;

    use super::*;
    use crate::runtime::event_time::{micros, END_OF_TIME};
    use crate::runtime::operator::tests::aggregate_plan;
    use crate::runtime::operator::window_aggregate::WindowAggregate;
    use crate::runtime::operator::Operator;

    const S: i64 = 1_000_000;
    const GAP: i64 = 10;

    fn schema() -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        Arc::new(Schema::new(vec![
            Field::new("window_start", ts.clone(), true),
            Field::new("window_end", ts, true),
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    /// Rows (time in seconds, k, v), each its own session of GAP seconds, as SESSION gives them.
    fn batch(rows: &[(Option<i64>, i64, i64)]) -> RecordBatch {
        let times = |shift: i64| {
            TimestampMicrosecondArray::from(
                rows.iter()
                    .map(|r| r.0.map(|t| (t + shift) * S))
                    .collect::<Vec<_>>(),
            )
        };
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(times(0)),
                Arc::new(times(GAP)),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    async fn operator() -> WindowAggregate {
        let plan = aggregate_plan(
            schema(),
            "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total FROM t GROUP BY window_start, window_end, k",
        )
        .await;
        WindowAggregate::sessions(plan, 0, 1).unwrap()
    }

    /// (start s, end s, k, n, total) of emitted rows, sorted; start and end -1 when NULL.
    fn rows(batches: &[RecordBatch]) -> Vec<(i64, i64, i64, i64, i64)> {
        let mut out = Vec::new();
        for b in batches {
            let starts = micros(b.column(0)).unwrap();
            let ends = micros(b.column(1)).unwrap();
            let int = |c: usize, i: usize| b.column(c).as_primitive::<Int64Type>().value(i);
            for i in 0..b.num_rows() {
                let seconds = |a: &arrow::array::TimestampMicrosecondArray| {
                    if a.is_valid(i) {
                        a.value(i) / S
                    } else {
                        -1
                    }
                };
                out.push((
                    seconds(&starts),
                    seconds(&ends),
                    int(2, i),
                    int(3, i),
                    int(4, i),
                ));
            }
        }
        out.sort_unstable();
        out
    }

    fn step(op: &mut WindowAggregate, rows: &[(Option<i64>, i64, i64)]) {
        assert!(op.process(0, batch(rows)).unwrap().is_empty());
        op.commit_batch();
    }

    #[tokio::test]
    async fn sessions_grow_merge_and_emit_once_their_gap_has_passed() {
        let mut op = operator().await;
        // Key 1: 0 and 5 are one session; 30 starts another. Key 2: 3 alone so far.
        step(
            &mut op,
            &[
                (Some(0), 1, 1),
                (Some(5), 1, 2),
                (Some(30), 1, 4),
                (Some(3), 2, 8),
            ],
        );
        // Out of order, not late: 21 joins key 1's session of 30 (21 + 10 > 30), not that of 5
        // (5 + 10 <= 21); 12 joins key 2's (3 + 10 > 12). A NULL time has no session.
        step(
            &mut op,
            &[(Some(21), 1, 16), (Some(12), 2, 32), (None, 2, 64)],
        );
        // A batch a later operator failed on leaves nothing behind.
        op.process(0, batch(&[(Some(16), 1, 1000)])).unwrap();
        op.abort_batch();
        assert!(op.on_watermark(14 * S).unwrap().is_empty());
        // Key 1's first session ends at 15.
        assert_eq!(
            rows(&op.on_watermark(15 * S).unwrap()),
            vec![(0, 15, 1, 2, 3)]
        );
        // 25 falls inside key 1's session [21, 40).
        step(&mut op, &[(Some(25), 1, 128)]);
        assert_eq!(
            rows(&op.on_watermark(22 * S).unwrap()),
            vec![(3, 22, 2, 2, 40)]
        );
        assert!(op.on_watermark(39 * S).unwrap().is_empty());
        assert_eq!(
            rows(&op.on_watermark(40 * S).unwrap()),
            vec![(21, 40, 1, 3, 148)]
        );
        assert_eq!(
            rows(&op.on_watermark(END_OF_TIME).unwrap()),
            vec![(-1, -1, 2, 1, 64)]
        );
        assert_eq!(op.state_rows(), 0);
    }

    #[tokio::test]
    async fn restore_merges_again_and_drops_sessions_emitted_before_the_checkpoint() {
        let mut op = operator().await;
        step(&mut op, &[(Some(0), 1, 1), (Some(30), 1, 2)]);
        let first = op.snapshot(false).unwrap();
        step(&mut op, &[(Some(5), 1, 4), (Some(36), 1, 8)]);
        assert_eq!(
            rows(&op.on_watermark(20 * S).unwrap()),
            vec![(0, 15, 1, 2, 5)]
        );
        let second = op.snapshot(false).unwrap();
        // The change files hold session [0, 15)'s states; the checkpoint's watermark drops them.
        let mut restored = operator().await;
        restored
            .restore([first, second].concat(), Some(20 * S))
            .unwrap();
        assert_eq!(restored.state_rows(), 2);
        step(&mut restored, &[(Some(45), 1, 16)]);
        assert_eq!(
            rows(&restored.on_watermark(END_OF_TIME).unwrap()),
            vec![(30, 55, 1, 3, 26)]
        );
        // A full snapshot holds the open sessions only.
        let full = op.snapshot(true).unwrap();
        assert_eq!(full.iter().map(|c| c.rows()).sum::<usize>(), 2);
    }

    /// Far past their state memory, sessions spill (with a filter of their keys) and emit what
    /// sessions kept in memory emit: rows arriving out of order within the watermark's bound,
    /// a restore from a full snapshot with spilled files halfway.
    #[tokio::test]
    async fn sessions_beyond_the_budget_spill_and_emit_the_same() {
        use rand::{Rng, SeedableRng};

        let mut rng = rand::rngs::StdRng::seed_from_u64(crate::runtime::operator::tests::seed());
        let memory = crate::runtime::memory::StateMemory::new(Some(64 << 10)).unwrap();
        let mut spilling = operator().await.with_memory(&memory);
        let mut unbounded = operator().await;
        let (mut spilled, mut emitted) = (0, (Vec::new(), Vec::new()));
        let mut watermark = 0;
        for round in 0..200 {
            // Rows at most 5 s behind the newest, none behind the watermark.
            let newest = watermark + 5;
            let rows: Vec<(Option<i64>, i64, i64)> = (0..200)
                .map(|_| {
                    let t = rng.random_range(watermark..=newest);
                    (Some(t), rng.random_range(0..3_000), rng.random_range(0..10))
                })
                .collect();
            for op in [&mut spilling, &mut unbounded] {
                step(op, &rows);
                op.fit_memory().unwrap();
            }
            watermark = newest - 4;
            emitted
                .0
                .extend(spilling.on_watermark(watermark * S).unwrap());
            emitted
                .1
                .extend(unbounded.on_watermark(watermark * S).unwrap());
            spilling.fit_memory().unwrap();
            spilled = spilled.max(spilling.spilled_bytes());
            if round % 40 == 39 {
                emitted.0.extend(spilling.on_checkpoint().unwrap());
                assert!(unbounded.on_checkpoint().unwrap().is_empty());
            }
            if round == 119 {
                let full = spilling.snapshot(true).unwrap();
                let mut restored = operator().await.with_memory(&memory);
                drop(spilling);
                restored.restore(full, Some(watermark * S)).unwrap();
                spilling = restored;
            }
        }
        emitted
            .0
            .extend(spilling.on_watermark(END_OF_TIME).unwrap());
        emitted
            .1
            .extend(unbounded.on_watermark(END_OF_TIME).unwrap());
        assert!(spilled > 0, "the sessions spilled");
        let (got, want) = (rows(&emitted.0), rows(&emitted.1));
        assert!(want.len() > 1_000, "{} sessions", want.len());
        assert_eq!(got, want);
        assert_eq!(spilling.state_rows(), 0);
        assert_eq!(spilling.spilled_bytes(), 0);
    }

    #[tokio::test]
    async fn large_open_state_is_merged_into_one_row_per_session() {
        let mut op = operator().await;
        // 10 000 rows of 100 keys, one second apart per key: 100 sessions still open.
        let input: Vec<_> = (0..10_000).map(|i| (Some(i / 100), i % 100, 1)).collect();
        step(&mut op, &input);
        assert!(op.on_watermark(50 * S).unwrap().is_empty());
        assert_eq!(op.state_rows(), 100);
        let out = rows(&op.on_watermark(END_OF_TIME).unwrap());
        assert_eq!(out.len(), 100);
        assert!(out
            .iter()
            .all(|r| (r.0, r.1, r.3, r.4) == (0, 109, 100, 100)));
    }
}
