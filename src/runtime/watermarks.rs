//! A source's watermark over its splits (Kafka partitions): each split's watermark follows its
//! own rows, the source's is the least of the splits that are not idle, and it never goes back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One split's progress.
#[derive(Debug, Clone)]
struct Split {
    /// The largest watermark its rows imply (UTC microseconds); `None` before any.
    watermark: Option<i64>,
    /// When it last gave rows (or was first seen).
    active_at: Instant,
}

/// What a system table shows of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitWatermark {
    /// The split's name (a Kafka partition number; empty when the source is one split).
    pub split: String,
    /// Its watermark (UTC microseconds).
    pub watermark: Option<i64>,
    /// It gave no rows for the idle timeout, so it no longer holds the watermark back.
    pub idle: bool,
}

/// The watermarks of one source's splits.
#[derive(Debug, Clone)]
pub struct Watermarks {
    splits: BTreeMap<String, Split>,
    idle_timeout: Duration,
    /// The source's watermark.
    current: Option<i64>,
}

impl Watermarks {
    /// Watermarks restored from a checkpoint (`current` and the splits'), every split active
    /// from now.
    pub fn new(
        idle_timeout: Duration,
        current: Option<i64>,
        splits: &BTreeMap<String, i64>,
        now: Instant,
    ) -> Self {
        Watermarks {
            splits: splits
                .iter()
                .map(|(name, w)| {
                    (
                        name.clone(),
                        Split {
                            watermark: Some(*w),
                            active_at: now,
                        },
                    )
                })
                .collect(),
            idle_timeout,
            current,
        }
    }

    /// The source's watermark.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Notes a split the source has, with or without rows: one never seen before holds the
    /// watermark back until it gives rows or goes idle.
    pub fn see(&mut self, split: &str, now: Instant) {
        if !self.splits.contains_key(split) {
            self.splits.insert(
                split.to_string(),
                Split {
                    watermark: None,
                    active_at: now,
                },
            );
        }
    }

    /// Split `split` gave rows implying watermark `watermark` (`None` when none had a time).
    pub fn rows(&mut self, split: &str, watermark: Option<i64>, now: Instant) {
        self.see(split, now);
        if let Some(s) = self.splits.get_mut(split) {
            s.active_at = now;
            if let Some(w) = watermark {
                s.watermark = Some(s.watermark.map_or(w, |old| old.max(w)));
            }
        }
    }

    fn idle(&self, split: &Split, now: Instant) -> bool {
        now.saturating_duration_since(split.active_at) >= self.idle_timeout
    }

    /// Recomputes the source's watermark at `now`: the least of the active splits' (nothing
    /// while an active split has none yet), or when every split is idle the greatest. Returns
    /// it when it moved forward.
    pub fn advance(&mut self, now: Instant) -> Option<i64> {
        let active: Vec<Option<i64>> = self
            .splits
            .values()
            .filter(|s| !self.idle(s, now))
            .map(|s| s.watermark)
            .collect();
        let candidate = if active.is_empty() {
            self.splits.values().filter_map(|s| s.watermark).max()
        } else {
            active
                .iter()
                .copied()
                .try_fold(i64::MAX, |least, w| Some(least.min(w?)))
        };
        match candidate {
            Some(c) if self.current.is_none_or(|w| c > w) => {
                self.current = Some(c);
                self.current
            }
            _ => None,
        }
    }

    /// Each split's watermark, for the checkpoint.
    pub fn checkpointed(&self) -> BTreeMap<String, i64> {
        self.splits
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.watermark?)))
            .collect()
    }

    /// Each split as `tributary.source_lag` shows it.
    pub fn shown(&self, now: Instant) -> Vec<SplitWatermark> {
        self.splits
            .iter()
            .map(|(name, s)| SplitWatermark {
                split: name.clone(),
                watermark: s.watermark,
                idle: self.idle(s, now),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    #[test]
    fn the_least_active_split_holds_the_watermark() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(IDLE, None, &BTreeMap::new(), t0);
        w.see("0", t0);
        w.rows("1", Some(100), t0);
        // Partition 0 has given nothing yet: no watermark.
        assert_eq!(w.advance(t0), None);
        w.rows("0", Some(40), t0);
        assert_eq!(w.advance(t0), Some(40));
        w.rows("0", Some(70), t0 + Duration::from_secs(1));
        assert_eq!(w.advance(t0 + Duration::from_secs(1)), Some(70));
        // Partition 1 falls silent: after the idle timeout it stops holding 0 back, and the
        // watermark follows 0 alone.
        w.rows("0", Some(150), t0 + Duration::from_secs(31));
        assert_eq!(w.advance(t0 + Duration::from_secs(31)), Some(150));
        assert!(w.shown(t0 + Duration::from_secs(31))[1].idle);
        // Back with older rows: active again, but the watermark never goes back.
        w.rows("1", Some(120), t0 + Duration::from_secs(32));
        assert_eq!(w.advance(t0 + Duration::from_secs(32)), None);
        assert_eq!(w.current(), Some(150));
        assert_eq!(
            w.checkpointed(),
            BTreeMap::from([("0".to_string(), 150), ("1".to_string(), 120)])
        );
    }

    #[test]
    fn when_every_split_is_idle_the_greatest_counts() {
        let t0 = Instant::now();
        let restored = BTreeMap::from([("0".to_string(), 10), ("1".to_string(), 25)]);
        let mut w = Watermarks::new(IDLE, Some(10), &restored, t0);
        assert_eq!(w.advance(t0), None);
        assert_eq!(w.advance(t0 + IDLE), Some(25));
        // One split, unnamed: its own watermark, idle or not.
        let mut one = Watermarks::new(IDLE, None, &BTreeMap::new(), t0);
        one.rows("", Some(5), t0);
        assert_eq!(one.advance(t0), Some(5));
        one.rows("", None, t0);
        assert_eq!(one.advance(t0 + IDLE), None);
    }
}
