//! UpdatingAggregate with in-process batches: emissions per checkpoint, merging, spilling,
//! restores and the state TTL.

use arrow::array::{AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};

use super::*;
use crate::runtime::operator::tests::aggregate_plan;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
    ]))
}

fn batch(rows: &[(&str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

async fn operator() -> UpdatingAggregate {
    operator_with_ttl(None).await
}

async fn operator_with_ttl(ttl: Option<Duration>) -> UpdatingAggregate {
    let plan = aggregate_plan(
        schema(),
        "SELECT k, count(*) AS n, sum(v) AS total, count(DISTINCT v) AS values FROM t GROUP BY k",
    )
    .await;
    UpdatingAggregate::new(plan, 1, ttl).unwrap()
}

/// (k, n, total, distinct values) of emitted rows, sorted.
fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, i64, i64)> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            out.push((
                b.column(0).as_string::<i32>().value(i).to_string(),
                b.column(1).as_primitive::<Int64Type>().value(i),
                b.column(2).as_primitive::<Int64Type>().value(i),
                b.column(3).as_primitive::<Int64Type>().value(i),
            ));
        }
    }
    out.sort();
    out
}

fn row(k: &str, n: i64, total: i64, values: i64) -> (String, i64, i64, i64) {
    (k.to_string(), n, total, values)
}

#[tokio::test]
async fn each_checkpoint_emits_the_groups_that_changed_whole() {
    let mut op = operator().await;
    op.process(0, batch(&[("a", 1), ("b", 2), ("a", 3)]))
        .unwrap();
    op.commit_batch();
    assert_eq!(
        rows(&op.on_checkpoint().unwrap()),
        vec![row("a", 2, 4, 2), row("b", 1, 2, 1)]
    );
    assert!(op.on_checkpoint().unwrap().is_empty(), "nothing changed");
    op.process(0, batch(&[("a", 1), ("c", 5)])).unwrap();
    op.commit_batch();
    // A batch a later operator failed on leaves nothing behind.
    op.process(0, batch(&[("b", 100)])).unwrap();
    op.abort_batch();
    // Only a and c changed; a's row is its whole aggregate.
    assert_eq!(
        rows(&op.on_checkpoint().unwrap()),
        vec![row("a", 3, 5, 2), row("c", 1, 5, 1)]
    );
    assert_eq!(op.state_rows(), 3);
}

/// Many groups in every batch of a long epoch: the batches' partial states are merged as
/// they come, so the state holds about one row per group, not one per group and batch;
/// the emission, an incremental snapshot and a restore from it are unchanged by it.
#[tokio::test]
async fn an_epochs_partial_states_merge_as_they_come() {
    let mut op = operator().await;
    let groups = 20_000;
    let keys: Vec<String> = (0..groups).map(|g| format!("g{g}")).collect();
    let mut most = 0;
    let mut snapshots = op.snapshot(true).unwrap();
    for epoch in 0..2 {
        for b in 0..40 {
            let rows: Vec<(&str, i64)> = keys
                .iter()
                .enumerate()
                .map(|(g, k)| (k.as_str(), ((g + b) % 3) as i64))
                .collect();
            op.process(0, batch(&rows)).unwrap();
            op.commit_batch();
            op.fit_memory().unwrap();
            most = most.max(op.state_rows());
        }
        let out = rows(&op.on_checkpoint().unwrap());
        assert_eq!(out.len(), groups);
        let n = 40 * (epoch + 1);
        for (k, got_n, total, values) in &out {
            let g: usize = k[1..].parse().unwrap();
            let total_want: i64 = (0..n).map(|b| ((g + b % 40) % 3) as i64).sum();
            assert_eq!((*got_n, *total, *values), (n as i64, total_want, 3), "{k}");
        }
        snapshots.extend(op.snapshot(false).unwrap());
    }
    // Without merging, an epoch would hold 40 rows per group.
    assert!(most <= 5 * groups + 2 * 131_072, "{most} state rows");
    let mut restored = operator().await;
    restored.restore(snapshots, None).unwrap();
    assert_eq!(restored.state_rows(), groups);
    restored.process(0, batch(&[("g7", 10)])).unwrap();
    restored.commit_batch();
    let total: i64 = (0..80).map(|b| ((7 + b % 40) % 3) as i64).sum::<i64>() + 10;
    assert_eq!(
        rows(&restored.on_checkpoint().unwrap()),
        vec![row("g7", 81, total, 4)]
    );
}

