//! A pipeline's watermark over its sources: each source that declares one has its own (over its
//! splits), and the pipeline's is the least of the sources that are neither idle nor ended, so a
//! source that is behind holds windows open for its rows; it never goes back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::watermarks::Watermarks;

/// One source's watermark as a checkpoint keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputMarks {
    /// The source's watermark (UTC microseconds).
    pub watermark: Option<i64>,
    /// Each of its splits' (Kafka partitions).
    #[serde(default)]
    pub splits: BTreeMap<String, i64>,
}

struct Input {
    marks: Watermarks,
    /// Whether the source declares a watermark.
    timed: bool,
    /// When it last gave a batch (or the run started).
    active_at: Instant,
    ended: bool,
    /// Held back by the pipeline (not read while another source is): not idle, however long.
    held: bool,
}

/// The watermarks of a pipeline's sources, and the pipeline's.
pub struct PipelineWatermarks {
    inputs: Vec<Input>,
    idle_timeout: Duration,
    current: Option<i64>,
}

impl PipelineWatermarks {
    /// Watermarks restored from a checkpoint: the pipeline's (`current`) and, for each source,
    /// whether it declares one and its marks.
    pub fn new(
        idle_timeout: Duration,
        current: Option<i64>,
        inputs: Vec<(bool, InputMarks)>,
        now: Instant,
    ) -> Self {
        PipelineWatermarks {
            inputs: inputs
                .into_iter()
                .map(|(timed, m)| Input {
                    marks: Watermarks::new(idle_timeout, m.watermark, &m.splits, now),
                    timed,
                    active_at: now,
                    ended: false,
                    held: false,
                })
                .collect(),
            idle_timeout,
            current,
        }
    }

    /// The pipeline's watermark: rows before it are late.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Source `i`'s splits' watermarks, which its rows raise; it gave a batch at `now`.
    pub fn input(&mut self, i: usize, now: Instant) -> &mut Watermarks {
        let input = &mut self.inputs[i];
        input.active_at = now;
        &mut input.marks
    }

    /// Source `i`'s splits' watermarks, as they stand.
    pub fn marks(&self, i: usize) -> &Watermarks {
        &self.inputs[i].marks
    }

    /// Which sources the pipeline holds back (does not read while others go first): a source
    /// held back is never idle, so the rows it has still to give are not late when it is read;
    /// it counts as active from when it is let go.
    pub fn hold(&mut self, held: &[bool], now: Instant) {
        for (input, &h) in self.inputs.iter_mut().zip(held) {
            if input.held && !h {
                input.active_at = now;
            }
            input.held = h;
        }
    }

    /// Which sources are ahead of the pipeline in event time: their own watermark is past the
    /// pipeline's (which the sources behind hold back).
    pub fn ahead(&self) -> Vec<bool> {
        self.inputs
            .iter()
            .map(|i| match (i.marks.current(), self.current) {
                (Some(own), Some(pipeline)) => i.timed && !i.ended && own > pipeline,
                _ => false,
            })
            .collect()
    }

    /// Source `i` has no more rows: it holds nothing back for the rest of the run.
    pub fn end(&mut self, i: usize) {
        self.inputs[i].ended = true;
    }

    /// Recomputes every source's watermark and the pipeline's at `now`: the least of the
    /// sources that declare one and are neither idle (no batch for the idle timeout) nor ended
    /// (nothing while one of them has none yet); when every such source is idle, the greatest;
    /// when all have ended, the greatest of theirs. Returns it when it moved forward.
    pub fn advance(&mut self, now: Instant) -> Option<i64> {
        for input in self.inputs.iter_mut().filter(|i| !i.held) {
            input.marks.advance(now);
        }
        let timed: Vec<&Input> = self.inputs.iter().filter(|i| i.timed).collect();
        let running: Vec<&&Input> = timed.iter().filter(|i| !i.ended).collect();
        let active: Vec<Option<i64>> = running
            .iter()
            .filter(|i| i.held || now.saturating_duration_since(i.active_at) < self.idle_timeout)
            .map(|i| i.marks.current())
            .collect();
        let candidate = if !active.is_empty() {
            active
                .iter()
                .copied()
                .try_fold(i64::MAX, |least, w| Some(least.min(w?)))
        } else if !running.is_empty() {
            running.iter().filter_map(|i| i.marks.current()).max()
        } else {
            timed.iter().filter_map(|i| i.marks.current()).max()
        };
        match candidate {
            Some(c) if self.current.is_none_or(|w| c > w) => {
                self.current = Some(c);
                self.current
            }
            _ => None,
        }
    }

