//! Each pipeline's recent figures, sampled once a second into a 15-minute ring (the console's
//! charts and `/api/v1/pipelines/{name}/history`), and the health verdict read from them
//! (`tributary.pipelines.health`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

/// How many samples a pipeline's ring keeps: 15 minutes at one a second.
pub const HISTORY_SAMPLES: usize = 900;
/// How often the engine samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// A running pipeline with input waiting that moved for this many checkpoint intervals is
/// stalled.
pub const STALLED_INTERVALS: u32 = 3;

/// The longest stillness judged: 10 minutes, within the ring's 15 (a checkpoint interval of
/// 5 minutes or more would otherwise never be judged stalled or idle).
pub const STILL_AT_MOST: Duration = Duration::from_secs(600);
/// The trend of the lag is read over this much of the recent past.
const TREND: Duration = Duration::from_secs(30);

/// One pipeline's figures at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// UTC milliseconds.
    pub at_ms: i64,
    /// Counters as `tributary.pipelines` has them.
    pub rows_in: u64,
    pub rows_out: u64,
    pub rows_errored: u64,
    /// The last checkpoint's epoch.
    pub epoch: u64,
    /// Records (or WAL bytes) its sources have yet to read, summed over partitions; `None`
    /// when no source reports it.
    pub lag: Option<i64>,
    /// Whether it was running.
    pub running: bool,
}