/// `s` seconds after the start of a test.
fn seconds_in() -> impl Fn(i64) -> i64 {
    let t0 = now_micros();
    move |s| t0 + s * 1_000_000
}

/// An operator with a TTL of 80 s in which a and b changed at 0 s and a again at 50 s
/// (`at`), with a full snapshot taken after the first and a change snapshot after the
/// second.
async fn a_and_b_changed(at: &impl Fn(i64) -> i64) -> (UpdatingAggregate, Vec<StateChunk>) {
    let mut op = operator_with_ttl(Some(Duration::from_secs(80))).await;
    op.process(0, batch(&[("a", 1), ("b", 2)])).unwrap();
    op.commit_batch();
    op.emit_changed(at(0)).unwrap();
    let mut state = op.snapshot(true).unwrap();
    op.process(0, batch(&[("a", 3)])).unwrap();
    op.commit_batch();
    op.emit_changed(at(50)).unwrap();
    state.extend(op.snapshot(false).unwrap());
    (op, state)
}

#[tokio::test]
async fn groups_unchanged_for_the_ttl_leave_the_state_and_start_afresh() {
    let at = seconds_in();
    let (mut op, state) = a_and_b_changed(&at).await;
    assert!(!op.wants_full_snapshot());
    // At 85 s, b (last changed at 0) is past the TTL; a (at 50) is not.
    assert!(op.emit_changed(at(85)).unwrap().is_empty());
    assert_eq!(op.state_rows(), 1);
    // Older change files still hold b: the next snapshot must be the whole state.
    assert!(op.wants_full_snapshot());
    let full = op.snapshot(true).unwrap();
    assert!(!op.wants_full_snapshot());
    // a's state and a's change time.
    assert_eq!(full.iter().map(|c| c.rows()).sum::<usize>(), 2);
    assert!(state.len() > 1);
    // b again: a group of its own, from this row alone; a keeps its totals.
    op.process(0, batch(&[("b", 5), ("a", 1)])).unwrap();
    op.commit_batch();
    assert_eq!(
        rows(&op.emit_changed(at(90)).unwrap()),
        vec![row("a", 3, 5, 2), row("b", 1, 5, 1)]
    );
    // Without a TTL nothing leaves.
    let mut kept = operator().await;
    kept.process(0, batch(&[("a", 1)])).unwrap();
    kept.commit_batch();
    kept.emit_changed(at(0)).unwrap();
    kept.emit_changed(at(1_000_000)).unwrap();
    assert_eq!(kept.state_rows(), 1);
}

#[tokio::test]
async fn a_restored_group_keeps_its_change_time() {
    let ttl = Duration::from_secs(80);
    let at = seconds_in();
    let (op, state) = a_and_b_changed(&at).await;
    // Through state files, and into a state memory that spills files back.
    let memory = StateMemory::new(Some(1 << 20)).unwrap();
    let state = crate::runtime::operator::tests::through_files(&memory, &op, state);
    let mut restored = operator_with_ttl(Some(ttl)).await.with_memory(&memory);
    restored.restore(state, None).unwrap();
    assert_eq!(restored.state_rows(), 2);
    // At 85 s, b (changed at 0) leaves and a (at 50) stays, as they would have without
    // the restart; the restore's own time does not count.
    restored.emit_changed(at(85)).unwrap();
    assert_eq!(restored.state_rows(), 1);
    restored.process(0, batch(&[("a", 1), ("b", 7)])).unwrap();
    restored.commit_batch();
    assert_eq!(
        rows(&restored.emit_changed(at(90)).unwrap()),
        vec![row("a", 3, 5, 2), row("b", 1, 7, 1)]
    );
    // Restored again, both (changed at 90) are there at 169 s and gone at 180 s.
    let mut again = operator_with_ttl(Some(ttl)).await;
    again
        .restore(restored.snapshot(true).unwrap(), None)
        .unwrap();
    again.emit_changed(at(169)).unwrap();
    assert_eq!(again.state_rows(), 2);
    again.emit_changed(at(180)).unwrap();
    assert_eq!(again.state_rows(), 0);
}

