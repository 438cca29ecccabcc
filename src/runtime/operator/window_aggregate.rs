//! A windowed GROUP BY: DataFusion's two-stage aggregation run incrementally. Each batch goes
//! through the Partial aggregate; the partial states are the operator's state; when the
//! watermark passes a window's end, the Final aggregate merges that window's states and emits
//! its rows, once.

use std::sync::Arc;

use arrow::compute::{concat_batches, filter_record_batch, not};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;

use super::open_states::OpenStates;
use super::parallel::Keying;
use super::two_stage::TwoStage;
use super::Operator;
use crate::error::Result;

/// Open state is merged (PartialReduce) when it holds more rows than this many times the
/// rows it held after the last merge.
const MERGE_GROWTH: usize = 4;
/// ...and at least this many rows.
const MERGE_MIN_ROWS: usize = 65_536;

/// Window aggregation over partial aggregate states.
pub struct WindowAggregate {
    stages: TwoStage,
    /// Partial states of open windows.
    open: OpenStates,
    rows_after_merge: usize,
}

impl WindowAggregate {
    /// An operator from the Final aggregate of a planned GROUP BY (whose input is the Partial
    /// one) and the column of `window_end` among the group columns.
    pub fn new(final_: Arc<dyn ExecutionPlan>, window_end: usize) -> Result<Self> {
        Ok(WindowAggregate {
            stages: TwoStage::new(final_)?,
            open: OpenStates::new(window_end),
            rows_after_merge: 0,
        })
    }
}

impl Operator for WindowAggregate {
    fn kind(&self) -> &'static str {
        "window_aggregate"
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

    fn on_watermark(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        if !self.open.may_close(watermark) {
            return Ok(Vec::new());
        }
        let all = concat_batches(self.stages.state_schema(), self.open.batches())?;
        let closed = self.open.closed(&all, watermark)?;
        let emit = filter_record_batch(&all, &closed)?;
        let open = filter_record_batch(&all, &not(&closed)?)?;
        let out = if emit.num_rows() > 0 {
            self.stages.finish(vec![emit])?
        } else {
            Vec::new()
        };
        if open.num_rows() > MERGE_MIN_ROWS
            && open.num_rows() > MERGE_GROWTH * self.rows_after_merge
        {
            self.open.set(self.stages.reduce(vec![open])?);
            self.rows_after_merge = self.open.rows();
        } else {
            self.open.set(vec![open]);
        }
        Ok(out)
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.stages.state_schema().clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<RecordBatch>> {
        Ok(self.open.snapshot(full))
    }

    fn restore(&mut self, state: &[RecordBatch], watermark: Option<i64>) -> Result<()> {
        self.open.clear_changes();
        // Change files still hold the states of windows emitted since: drop those.
        let mut open = Vec::with_capacity(state.len());
        for batch in state {
            open.push(match watermark {
                Some(w) => filter_record_batch(batch, &not(&self.open.closed(batch, w)?)?)?,
                None => batch.clone(),
            });
        }
        self.open.set(open);
        self.rows_after_merge = self.open.rows();
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.open.rows()
    }

    fn state_bytes(&self) -> usize {
        self.open.bytes()
    }

    fn keying(&self) -> Option<Keying> {
        Some(Keying {
            input: self.stages.group_exprs().to_vec(),
            state: (0..self.stages.groups()).collect(),
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
            .restore(&[first, second].concat(), Some(10 * S))
            .unwrap();
        assert_eq!(
            rows(&restored.on_watermark(END_OF_TIME).unwrap()),
            vec![(20, 1, 2, 3), (30, 3, 1, 4)]
        );
        // A full snapshot holds the open windows only.
        let full = op.snapshot(true).unwrap();
        assert_eq!(full.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    }
}
