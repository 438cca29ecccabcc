//! A windowed GROUP BY: DataFusion's two-stage aggregation run incrementally. Each batch goes
//! through the Partial aggregate; the partial states are the operator's state; when the
//! watermark passes a window's end, the Final aggregate merges that window's states and emits
//! its rows, once. Session windows are the same, their states first merged into sessions.

use std::sync::Arc;

use arrow::compute::{concat_batches, filter_record_batch, not};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;

use super::open_states::{KeysOf, OpenStates};
use super::parallel::Keying;
use super::sessions::Sessions;
use super::spill::StateChunk;
use super::two_stage::TwoStage;
use super::Operator;
use crate::error::Result;
use crate::runtime::event_time::END_OF_TIME;
use crate::runtime::memory::{Budget, StateMemory};

/// Window open state is merged (PartialReduce) when it holds more rows than this many times the
/// rows it held after the last merge, and at least as many rows as the second figure.
const WINDOW_MERGE: (usize, usize) = (4, 65_536);
/// Session open state is merged when it holds more rows than this many times its sessions, and
/// at least as many rows as the second figure: each watermark that may close one sorts it.
const SESSION_MERGE: (usize, usize) = (2, 4_096);

/// Window aggregation over partial aggregate states; session windows merge them as they grow.
pub struct WindowAggregate {
    stages: TwoStage,
    /// Partial states of open windows.
    open: OpenStates,
    rows_after_merge: usize,
    /// For session windows: how states merge into sessions.
    sessions: Option<Sessions>,
    /// The last watermark, held back.
    watermark: Option<i64>,
    /// Microseconds its watermark is held back by: how far behind the watermark its input can
    /// still bring rows (a join of two streams emits a pair when its later row arrives).
    watermark_delay: i64,
    /// Its share of the run's state memory (none: unaccounted).
    budget: Option<Budget>,
}

impl WindowAggregate {
    /// An operator from the Final aggregate of a planned GROUP BY (whose input is the Partial
    /// one) and the column of `window_end` among the group columns.
    pub fn new(final_: Arc<dyn ExecutionPlan>, window_end: usize) -> Result<Self> {
        Ok(WindowAggregate {
            stages: TwoStage::new(final_)?,
            open: OpenStates::new(window_end),
            rows_after_merge: 0,
            sessions: None,
            watermark: None,
            watermark_delay: 0,
            budget: None,
        })
    }

    /// The same, its state accounted in `memory` and spilled there past its share.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, self.kind()));
        self.stages.use_memory(memory);
        self
    }

    /// A session aggregate: `window_start` and `window_end` are group columns `start` and
    /// `end`, each row's own session, merged per key (the other group columns) as rows arrive.
    pub fn sessions(final_: Arc<dyn ExecutionPlan>, start: usize, end: usize) -> Result<Self> {
        let stages = TwoStage::new(final_)?;
        let sessions = Sessions::new(&stages, start, end)?;
        Ok(WindowAggregate {
            stages,
            open: OpenStates::new(end),
            rows_after_merge: 0,
            sessions: Some(sessions),
            watermark: None,
            watermark_delay: 0,
            budget: None,
        })
    }

    /// The same, its windows closing `delay` microseconds after the watermark passes their end.
    pub fn with_watermark_delay(mut self, delay: i64) -> Self {
        self.watermark_delay = delay.max(0);
        self
    }

    /// `watermark` held back by the delay; the end of time stays the end of time.
    fn held_back(&self, watermark: i64) -> i64 {
        match watermark {
            END_OF_TIME => END_OF_TIME,
            w => w.saturating_sub(self.watermark_delay),
        }
    }

    /// `states` with sessions merged (for session windows), and the rows a full merge would
    /// leave (`None` for other windows).
    fn merged(&self, states: RecordBatch) -> Result<(RecordBatch, Option<usize>)> {
        Ok(match &self.sessions {
            Some(s) => {
                let (states, sessions) = s.sessionize(&states)?;
                (states, Some(sessions))
            }
            None => (states, None),
        })
    }
}

