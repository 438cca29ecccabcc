//! How a pipeline takes the batches of its sources' reader tasks: each in a channel of its own,
//! taken in turn, while a join's table loads only from that table, and in a batch run the
//! smaller side of a regular join before the other, and the sources in step by event time.

use tokio::sync::mpsc;
use tributary_connectors::{ConnectorError, SourceBatch};

/// What a reader task hands the pipeline task: a batch, the end of its input, or a failure.
pub type SourceMessage = std::result::Result<Option<SourceBatch>, ConnectorError>;

/// Which inputs the pipeline takes batches from: while some join's table gives its initial
/// load, only those tables; otherwise those still running whose `waits` ended.
pub fn readable(ended: &[bool], loading: &[bool], waits: &[Vec<usize>]) -> Vec<bool> {
    let any_loading = loading.iter().any(|l| *l);
    (0..ended.len())
        .map(|i| {
            !ended[i]
                && match any_loading {
                    true => loading[i],
                    false => waits[i].iter().all(|&w| ended[w]),
                }
        })
        .collect()
}

/// Of the inputs that `can_read`, those not `ahead` of the others in event time, when there are
/// any: in a batch run, sources read in step by event time keep an interval join's state to
/// its bound (a source read ahead would have its rows kept until the others catch up, as
/// Flink's watermark alignment avoids). Never leaves no input to read.
pub fn aligned(can_read: Vec<bool>, ahead: &[bool]) -> Vec<bool> {
    let behind: Vec<bool> = can_read.iter().zip(ahead).map(|(r, a)| *r && !a).collect();
    match behind.iter().any(|r| *r) {
        true => behind,
        false => can_read,
    }
}

/// For a batch run, which inputs wait for which to end (`waits[i]`: the inputs read before
/// input `i`). A regular join keeps each side's rows until the other side ends, so the side
/// with less to read (`remaining`, in bytes) is read whole first, as a batch hash join builds
/// on its smaller side: the join then keeps only that side, and the other passes through it.
/// Sides sharing an input, of unknown size, or whose order would contradict an earlier join's
/// are read together.
pub fn read_order(joins: &[[Vec<usize>; 2]], remaining: &[Option<u64>]) -> Vec<Vec<usize>> {
    let mut waits: Vec<Vec<usize>> = vec![Vec::new(); remaining.len()];
    for [left, right] in joins {
        if left.iter().any(|i| right.contains(i)) {
            continue;
        }
        let size = |side: &[usize]| side.iter().map(|&i| remaining[i]).sum::<Option<u64>>();
        let (Some(l), Some(r)) = (size(left), size(right)) else {
            continue;
        };
        let (first, then) = if l <= r { (left, right) } else { (right, left) };
        if first
            .iter()
            .any(|&f| then.iter().any(|&t| waits_for(&waits, f, t)))
        {
            continue;
        }
        for &t in then {
            waits[t].extend(first.iter().copied());
            waits[t].sort_unstable();
            waits[t].dedup();
        }
    }
    waits
}

/// Whether input `i` waits, directly or through others, for input `j`.
fn waits_for(waits: &[Vec<usize>], i: usize, j: usize) -> bool {
    let mut seen = vec![false; waits.len()];
    let mut todo = vec![i];
    while let Some(k) = todo.pop() {
        for &w in &waits[k] {
            if w == j {
                return true;
            }
            if !std::mem::replace(&mut seen[w], true) {
                todo.push(w);
            }
        }
    }
    false
}

/// The next message of one of the `readable` inputs (`None`: its reader is gone), taking them
/// in turn when several have one; never, when none is readable.
pub async fn next_message(
    receivers: &mut [mpsc::Receiver<SourceMessage>],
    readable: Vec<bool>,
    turn: usize,
) -> (usize, Option<SourceMessage>) {
    let mut waiting: Vec<_> = receivers
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| readable[*i])
        .map(|(i, rx)| Box::pin(async move { (i, rx.recv().await) }))
        .collect();
    if waiting.is_empty() {
        return std::future::pending().await;
    }
    let n = waiting.len();
    waiting.rotate_left(turn % n);
    futures::future::select_all(waiting).await.0
}

/// Aborts the source task when the run ends, however it ends.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_side_of_a_regular_join_is_read_first() {
        // bids (0) JOIN auctions (1): the auctions are smaller.
        let joins = [[vec![0], vec![1]]];
        let waits = read_order(&joins, &[Some(2_400), Some(390)]);
        assert_eq!(waits, vec![vec![1], vec![]]);
        assert_eq!(
            readable(&[false, false], &[false, false], &waits),
            [false, true]
        );
        assert_eq!(
            readable(&[false, true], &[false, false], &waits),
            [true, false]
        );
        // A table loading goes first whatever the order.
        assert_eq!(
            readable(&[false, false], &[true, false], &waits),
            [true, false]
        );
    }

    #[test]
    fn inputs_ahead_in_event_time_wait_unless_nothing_else_can_be_read() {
        assert_eq!(aligned(vec![true, true], &[true, false]), [false, true]);
        assert_eq!(aligned(vec![true, false], &[true, false]), [true, false]);
        assert_eq!(aligned(vec![true, true], &[false, false]), [true, true]);
    }

    #[test]
    fn unknown_sizes_shared_inputs_and_contradictions_read_together() {
        assert_eq!(
            read_order(&[[vec![0], vec![1]]], &[None, Some(1)]),
            vec![Vec::<usize>::new(); 2]
        );
        assert_eq!(
            read_order(&[[vec![0, 1], vec![1]]], &[Some(1), Some(1)]),
            vec![Vec::<usize>::new(); 2]
        );
        // Input 0 before 1 and 2 together (10 bytes against 15); then a join of 1 (5 bytes)
        // and 0 would read 1 first, against the first order: left alone.
        let joins = [[vec![0], vec![1, 2]], [vec![1], vec![0]]];
        let waits = read_order(&joins, &[Some(10), Some(5), Some(10)]);
        assert_eq!(waits, vec![vec![], vec![0], vec![0]]);
    }
}
