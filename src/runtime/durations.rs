//! How long a pipeline's checkpoints and sink commits take, as cumulative histograms over fixed
//! buckets (Prometheus's `le` convention), kept since the engine started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds; a last bucket holds everything (`+Inf`).
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations, updated without locks.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations per bucket, not cumulative; the last is past every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A histogram's figures at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or under it)`, cumulative, ending with
    /// `(f64::INFINITY, count)`.
    pub cumulative: Vec<(f64, u64)>,
    /// The observations' sum, in seconds.
    pub sum_seconds: f64,
}

impl DurationHistogram {
    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The figures now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| {
                total += n.load(Ordering::Relaxed);
                (bound, total)
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_the_first_bucket_that_holds_them_and_add_up() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(10));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        let at = |bound: f64| s.cumulative.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.005), 1);
        assert_eq!(at(0.01), 2);
        assert_eq!(at(0.25), 2);
        assert_eq!(at(0.5), 3);
        assert_eq!(at(30.0), 3);
        assert_eq!(s.cumulative.last(), Some(&(f64::INFINITY, 4)));
        assert!((s.sum_seconds - 60.313).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