impl WindowAggregate {
    /// Emits the windows (or sessions) in memory that `watermark` closes.
    fn close(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        if !self.open.may_close(watermark) {
            return Ok(Vec::new());
        }
        let all = concat_batches(self.stages.state_schema(), self.open.batches())?;
        let (all, sessions) = self.merged(all)?;
        let mut closed = self.open.closed(&all, watermark)?;
        if let Some(s) = self.sessions.as_ref().filter(|_| self.open.has_spilled()) {
            // A session in memory whose key may have sessions on disk waits for them: a row
            // that came since may have joined them (they end later, so it would not close).
            let keys = s.keys_of(&all)?;
            closed = closed
                .iter()
                .zip(&keys)
                .map(|(c, k)| Some(c == Some(true) && !self.open.may_have_spilled(k)))
                .collect();
        }
        let emit = filter_record_batch(&all, &closed)?;
        let open = filter_record_batch(&all, &not(&closed)?)?;
        let out = if emit.num_rows() > 0 {
            self.stages.finish(vec![emit])?
        } else {
            Vec::new()
        };
        let ((growth, least), baseline) = match sessions {
            Some(n) => (SESSION_MERGE, n),
            None => (WINDOW_MERGE, self.rows_after_merge),
        };
        if open.num_rows() > least && open.num_rows() > growth * baseline {
            self.open.set(self.stages.reduce(vec![open])?);
            self.rows_after_merge = self.open.rows();
        } else {
            self.open.set(vec![open]);
        }
        Ok(out)
    }

    /// The rows of `states` that the watermark `watermark` of a checkpoint had not closed.
    fn still_open(&self, states: RecordBatch, watermark: Option<i64>) -> Result<RecordBatch> {
        Ok(match watermark {
            Some(w) => filter_record_batch(&states, &not(&self.open.closed(&states, w)?)?)?,
            None => states,
        })
    }
}

