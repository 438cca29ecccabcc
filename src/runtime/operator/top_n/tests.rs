use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::Schema;

use super::*;
use crate::runtime::operator::tests::{row_number_spec, rows_as_text, through_files};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("t", DataType::Int64, true),
    ]))
}

fn batch(rows: &[(&str, i64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
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

/// The two highest `v` per `k` (earlier `t` first on ties).
async fn operator() -> TopN {
    let input: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    TopN::new(row_number_spec(&input, "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY k ORDER BY v DESC, t) AS rn FROM r) WHERE rn <= 2").await).unwrap()
}

/// Emitted rows as `k v t rn`, sorted.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    rows_as_text(batches)
}

// On a worker of tokio's multi-threaded runtime, as pipelines run: a plan handing work to a
// tokio task there would wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_checkpoint_emits_the_first_rows_of_the_partitions_that_changed() {
    tokio::spawn(first_rows_of_changed_partitions())
        .await
        .unwrap();
}

async fn first_rows_of_changed_partitions() {
    let mut op = operator().await;
    op.process(
        0,
        batch(&[("a", 5, 1), ("b", 1, 2), ("a", 7, 3), ("a", 1, 4)]),
    )
    .unwrap();
    op.commit_batch();
    assert_eq!(
        rows(&op.on_checkpoint().unwrap()),
        vec!["a 5 1 2", "a 7 3 1", "b 1 2 1"]
    );
    assert!(op.on_checkpoint().unwrap().is_empty(), "nothing changed");
    // A row below the first two changes nothing kept: its partition is not emitted again.
    op.process(0, batch(&[("a", 2, 5), ("b", 3, 6)])).unwrap();
    op.commit_batch();
    // A batch a later operator failed on leaves nothing behind.
    op.process(0, batch(&[("a", 100, 7)])).unwrap();
    op.abort_batch();
    assert_eq!(
        rows(&op.on_checkpoint().unwrap()),
        vec!["b 1 2 2", "b 3 6 1"]
    );
    // A tie goes to the earlier row; a new first pushes the others down.
    op.process(0, batch(&[("a", 7, 0)])).unwrap();
    op.commit_batch();
    assert_eq!(
        rows(&op.on_checkpoint().unwrap()),
        vec!["a 7 0 1", "a 7 3 2"]
    );
    // Two per partition kept, nothing else.
    assert_eq!(op.state_rows(), 4);
}

#[tokio::test]
async fn a_restored_operator_ranks_as_the_one_that_ran() {
    let mut op = operator().await;
    op.process(0, batch(&[("a", 5, 1), ("b", 1, 2), ("a", 7, 3)]))
        .unwrap();
    op.commit_batch();
    op.on_checkpoint().unwrap();
    let full = op.snapshot(true).unwrap();
    op.process(0, batch(&[("a", 6, 4), ("c", 9, 5)])).unwrap();
    op.commit_batch();
    op.on_checkpoint().unwrap();
    let changes = op.snapshot(false).unwrap();

    let mut restored = operator().await;
    restored
        .restore(full.into_iter().chain(changes).collect(), None)
        .unwrap();
    assert_eq!(restored.state_rows(), op.state_rows());
    assert!(
        restored.on_checkpoint().unwrap().is_empty(),
        "emitted before"
    );
    for o in [&mut op, &mut restored] {
        o.process(0, batch(&[("a", 8, 6), ("b", 0, 7)])).unwrap();
        o.commit_batch();
    }
    let want = rows(&op.on_checkpoint().unwrap());
    assert_eq!(want, vec!["a 7 3 2", "a 8 6 1", "b 0 7 2", "b 1 2 1"]);
    assert_eq!(rows(&restored.on_checkpoint().unwrap()), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rows_between_checkpoints_keep_only_the_first_of_each_partition() {
    tokio::spawn(many_rows()).await.unwrap();
}

async fn many_rows() {
    let mut op = operator().await;
    let keys = ["a", "b", "c"];
    for chunk in 0..40 {
        let rows: Vec<(&str, i64, i64)> = (0..5_000)
            .map(|i| {
                let n = chunk * 5_000 + i;
                (keys[(n % 3) as usize], (n * 7919) % 100_003, n)
            })
            .collect();
        op.process(0, batch(&rows)).unwrap();
        op.commit_batch();
        // Numbered every RANK_ROWS rows, not held to the checkpoint.
        assert!(op.fresh_rows <= RANK_ROWS + 5_000);
    }
    let out = rows(&op.on_checkpoint().unwrap());
    assert_eq!(out.len(), 6);
    assert_eq!(op.state_rows(), 6);
    // The highest values of 0..200,000 by n*7919 mod 100,003, per n mod 3.
    let mut best: Vec<(i64, i64, i64)> = (0..200_000i64)
        .map(|n| (n % 3, (n * 7919) % 100_003, n))
        .collect();
    best.sort_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)).then(x.2.cmp(&y.2)));
    let mut want = Vec::new();
    for k in 0..3 {
        for (rank, r) in best.iter().filter(|r| r.0 == k).take(2).enumerate() {
            want.push(format!("{} {} {} {}", keys[k as usize], r.1, r.2, rank + 1));
        }
    }
    want.sort();
    assert_eq!(out, want);
}