    /// Each source's marks, for the checkpoint.
    pub fn checkpointed(&self) -> Vec<InputMarks> {
        self.inputs
            .iter()
            .map(|i| InputMarks {
                watermark: i.marks.current(),
                splits: i.marks.checkpointed(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    fn rows(w: &mut PipelineWatermarks, i: usize, watermark: i64, now: Instant) {
        w.input(i, now).rows("", Some(watermark), now);
    }

    #[test]
    fn the_source_that_is_behind_holds_the_pipeline_back() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Sources 0 and 1 declare a watermark; source 2 (a table of reference rows) does not.
        let fresh = vec![
            (true, InputMarks::default()),
            (true, InputMarks::default()),
            (false, InputMarks::default()),
        ];
        let mut w = PipelineWatermarks::new(IDLE, None, fresh, t0);
        rows(&mut w, 0, 100, t0);
        // Source 1 has given nothing yet.
        assert_eq!(w.advance(t0), None);
        rows(&mut w, 1, 40, at(1));
        assert_eq!(w.advance(at(1)), Some(40));
        rows(&mut w, 1, 90, at(2));
        rows(&mut w, 2, 1_000, at(2));
        assert_eq!(w.advance(at(2)), Some(90));
        // Source 0 falls silent: past the idle timeout, source 1 alone decides.
        rows(&mut w, 1, 150, at(31));
        assert_eq!(w.advance(at(31)), Some(150));
        // Source 0 is back, behind: the pipeline's watermark never goes back.
        rows(&mut w, 0, 120, at(32));
        assert_eq!(w.advance(at(32)), None);
        rows(&mut w, 0, 200, at(33));
        rows(&mut w, 1, 180, at(33));
        assert_eq!(w.advance(at(33)), Some(180));
        // Source 1 ends: source 0 alone holds it.
        w.end(1);
        rows(&mut w, 0, 260, at(34));
        assert_eq!(w.advance(at(34)), Some(260));
        let marks = w.checkpointed();
        assert_eq!(marks[0].watermark, Some(260));
        assert_eq!(marks[1].watermark, Some(180));
        // Restored, every source holds its own again.
        let mut back = PipelineWatermarks::new(
            IDLE,
            Some(260),
            vec![(true, marks[0].clone()), (true, marks[1].clone())],
            at(40),
        );
        rows(&mut back, 0, 300, at(41));
        assert_eq!(back.advance(at(41)), None, "source 1 is still at 180");
        rows(&mut back, 1, 290, at(42));
        assert_eq!(back.advance(at(42)), Some(290));
    }

    #[test]
    fn a_source_held_back_is_never_idle() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let fresh = vec![(true, InputMarks::default()), (true, InputMarks::default())];
        let mut w = PipelineWatermarks::new(IDLE, None, fresh, t0);
        // Source 1 waits for source 0 to be read first, far longer than the idle timeout.
        w.hold(&[false, true], t0);
        rows(&mut w, 0, 100, at(60));
        assert_eq!(
            w.advance(at(60)),
            None,
            "source 1 has not given its rows yet"
        );
        w.end(0);
        w.hold(&[false, false], at(61));
        assert_eq!(w.advance(at(61)), None, "source 1 has no watermark yet");
        rows(&mut w, 1, 50, at(62));
        assert_eq!(w.advance(at(62)), Some(50), "its first rows are not late");
        rows(&mut w, 1, 150, at(63));
        assert_eq!(w.advance(at(63)), Some(150));
    }
}