impl Operator for WindowAggregate {
    fn kind(&self) -> &'static str {
        if self.sessions.is_some() {
            "session_aggregate"
        } else {
            "window_aggregate"
        }
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.open.stage(self.stages.partial(batch)?);
        Ok(Vec::new())
    }

    fn commit_batch(&mut self) {
        self.open.commit();
    }

    fn abort_batch(&mut self) {
        self.open.abort();
    }

    /// Spilled states are read back a step at a time, in order of their earliest end, each
    /// step closing what it can before the next is read, so that a watermark that jumps far
    /// (the end of input) does not bring all of them into memory at once.
    fn on_watermark(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        let watermark = self.held_back(watermark);
        self.watermark = Some(watermark);
        let mut out = Vec::new();
        while self.open.may_close(watermark) {
            let step = self.open.load_next_due(watermark)?;
            out.extend(self.close(step)?);
            if !self.open.spilled_due(watermark) {
                break;
            }
            // Each step closes every state up to the earliest end it read; what spills again
            // ends later, so the steps move on.
            self.fit_memory()?;
        }
        Ok(out)
    }

    /// Sessions that the watermark closed but that waited for states of their key on disk are
    /// settled: those files are read back and the sessions close (or merge), so that every
    /// session ending by the checkpoint's watermark was emitted before it, as a restore takes
    /// it.
    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        let (Some(sessions), Some(watermark)) = (&self.sessions, self.watermark) else {
            return Ok(Vec::new());
        };
        if !self.open.has_spilled() || !self.open.may_close(watermark) {
            return Ok(Vec::new());
        }
        let all = concat_batches(self.stages.state_schema(), self.open.batches())?;
        let (all, _) = self.merged(all)?;
        let closed = self.open.closed(&all, watermark)?;
        let waiting: Vec<Box<[u8]>> = sessions
            .keys_of(&filter_record_batch(&all, &closed)?)?
            .into_iter()
            .filter(|k| self.open.may_have_spilled(k))
            .collect();
        if waiting.is_empty() || self.open.load_holding(&waiting)? == 0 {
            return Ok(Vec::new());
        }
        let out = self.close(watermark)?;
        self.fit_memory()?;
        Ok(out)
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.stages.state_schema().clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        Ok(self.open.snapshot(full))
    }

    /// Change files still hold the states of windows emitted since: those the checkpoint's
    /// watermark had closed are dropped. States are read a file at a time, spilling again past
    /// the budget. A session's rows are dropped once all are in (by closing the checkpoint's
    /// watermark again, its output discarded): a row may end before the watermark and its
    /// session after; a session closed then cannot have grown after (a row joining it would
    /// have been late).
    fn restore(&mut self, state: Vec<StateChunk>, watermark: Option<i64>) -> Result<()> {
        let held_back = watermark.map(|w| self.held_back(w));
        let sessions = self.sessions.is_some();
        for chunk in &state {
            for batch in chunk.batches()? {
                let batch = batch?;
                let open = match sessions {
                    true => batch,
                    false => self.still_open(batch, held_back)?,
                };
                self.open.add(open);
            }
            self.fit_memory()?;
        }
        if let Some(w) = watermark.filter(|_| sessions) {
            let emitted_before = self.on_watermark(w)?;
            tracing::debug!(
                sessions = emitted_before
                    .iter()
                    .map(RecordBatch::num_rows)
                    .sum::<usize>(),
                "Sessions emitted before the checkpoint left the restored state."
            );
        }
        self.rows_after_merge = self.open.rows();
        Ok(())
    }

    /// Windows spill the later-ending half of their states, then all of them; sessions too,
    /// each file with a filter of its keys (a session of such a key in memory waits for them).
    fn fit_memory(&mut self) -> Result<()> {
        let Some(budget) = &mut self.budget else {
            return Ok(());
        };
        let bytes = self.open.bytes();
        if budget.fits(bytes) {
            return Ok(());
        }
        let schema = self.stages.state_schema();
        let sessions = self.sessions.as_ref();
        let keys_of = |states: &RecordBatch| match sessions {
            Some(s) => s.keys_of(states),
            None => Ok(Vec::new()),
        };
        let keys: Option<KeysOf> = sessions.map(|_| &keys_of as KeysOf);
        for all in [false, true] {
            self.open.spill(budget.memory(), schema, all, keys)?;
            if budget.fits(self.open.bytes()) {
                tracing::debug!(
                    spilled = self.open.spilled_bytes(),
                    "Window state spilled to disk."
                );
                return Ok(());
            }
        }
        budget.hold(
            self.open.bytes(),
            "the open windows' state (and the filters of the sessions' keys on disk)",
        )
    }

    fn state_rows(&self) -> usize {
        self.open.rows()
    }

    fn state_bytes(&self) -> usize {
        self.open.bytes()
    }

    fn spilled_bytes(&self) -> u64 {
        self.open.spilled_bytes()
    }

    /// Windows are keyed by all their group columns; sessions by the columns besides the
    /// window, so that a key's rows all go to one instance whatever their times.
    fn keying(&self) -> Option<Keying> {
        let exprs = self.stages.group_exprs();
        let keys: Vec<usize> = match &self.sessions {
            Some(s) => s.keys().to_vec(),
            None => (0..self.stages.groups()).collect(),
        };
        (!keys.is_empty()).then(|| Keying {
            inputs: vec![keys.iter().map(|k| exprs[*k].clone()).collect()],
            state: keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};

    use super::*;
    use crate::runtime::event_time::{micros, END_OF_TIME};
    use crate::runtime::operator::tests::aggregate_plan;

    const S: i64 = 1_000_000;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn batch(rows: &[(i64, i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(
                    rows.iter().map(|r| r.0 * S).collect::<Vec<_>>(),
                )),
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

    /// `SELECT window_end, k, count(*), sum(v), avg(v) ... GROUP BY window_end, k` planned as
    /// the SQL front end plans it.
    async fn operator() -> WindowAggregate {
        let plan = aggregate_plan(
            schema(),
            "SELECT window_end, k, count(*) AS n, sum(v) AS total, avg(v) AS mean FROM t GROUP BY window_end, k",
        )
        .await;
        WindowAggregate::new(plan, 0).unwrap()
    }

    /// (window end in seconds, k, n, total) of emitted rows, sorted.
    fn rows(batches: &[RecordBatch]) -> Vec<(i64, i64, i64, i64)> {
        let mut out = Vec::new();
        for b in batches {
            let ends = micros(b.column(0)).unwrap();
            for i in 0..b.num_rows() {
                out.push((
                    ends.value(i) / S,
                    b.column(1).as_primitive::<Int64Type>().value(i),
                    b.column(2).as_primitive::<Int64Type>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        out.sort_unstable();
        out
    }

    #[tokio::test]
    async fn windows_emit_once_when_the_watermark_passes_their_end() {
        let mut op = operator().await;
        assert!(op
            .process(0, batch(&[(10, 1, 5), (10, 1, 7), (20, 1, 1)]))
            .unwrap()
            .is_empty());
        op.commit_batch();
        assert!(op
            .process(0, batch(&[(10, 2, 3), (20, 1, 2)]))
            .unwrap()
            .is_empty());
        op.commit_batch();
        // A batch a later operator failed on leaves nothing behind.
        op.process(0, batch(&[(10, 1, 1000)])).unwrap();
        op.abort_batch();
        assert!(op.on_watermark(9 * S).unwrap().is_empty());
        assert_eq!(
            rows(&op.on_watermark(10 * S).unwrap()),
            vec![(10, 1, 2, 12), (10, 2, 1, 3)]
        );
        // Emitted windows are gone from the state; the open one merges states of two batches.
        assert_eq!(op.state_rows(), 2);
        assert!(op.on_watermark(15 * S).unwrap().is_empty());
        assert_eq!(
            rows(&op.on_watermark(END_OF_TIME).unwrap()),
            vec![(20, 1, 2, 3)]
        );
        assert_eq!(op.state_rows(), 0);
    }

    /// Held back by 5 s (a join's pairs may come that late), a window closes 5 s after the
    /// watermark passes its end, and a restore holds the checkpoint's watermark back the same.
    #[tokio::test]
    async fn a_held_back_watermark_closes_windows_that_much_later() {
        let mut op = operator().await.with_watermark_delay(5 * S);
        op.process(0, batch(&[(10, 1, 5), (20, 1, 7)])).unwrap();
        op.commit_batch();
        assert!(op.on_watermark(14 * S).unwrap().is_empty());
        // A row of the window ending at 10 s, 4 s after the watermark passed its end.
        op.process(0, batch(&[(10, 1, 1)])).unwrap();
        op.commit_batch();
        assert_eq!(rows(&op.on_watermark(15 * S).unwrap()), vec![(10, 1, 2, 6)]);
        let mut restored = operator().await.with_watermark_delay(5 * S);
        restored
            .restore(op.snapshot(true).unwrap(), Some(24 * S))
            .unwrap();
        assert_eq!(
            restored.state_rows(),
            1,
            "the window ending at 20 s is still open"
        );
        assert_eq!(
            rows(&restored.on_watermark(END_OF_TIME).unwrap()),
            vec![(20, 1, 1, 7)]
        );
    }

    #[tokio::test]
    async fn state_beyond_the_budget_spills_and_windows_close_the_same() {
        // 400 windows of 500 keys, each window ending 100 s after its rows: 100 windows open
        // at a time, far more state than 256 kB. The spilling operator emits what the
        // unbounded one does.
        let memory = StateMemory::new(Some(256 << 10)).unwrap();
        let mut spilling = operator().await.with_memory(&memory);
        let mut unbounded = operator().await;
        let mut emitted = (Vec::new(), Vec::new());
        let mut spilled = 0;
        for second in 0..400i64 {
            let rows: Vec<_> = (0..500)
                .map(|k| (second + 100, k, second * 7 + k))
                .collect();
            for op in [&mut spilling, &mut unbounded] {
                op.process(0, batch(&rows)).unwrap();
                op.commit_batch();
                op.fit_memory().unwrap();
            }
            spilled = spilled.max(spilling.spilled_bytes());
            assert!(spilling.state_bytes() <= 256 << 10, "within the budget");
            if second % 10 == 9 {
                // Windows end 100 s after their rows: most of the state waits on disk.
                let watermark = second * S;
                emitted.0.extend(spilling.on_watermark(watermark).unwrap());
                spilling.fit_memory().unwrap();
                emitted.1.extend(unbounded.on_watermark(watermark).unwrap());
            }
            if second == 200 {
                // A checkpoint in the middle: restored from its full snapshot, spilled state
                // and all, the operator goes on the same.
                let full = spilling.snapshot(true).unwrap();
                assert!(full.iter().any(|c| matches!(c, StateChunk::Spilled(_))));
                let mut restored = operator().await.with_memory(&memory);
                restored.restore(full, Some((second - 1) * S)).unwrap();
                assert_eq!(restored.state_rows(), spilling.state_rows());
                spilling = restored;
            }
        }
        assert!(spilled > 0, "the state was spilled");
        emitted
            .0
            .extend(spilling.on_watermark(END_OF_TIME).unwrap());
        emitted
            .1
            .extend(unbounded.on_watermark(END_OF_TIME).unwrap());
        let (spilled_rows, unbounded_rows) = (rows(&emitted.0), rows(&emitted.1));
        assert_eq!(unbounded_rows.len(), 400 * 500);
        assert_eq!(spilled_rows, unbounded_rows);
        assert_eq!(spilling.state_rows(), 0);
        assert_eq!(spilling.spilled_bytes(), 0);
    }

    #[tokio::test]
    async fn restore_drops_windows_emitted_before_the_checkpoint() {
        let mut op = operator().await;
        op.process(0, batch(&[(10, 1, 5), (20, 1, 1)])).unwrap();
        op.commit_batch();
        let first = op.snapshot(false).unwrap();
        op.process(0, batch(&[(20, 1, 2), (30, 3, 4)])).unwrap();
        op.commit_batch();
        assert_eq!(rows(&op.on_watermark(10 * S).unwrap()), vec![(10, 1, 1, 5)]);
        let second = op.snapshot(false).unwrap();
        // The files still hold window 10's states; the checkpoint's watermark (10 s) drops them.
        let mut restored = operator().await;
        restored
            .restore([first, second].concat(), Some(10 * S))
            .unwrap();
        assert_eq!(
            rows(&restored.on_watermark(END_OF_TIME).unwrap()),
            vec![(20, 1, 2, 3), (30, 3, 1, 4)]
        );
        // A full snapshot holds the open windows only.
        let full = op.snapshot(true).unwrap();
        assert_eq!(full.iter().map(|c| c.rows()).sum::<usize>(), 3);
    }
}