#[tokio::test]
async fn partitions_no_row_reached_for_the_ttl_leave_and_start_afresh() {
    let ttl = Duration::from_secs(80);
    let mut op = operator().await.with_ttl(Some(ttl));
    let t0 = super::now_micros();
    let at = |s: i64| t0 + s * 1_000_000;
    op.process(0, batch(&[("a", 5, 1), ("b", 1, 2)])).unwrap();
    op.commit_batch();
    op.checkpoint_at(at(0)).unwrap();
    let full = op.snapshot(true).unwrap();
    op.process(0, batch(&[("a", 6, 3)])).unwrap();
    op.commit_batch();
    assert_eq!(
        rows(&op.checkpoint_at(at(50)).unwrap()),
        vec!["a 5 1 2", "a 6 3 1"]
    );
    // At 85 s, b (last reached at 0) is past the TTL; a (at 50) is not.
    assert!(op.checkpoint_at(at(85)).unwrap().is_empty());
    assert_eq!(op.state_rows(), 2);
    // The change snapshot records b's rows leaving: a restore has them gone too.
    let changes = op.snapshot(false).unwrap();
    let state: Vec<StateChunk> = full.into_iter().chain(changes).collect();
    let mut restored = operator().await.with_ttl(Some(ttl));
    restored.restore(state.clone(), None).unwrap();
    assert_eq!(restored.state_rows(), 2);
    // Restored through a state file, a keeps when it was last reached (50 s): there at 125 s,
    // gone at 140 s; the restore's own time does not count.
    let memory = StateMemory::new(None).unwrap();
    let mut timed = operator().await.with_ttl(Some(ttl));
    timed
        .restore(through_files(&memory, &timed, state), None)
        .unwrap();
    timed.checkpoint_at(at(125)).unwrap();
    assert_eq!(timed.state_rows(), 2);
    timed.checkpoint_at(at(140)).unwrap();
    assert_eq!(timed.state_rows(), 0);
    // b again starts afresh, from this row alone; a keeps its first rows (unchanged, so
    // not emitted).
    for o in [&mut op, &mut restored] {
        o.process(0, batch(&[("b", 0, 9), ("a", 1, 10)])).unwrap();
        o.commit_batch();
        assert_eq!(rows(&o.checkpoint_at(at(90)).unwrap()), vec!["b 0 9 1"]);
        assert_eq!(o.state_rows(), 3);
    }
    // Without a TTL nothing leaves.
    let mut kept = operator().await;
    kept.process(0, batch(&[("a", 1, 1)])).unwrap();
    kept.commit_batch();
    kept.checkpoint_at(at(0)).unwrap();
    kept.checkpoint_at(at(1_000_000)).unwrap();
    assert_eq!(kept.state_rows(), 1);
}