#[tokio::test]
async fn groups_beyond_the_budget_spill_and_emit_the_same() {
    // 40 000 groups, far beyond 256 kB of state; each checkpoint changes a fifth of them.
    let memory = StateMemory::new(Some(256 << 10)).unwrap();
    let mut spilling = operator().await.with_memory(&memory);
    let mut unbounded = operator().await;
    let key = |i: i64| format!("customer-{:06}", (i * 7919) % 40_000);
    let mut spilled = 0;
    for epoch in 0..12i64 {
        let keys: Vec<String> = (0..8_000).map(|i| key(epoch * 8_000 + i)).collect();
        let rows: Vec<(&str, i64)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), (i as i64 + epoch) % 13))
            .collect();
        for op in [&mut spilling, &mut unbounded] {
            for part in rows.chunks(1_000) {
                op.process(0, batch(part)).unwrap();
                op.commit_batch();
                op.fit_memory().unwrap();
            }
        }
        assert_eq!(
            rows_of(&spilling.on_checkpoint().unwrap()),
            rows_of(&unbounded.on_checkpoint().unwrap()),
            "epoch {epoch}"
        );
        spilling.fit_memory().unwrap();
        assert!(spilling.state_bytes() <= 256 << 10);
        spilled = spilled.max(spilling.spilled_bytes());
        if epoch == 5 {
            // Restored from a full snapshot (spill files and all), it goes on the same.
            let full = spilling.snapshot(true).unwrap();
            assert!(full.iter().any(|c| matches!(c, StateChunk::Spilled(_))));
            let mut restored = operator().await.with_memory(&memory);
            restored.restore(full, None).unwrap();
            spilling = restored;
        }
    }
    assert!(spilled > 0, "the state was spilled");
    assert_eq!(unbounded.state_rows(), 40_000);
}

/// When DataFusion's merge of the changed groups runs out of its memory it spills, and
/// reads the spill back through tokio tasks: on a worker of the multi-threaded runtime
/// (as pipelines run), waiting for the merge must not keep those tasks from running.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn merges_that_spill_inside_datafusion_finish_on_a_runtime_worker() {
    let memory = StateMemory::with_merge_memory(1 << 30, Some(2 << 20)).unwrap();
    let mut spilling = operator().await.with_memory(&memory);
    let mut unbounded = operator().await;
    // 200 000 groups, each with a distinct-values state: far beyond 2 MB to merge.
    let keys: Vec<String> = (0..200_000).map(|i| format!("k{i:07}")).collect();
    for op in [&mut spilling, &mut unbounded] {
        for part in keys.chunks(8_192) {
            let rows: Vec<(&str, i64)> = part.iter().map(|k| (k.as_str(), 7)).collect();
            op.process(0, batch(&rows)).unwrap();
            op.commit_batch();
        }
    }
    // In a task, as a pipeline runs: tasks it spawns queue on the same worker.
    let merge = tokio::spawn(async move { rows_of(&spilling.on_checkpoint().unwrap()) });
    let spilled = tokio::time::timeout(std::time::Duration::from_secs(120), merge)
        .await
        .expect("the merge finishes (it hung when its spill tasks queued behind it)")
        .unwrap();
    assert_eq!(spilled.len(), 200_000);
    assert_eq!(spilled, rows_of(&unbounded.on_checkpoint().unwrap()));
}

/// Emitted rows, sorted.
fn rows_of(batches: &[RecordBatch]) -> Vec<(String, i64, i64, i64)> {
    rows(batches)
}

#[tokio::test]
async fn restore_merges_the_snapshots_of_every_epoch() {
    let mut op = operator().await;
    op.process(0, batch(&[("a", 1), ("b", 2)])).unwrap();
    op.commit_batch();
    op.on_checkpoint().unwrap();
    let first = op.snapshot(true).unwrap();
    op.process(0, batch(&[("a", 7)])).unwrap();
    op.commit_batch();
    op.on_checkpoint().unwrap();
    let second = op.snapshot(false).unwrap();
    let mut restored = operator().await;
    restored.restore([first, second].concat(), None).unwrap();
    assert_eq!(restored.state_rows(), 2);
    restored.process(0, batch(&[("b", 2)])).unwrap();
    restored.commit_batch();
    restored.process(0, batch(&[("a", 1)])).unwrap();
    restored.commit_batch();
    assert_eq!(
        rows(&restored.on_checkpoint().unwrap()),
        vec![row("a", 3, 9, 2), row("b", 2, 4, 1)]
    );
}
