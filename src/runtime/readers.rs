//! How a pipeline takes the batches of its sources' reader tasks: each in a channel of its own,
//! taken in turn, while a join's table loads only from that table.

use tokio::sync::mpsc;
use tributary_connectors::{ConnectorError, SourceBatch};

/// What a reader task hands the pipeline task: a batch, the end of its input, or a failure.
pub type SourceMessage = std::result::Result<Option<SourceBatch>, ConnectorError>;

/// Which inputs the pipeline takes batches from: those still running, and while some join's
/// table gives its initial load, only those tables.
pub fn readable(ended: &[bool], loading: &[bool]) -> Vec<bool> {
    let any_loading = loading.iter().any(|l| *l);
    ended
        .iter()
        .zip(loading)
        .map(|(e, l)| !e && (*l || !any_loading))
        .collect()
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