/// Every pipeline's recent samples.
#[derive(Debug, Default)]
pub struct History {
    rings: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl History {
    /// Adds `sample` to `pipeline`'s ring, dropping the oldest past [`HISTORY_SAMPLES`].
    pub fn record(&self, pipeline: &str, sample: Sample) {
        let mut rings = self.rings.lock();
        let ring = rings.entry(pipeline.to_string()).or_default();
        if ring.len() == HISTORY_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Forgets the pipelines not in `alive` (dropped).
    pub fn retain(&self, alive: &[String]) {
        self.rings.lock().retain(|name, _| alive.contains(name));
    }

    /// Every pipeline's last `last` samples (at most), oldest first.
    pub fn recent(&self, last: usize) -> std::collections::BTreeMap<String, Vec<Sample>> {
        self.rings
            .lock()
            .iter()
            .map(|(name, ring)| {
                let skip = ring.len().saturating_sub(last);
                (name.clone(), ring.iter().skip(skip).cloned().collect())
            })
            .collect()
    }

    /// `pipeline`'s samples, oldest first.
    pub fn samples(&self, pipeline: &str) -> Vec<Sample> {
        self.rings
            .lock()
            .get(pipeline)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What a pipeline's recent samples say about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Running and keeping up: little or nothing left to read.
    Healthy,
    /// Running with nothing to read and no way to tell more (its sources report no lag).
    Idle,
    /// Input is waiting and the pipeline reads: caught up in about this long (`None` until
    /// two samples give the lag's trend).
    CatchingUp { eta: Option<Duration> },
    /// The lag grows (or holds) faster than the pipeline reads.
    FallingBehind { lag: i64, growth_per_s: f64 },
    /// Input is waiting and nothing moved for this long.
    Stalled { for_: Duration },
    /// Failed, with its error.
    Failed { error: String },
}

impl Verdict {
    /// The verdict's name, as `tributary.pipelines.health` has it.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Idle => "idle",
            Verdict::CatchingUp { .. } => "catching_up",
            Verdict::FallingBehind { .. } => "falling_behind",
            Verdict::Stalled { .. } => "stalled",
            Verdict::Failed { .. } => "failed",
        }
    }

    /// What backs it, for a person.
    pub fn detail(&self) -> Option<String> {
        match self {
            Verdict::Healthy | Verdict::Idle => None,
            Verdict::CatchingUp { eta: Some(eta) } => {
                Some(format!("caught up in about {} s", eta.as_secs()))
            }
            Verdict::CatchingUp { eta: None } => {
                Some("input waiting; measuring how fast it catches up".into())
            }
            Verdict::FallingBehind { lag, growth_per_s } => Some(format!(
                "{lag} behind, growing by {growth_per_s:.0} a second"
            )),
            Verdict::Stalled { for_ } => Some(format!(
                "input waiting, no progress for {} s",
                for_.as_secs()
            )),
            Verdict::Failed { error } => Some(error.clone()),
        }
    }
}

/// The verdict on a pipeline from its samples (oldest first; the last is the latest), its
/// checkpoint interval, whether it runs now and, when it failed, its error. `None` for a
/// pipeline neither running nor failed.
pub fn verdict(
    samples: &[Sample],
    checkpoint_interval: Duration,
    running: bool,
    failed: Option<&str>,
) -> Option<Verdict> {
    if let Some(error) = failed {
        return Some(Verdict::Failed {
            error: error.to_string(),
        });
    }
    if !running {
        return None;
    }
    // Started since the last sample: nothing to judge by yet.
    let Some(now) = samples.last().filter(|s| s.running) else {
        return Some(Verdict::Healthy);
    };
    // The running stretch that ends now.
    let start = samples
        .iter()
        .rposition(|s| !s.running)
        .map_or(0, |i| i + 1);
    let running = &samples[start..];
    let waiting = now.lag.is_some_and(|l| l > 0);
    // Since when nothing moved.
    let still_since = running
        .iter()
        .rev()
        .take_while(|s| s.rows_in == now.rows_in && s.epoch == now.epoch)
        .last()
        .map_or(now.at_ms, |s| s.at_ms);
    let still = millis(now.at_ms - still_since);
    // Judged within the ring's 15 minutes, however long the checkpoint interval.
    let window = (checkpoint_interval * STALLED_INTERVALS).min(STILL_AT_MOST);
    if waiting && still >= window {
        return Some(Verdict::Stalled { for_: still });
    }
    let Some(lag) = now.lag else {
        return Some(if still >= window {
            Verdict::Idle
        } else {
            Verdict::Healthy
        });
    };
    let then = running
        .iter()
        .find(|s| now.at_ms - s.at_ms <= TREND.as_millis() as i64 && s.lag.is_some())
        .unwrap_or(now);
    let seconds = (now.at_ms - then.at_ms) as f64 / 1000.0;
    if seconds <= 0.0 {
        // One sample: no rate yet to judge the lag by.
        return Some(if lag == 0 {
            Verdict::Healthy
        } else {
            Verdict::CatchingUp { eta: None }
        });
    }
    let read_per_s = (now.rows_in - then.rows_in.min(now.rows_in)) as f64 / seconds;
    // Caught up: what is left takes under two seconds at the rate it reads.
    if lag == 0 || (lag as f64) <= 2.0 * read_per_s {
        return Some(Verdict::Healthy);
    }
    let growth_per_s = (lag - then.lag.unwrap_or(lag)) as f64 / seconds;
    Some(if growth_per_s < 0.0 {
        Verdict::CatchingUp {
            eta: Duration::try_from_secs_f64(lag as f64 / -growth_per_s).ok(),
        }
    } else {
        Verdict::FallingBehind { lag, growth_per_s }
    })
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples a second apart: (rows_in, epoch, lag).
    fn series(points: &[(u64, u64, Option<i64>)]) -> Vec<Sample> {
        points
            .iter()
            .enumerate()
            .map(|(i, &(rows_in, epoch, lag))| Sample {
                at_ms: 1_000_000 + 1000 * i as i64,
                rows_in,
                rows_out: rows_in,
                rows_errored: 0,
                epoch,
                lag,
                running: true,
            })
            .collect()
    }

    const FIVE_S: Duration = Duration::from_secs(5);

    #[test]
    fn verdicts_follow_the_lag_and_the_progress() {
        // Reading 1,000 a second with 500 left: healthy.
        let s = series(&[
            (0, 0, Some(500)),
            (1000, 0, Some(500)),
            (2000, 1, Some(500)),
        ]);
        assert_eq!(verdict(&s, FIVE_S, true, None), Some(Verdict::Healthy));
        // 10,000 left, falling by 1,000 a second: caught up in 10 s.
        let s = series(&[
            (0, 0, Some(12_000)),
            (2000, 0, Some(11_000)),
            (4000, 1, Some(10_000)),
        ]);
        assert_eq!(
            verdict(&s, FIVE_S, true, None),
            Some(Verdict::CatchingUp {
                eta: Some(Duration::from_secs(10))
            })
        );
        // Growing: falling behind.
        let s = series(&[
            (0, 0, Some(10_000)),
            (100, 0, Some(20_000)),
            (200, 1, Some(30_000)),
        ]);
        assert!(matches!(
            verdict(&s, FIVE_S, true, None),
            Some(Verdict::FallingBehind { lag: 30_000, .. })
        ));
        // Input waiting and nothing moved for 15 s (3 intervals of 5 s): stalled.
        let mut points = vec![(0, 0, Some(1000))];
        points.extend(std::iter::repeat_n((50, 2, Some(1000)), 16));
        let s = series(&points);
        assert_eq!(
            verdict(&s, FIVE_S, true, None),
            Some(Verdict::Stalled {
                for_: Duration::from_secs(15)
            })
        );
        // The same without lag: idle, not stalled.
        let points: Vec<_> = points.iter().map(|&(r, e, _)| (r, e, None)).collect();
        assert_eq!(
            verdict(&series(&points), FIVE_S, true, None),
            Some(Verdict::Idle)
        );
        // Failed wins; neither running nor failed has none.
        assert!(matches!(
            verdict(&s, FIVE_S, false, Some("boom")),
            Some(Verdict::Failed { .. })
        ));
        assert_eq!(verdict(&s, FIVE_S, false, None), None);
    }

    #[test]
    fn one_sample_with_input_waiting_is_not_healthy_and_long_intervals_still_stall() {
        let one = series(&[(0, 0, Some(1_000_000))]);
        assert_eq!(
            verdict(&one, FIVE_S, true, None),
            Some(Verdict::CatchingUp { eta: None })
        );
        assert_eq!(
            verdict(&series(&[(0, 0, Some(0))]), FIVE_S, true, None),
            Some(Verdict::Healthy)
        );
        // A 10-minute checkpoint interval: 3 intervals exceed the ring; stalled after 10 min.
        let mut points = vec![(0, 0, Some(1000))];
        points.extend(std::iter::repeat_n((50, 2, Some(1000)), 601));
        assert_eq!(
            verdict(&series(&points), Duration::from_secs(600), true, None),
            Some(Verdict::Stalled {
                for_: Duration::from_secs(600)
            })
        );
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes() {
        let history = History::default();
        for (i, s) in series(&vec![(1, 1, None); HISTORY_SAMPLES + 10])
            .into_iter()
            .enumerate()
        {
            history.record(
                "p",
                Sample {
                    rows_in: i as u64,
                    ..s
                },
            );
        }
        let kept = history.samples("p");
        assert_eq!(kept.len(), HISTORY_SAMPLES);
        assert_eq!(kept[0].rows_in, 10);
        history.retain(&[]);
        assert!(history.samples("p").is_empty());
    }
}