/// Rows `k v t note` whose note is long: what a first row only keeps until it is emitted.
fn noted(rows: &[(String, i64, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("t", DataType::Int64, true),
        // Never NULL in the input; NULL in the rows kept once emitted.
        Field::new("note", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        Arc::new(StringArray::from_iter_values(
            rows.iter()
                .map(|r| format!("{}:{}:{}", r.0, r.2, "x".repeat(400))),
        )),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// The highest `v` per `k` (earlier `t` first on ties), over rows with a note.
async fn first_of(first_only: bool) -> TopN {
    let input: Vec<Field> = noted(&[])
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let sql = "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY k ORDER BY v DESC, t) AS rn FROM r) WHERE rn <= 1";
    TopN::new(row_number_spec(&input, sql).await)
        .unwrap()
        .first_only(first_only)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeping_the_first_row_only_emits_the_same_without_keeping_other_columns() {
    tokio::spawn(first_row_only()).await.unwrap();
}

async fn first_row_only() {
    let seed: u64 = std::env::var("TOP_N_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| super::now_micros() as u64);
    println!("TOP_N_SEED={seed}");
    let mut state = seed | 1;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    // 4 MB of state memory: the rows waiting to be emitted (about 2 MB an epoch) and the
    // table spill.
    let memory = StateMemory::new(Some(4 << 20)).unwrap();
    let mut lean = first_of(true).await.with_memory(&memory);
    let mut whole = first_of(false).await;
    let mut snapshots = Vec::new();
    let mut t = 0i64;
    let mut epoch =
        |lean: &mut TopN, others: &mut [&mut TopN], next: &mut dyn FnMut(u64) -> u64| {
            for _ in 0..4 {
                let rows: Vec<(String, i64, i64)> = (0..20_000)
                    .map(|_| {
                        t += 1;
                        (format!("k{}", next(5_000)), next(1_000) as i64, t)
                    })
                    .collect();
                let batch = noted(&rows);
                for op in std::iter::once(&mut *lean).chain(others.iter_mut().map(|o| &mut **o)) {
                    op.process(0, batch.clone()).unwrap();
                    op.commit_batch();
                    // Numbered now, as every RANK_ROWS rows: the rows waiting are the state.
                    op.rank(super::now_micros()).unwrap();
                    op.fit_memory().unwrap();
                }
            }
            let want = rows(&lean.on_checkpoint().unwrap());
            for other in others.iter_mut() {
                assert_eq!(rows(&other.on_checkpoint().unwrap()), want, "seed {seed}");
            }
            want
        };
    for e in 0..4 {
        let out = epoch(&mut lean, &mut [&mut whole], &mut next);
        assert!(out.len() > 1_000, "seed {seed}: {} rows", out.len());
        assert!(out.iter().all(|r| r.contains("xxxx")), "emitted whole");
        snapshots.extend(lean.snapshot(e == 0).unwrap());
    }
    assert!(lean.spilled_bytes() > 0, "seed {seed}: nothing spilled");
    assert_eq!(lean.state_rows(), whole.state_rows());
    // The table keeps no notes: under a third of the state kept whole (4 times less here).
    assert!(
        (lean.state_bytes() as u64 + lean.spilled_bytes()) * 3 < whole.state_bytes() as u64,
        "seed {seed}: {} + {} bytes against {}",
        lean.state_bytes(),
        lean.spilled_bytes(),
        whole.state_bytes()
    );
    // Restored through state files, it goes on as the others do.
    let mut restored = first_of(true).await;
    restored
        .restore(through_files(&memory, &restored, snapshots), None)
        .unwrap();
    assert_eq!(restored.state_rows(), lean.state_rows());
    assert!(
        restored.on_checkpoint().unwrap().is_empty(),
        "emitted before"
    );
    epoch(&mut restored, &mut [&mut lean, &mut whole], &mut next);
}
