//! Unit tests of the join of two streams: batches in, joined batches and state out.
use arrow::array::{Int32Array, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};
use arrow::util::display::array_value_to_string;
use datafusion::physical_expr::expressions::Column;

use super::*;
use crate::runtime::operator::tests::join_plan;

const SECOND: i64 = 1_000_000;

fn schema(names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(
        names
            .iter()
            .map(|n| match *n {
                "ts" => Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
                n => Field::new(n, DataType::Int32, true),
            })
            .collect::<Vec<_>>(),
    ))
}

/// Rows of `names` (an `ts` column in seconds, the others integers).
fn batch(names: &[&str], rows: &[&[i64]]) -> RecordBatch {
    let columns = names
        .iter()
        .enumerate()
        .map(|(c, n)| -> ArrayRef {
            let values = rows.iter().map(|r| r[c]);
            match *n {
                "ts" => Arc::new(TimestampMicrosecondArray::from_iter_values(
                    values.map(|s| s * SECOND),
                )),
                _ => Arc::new(Int32Array::from_iter_values(values.map(|v| v as i32))),
            }
        })
        .collect();
    RecordBatch::try_new(schema(names), columns).unwrap()
}

const LEFT: &[&str] = &["id", "ts"];
const RIGHT: &[&str] = &["aid", "ts", "v"];

/// `l JOIN r ON id = aid AND r.ts BETWEEN l.ts AND l.ts + 10 s`, as the front end plans it.
async fn operator() -> StreamJoin {
    let join = join_plan(
        &[("l", schema(LEFT)), ("r", schema(RIGHT))],
        "SELECT * FROM l JOIN r ON l.id = r.aid AND r.ts BETWEEN l.ts AND l.ts + INTERVAL '10' SECOND",
    )
    .await;
    StreamJoin::new(StreamJoinSpec {
        join,
        keys: [
            vec![Arc::new(Column::new("id", 0))],
            vec![Arc::new(Column::new("aid", 0))],
        ],
        schemas: [schema(LEFT), schema(RIGHT)],
        expiry: [
            vec![ExpiryBound {
                at: Arc::new(Column::new("ts", 1)),
                after: 10 * SECOND,
            }],
            vec![ExpiryBound {
                at: Arc::new(Column::new("ts", 1)),
                after: 0,
            }],
        ],
        outer: None,
    })
    .unwrap()
}

const BAND: &str = "ON l.id = r.aid AND r.ts BETWEEN l.ts AND l.ts + INTERVAL '10' SECOND";

/// The same as a LEFT JOIN: unmatched `l` rows come out with NULLs when they leave.
async fn left_join() -> StreamJoin {
    let mut op = operator().await;
    op.spec.join = join_plan(
        &[("l", schema(LEFT)), ("r", schema(RIGHT))],
        &format!("SELECT * FROM l LEFT JOIN r {BAND}"),
    )
    .await;
    let matching = join_plan(
        &[
            ("l", state::with_row_id(&schema(LEFT), 0)),
            ("r", schema(RIGHT)),
        ],
        &format!("SELECT * FROM l JOIN r {BAND}"),
    )
    .await;
    op.spec.outer = Some(OuterJoin {
        preserved: [true, false],
        matching,
    });
    op
}

/// The same as a FULL JOIN: unmatched rows of either side come out with NULLs when they leave.
async fn full_join() -> StreamJoin {
    let mut op = operator().await;
    op.spec.join = join_plan(
        &[("l", schema(LEFT)), ("r", schema(RIGHT))],
        &format!("SELECT * FROM l FULL JOIN r {BAND}"),
    )
    .await;
    let matching = join_plan(
        &[
            ("l", state::with_row_id(&schema(LEFT), 0)),
            ("r", state::with_row_id(&schema(RIGHT), 1)),
        ],
        &format!("SELECT * FROM l JOIN r {BAND}"),
    )
    .await;
    op.spec.outer = Some(OuterJoin {
        preserved: [true, true],
        matching,
    });
    op
}

/// The same join with no bound on event time (a regular join), keeping rows for `ttl`.
async fn regular(ttl: Option<std::time::Duration>) -> StreamJoin {
    let mut op = operator().await;
    op.spec.expiry = [Vec::new(), Vec::new()];
    op.with_ttl(ttl)
}

/// `id v` of joined rows, sorted.
fn joined(batches: &[RecordBatch]) -> Vec<String> {
    let mut out: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(|i| {
                let value = |c: usize| array_value_to_string(b.column(c), i).unwrap();
                format!("{} {}", value(0), value(4))
            })
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn rows_join_within_the_band_and_leave_when_the_watermark_passes_it() {
    let mut op = operator().await;
    op.process(0, batch(LEFT, &[&[1, 0], &[2, 0]])).unwrap();
    op.commit_batch();
    let out = op
        .process(
            1,
            batch(
                RIGHT,
                &[&[1, 5, 100], &[1, 20, 200], &[2, 3, 300], &[3, 4, 400]],
            ),
        )
        .unwrap();
    op.commit_batch();
    assert_eq!(joined(&out), ["1 100", "2 300"]);
    // A batch that fails later leaves nothing behind.
    op.process(0, batch(LEFT, &[&[1, 19]])).unwrap();
    op.abort_batch();
    assert_eq!(op.state_rows(), 6);
    // The left rows can match right rows up to their time + 10 s: gone past it.
    op.on_watermark(11 * SECOND).unwrap();
    assert_eq!(op.state_rows(), 4);
    let full = op.snapshot(true).unwrap();
    let out = op.process(0, batch(LEFT, &[&[1, 15]])).unwrap();
    op.commit_batch();
    assert_eq!(joined(&out), ["1 200"]);
    let changed = op.snapshot(false).unwrap();
    // Restored from its snapshots, it holds and joins the same.
    let mut restored = operator().await;
    restored
        .restore([full, changed].concat(), Some(11 * SECOND))
        .unwrap();
    assert_eq!(restored.state_rows(), 5);
    let late_right = batch(RIGHT, &[&[1, 24, 500]]);
    assert_eq!(
        joined(&restored.process(1, late_right.clone()).unwrap()),
        joined(&op.process(1, late_right).unwrap())
    );
    // Right rows can match left rows up to their own time: the batch with 20 s goes past it.
    op.abort_batch();
    op.on_watermark(21 * SECOND).unwrap();
    assert_eq!(op.state_rows(), 1);
    op.on_watermark(crate::runtime::event_time::END_OF_TIME)
        .unwrap();
    assert_eq!((op.state_rows(), op.state_bytes()), (0, 0));
}

#[tokio::test]
async fn a_regular_join_keeps_rows_for_its_ttl_or_to_the_end_of_the_input() {
    let mut forever = regular(None).await;
    let mut brief = regular(Some(std::time::Duration::from_millis(1))).await;
    for op in [&mut forever, &mut brief] {
        op.process(0, batch(LEFT, &[&[1, 0]])).unwrap();
        op.commit_batch();
        // No watermark expires a row of a regular join.
        op.on_watermark(1_000 * SECOND).unwrap();
        assert_eq!(op.state_rows(), 1);
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    forever.on_checkpoint().unwrap();
    brief.on_checkpoint().unwrap();
    assert_eq!((forever.state_rows(), brief.state_rows()), (1, 0));
    // The row past its TTL joins nothing; the kept one still does.
    let right = batch(RIGHT, &[&[1, 5, 100]]);
    assert!(brief.process(1, right.clone()).unwrap().is_empty());
    assert_eq!(joined(&forever.process(1, right).unwrap()), ["1 100"]);
    forever.commit_batch();
    forever
        .on_watermark(crate::runtime::event_time::END_OF_TIME)
        .unwrap();
    assert_eq!(forever.state_rows(), 0);
}

#[tokio::test]
async fn instances_keyed_by_the_join_key_join_and_restore_as_one() {
    use crate::runtime::operator::parallel::Parallel;

    let parallel = |ops: Vec<StreamJoin>| {
        let keying = ops[0].keying().unwrap();
        let ops = ops
            .into_iter()
            .map(|o| Box::new(o) as Box<dyn Operator>)
            .collect();
        Parallel::new(ops, keying).unwrap()
    };
    let mut one = operator().await;
    let mut two = parallel(vec![operator().await, operator().await]);
    let left = batch(LEFT, &[&[1, 0], &[2, 0], &[3, 1], &[4, 2], &[5, 3]]);
    let right: Vec<&[i64]> = vec![
        &[1, 5, 10],
        &[2, 9, 20],
        &[3, 30, 30],
        &[4, 12, 40],
        &[5, 4, 50],
    ];
    let right = batch(RIGHT, &right);
    let mut outs = Vec::new();
    for op in [&mut one as &mut dyn Operator, &mut two] {
        let mut out = op.process(0, left.clone()).unwrap();
        op.commit_batch();
        out.extend(op.process(1, right.clone()).unwrap());
        op.commit_batch();
        outs.push(joined(&out));
    }
    assert_eq!(outs[0], ["1 10", "2 20", "4 40", "5 50"]);
    assert_eq!(outs[1], outs[0]);
    // Two instances' state restores into one, which then joins the same.
    let state = two.snapshot(true).unwrap();
    let mut restored = operator().await;
    restored.restore(state, None).unwrap();
    assert_eq!(restored.state_rows(), one.state_rows());
    let more = batch(RIGHT, &[&[3, 2, 60], &[1, 1, 70]]);
    assert_eq!(
        joined(&restored.process(1, more.clone()).unwrap()),
        joined(&one.process(1, more).unwrap())
    );
}

#[tokio::test]
async fn a_left_join_emits_the_rows_that_never_matched_when_they_leave() {
    let mut op = left_join().await;
    op.process(0, batch(LEFT, &[&[1, 0], &[2, 0], &[3, 0]]))
        .unwrap();
    op.commit_batch();
    let full = op.snapshot(true).unwrap();
    let out = op.process(1, batch(RIGHT, &[&[1, 5, 10]])).unwrap();
    op.commit_batch();
    assert_eq!(joined(&out), ["1 10"]);
    // Out of the band: no match.
    assert!(op
        .process(1, batch(RIGHT, &[&[2, 30, 20]]))
        .unwrap()
        .is_empty());
    op.commit_batch();
    let changes = op.snapshot(false).unwrap();
    // A left row that matches a kept right row at once; its batch then fails elsewhere and
    // leaves nothing behind.
    let out = op.process(0, batch(LEFT, &[&[2, 25], &[4, 1]])).unwrap();
    op.abort_batch();
    assert_eq!(joined(&out), ["2 20"]);
    // The left rows can match right rows up to their time + 10 s: then out, those that
    // never matched with NULLs.
    let padded = op.on_watermark(11 * SECOND).unwrap();
    assert_eq!(joined(&padded), ["2 ", "3 "]);
    assert!(op.on_watermark(12 * SECOND).unwrap().is_empty());
    // Restored from its snapshots, it knows row 1 matched.
    let mut restored = left_join().await;
    restored.restore([full, changes].concat(), None).unwrap();
    assert_eq!(
        joined(&restored.on_watermark(11 * SECOND).unwrap()),
        ["2 ", "3 "]
    );
}

#[tokio::test]
async fn once_one_side_ended_the_other_keeps_nothing() {
    let mut op = regular(None).await;
    op.process(0, batch(LEFT, &[&[1, 0]])).unwrap();
    op.commit_batch();
    let out = op.process(1, batch(RIGHT, &[&[1, 5, 10]])).unwrap();
    op.commit_batch();
    assert_eq!(
        (joined(&out), op.state_rows()),
        (vec!["1 10".to_string()], 2)
    );
    // No left row is to come: the right rows kept for them go, and later ones stay out.
    assert!(op.on_input_end(0).unwrap().is_empty());
    assert_eq!(op.state_rows(), 1);
    let out = op.process(1, batch(RIGHT, &[&[1, 6, 20]])).unwrap();
    op.commit_batch();
    assert_eq!(
        (joined(&out), op.state_rows()),
        (vec!["1 20".to_string()], 1)
    );
}

#[tokio::test]
async fn a_full_join_emits_the_rows_of_either_side_that_never_matched_when_they_leave() {
    let mut op = full_join().await;
    op.process(0, batch(LEFT, &[&[1, 0], &[2, 0]])).unwrap();
    op.commit_batch();
    let full = op.snapshot(true).unwrap();
    // A right row matching left row 1, one whose key no left row has, one out of the band.
    let out = op
        .process(1, batch(RIGHT, &[&[1, 5, 10], &[9, 5, 90], &[2, 20, 20]]))
        .unwrap();
    op.commit_batch();
    assert_eq!(joined(&out), ["1 10"]);
    // A left row arriving after the right row it matches marks that right row.
    let out = op.process(0, batch(LEFT, &[&[9, 1]])).unwrap();
    op.commit_batch();
    assert_eq!(joined(&out), ["9 90"]);
    let changes = op.snapshot(false).unwrap();
    let mut restored = full_join().await;
    restored.restore([full, changes].concat(), None).unwrap();
    for o in [&mut op, &mut restored] {
        // Right rows can match no left row still to come once the watermark passes their
        // time; all of these matched but the one at 20 s.
        assert!(o.on_watermark(6 * SECOND).unwrap().is_empty());
        // Left rows leave 10 s after their time: row 2 never matched.
        assert_eq!(joined(&o.on_watermark(12 * SECOND).unwrap()), ["2 "]);
        assert_eq!(joined(&o.on_watermark(21 * SECOND).unwrap()), [" 20"]);
        assert_eq!(o.state_rows(), 0);
    }
}

/// Past its memory the oldest kept columns spill to disk: joins, the rows that leave unmatched,
/// snapshots and restores are those of the same join in memory.
#[tokio::test]
async fn state_beyond_the_budget_spills_and_joins_the_same() {
    let mut unbounded = left_join().await;
    // 4,000 left rows in 40 batches (ids 0..3999, at 0..39 s).
    let lefts: Vec<RecordBatch> = (0..40i64)
        .map(|b| {
            let rows: Vec<[i64; 2]> = (0..100).map(|i| [b * 100 + i, b]).collect();
            let rows: Vec<&[i64]> = rows.iter().map(|r| r.as_slice()).collect();
            batch(LEFT, &rows)
        })
        .collect();
    let feed = |op: &mut StreamJoin| {
        for b in &lefts {
            assert!(op.process(0, b.clone()).unwrap().is_empty());
            op.commit_batch();
            op.fit_memory().unwrap();
        }
    };
    feed(&mut unbounded);
    // Memory for the keys and ids (in memory always) and some of the columns.
    let budget = unbounded.state_bytes() * 9 / 10;
    let memory = crate::runtime::memory::StateMemory::new(Some(budget)).unwrap();
    let mut spilling = left_join().await.with_memory(&memory);
    feed(&mut spilling);
    assert!(spilling.spilled_bytes() > 0, "the state was spilled");
    assert!(
        spilling.state_bytes() <= budget,
        "{}",
        spilling.state_bytes()
    );
    assert_eq!(unbounded.spilled_bytes(), 0);
    assert_eq!(spilling.state_rows(), unbounded.state_rows());
    let full = spilling.snapshot(true).unwrap();
    assert!(full.iter().any(|c| matches!(c, StateChunk::Spilled(_))));
    // Right rows matching the oldest (spilled) and the latest left rows, each within its band.
    let rights = batch(
        RIGHT,
        &[&[5, 3, 1], &[150, 4, 2], &[3_950, 45, 3], &[7, 30, 4]],
    );
    let out = [&mut spilling, &mut unbounded].map(|op| {
        let out = joined(&op.process(1, rights.clone()).unwrap());
        op.commit_batch();
        out
    });
    assert_eq!(out[0], ["150 2", "3950 3", "5 1"]);
    assert_eq!(out[0], out[1]);
    let changes = spilling.snapshot(false).unwrap();
    // Restored with the same memory: the same rows leave unmatched at the end.
    let memory = crate::runtime::memory::StateMemory::new(Some(budget)).unwrap();
    let mut restored = left_join().await.with_memory(&memory);
    restored.restore([full, changes].concat(), None).unwrap();
    assert!(restored.spilled_bytes() > 0);
    let ends = [&mut spilling, &mut unbounded, &mut restored]
        .map(|op| joined(&op.on_watermark(END_OF_TIME).unwrap()));
    assert_eq!(ends[0].len(), 4_000 - 3);
    assert_eq!(ends[0], ends[1]);
    assert_eq!(ends[2], ends[1]);
    assert_eq!(
        spilling.spilled_bytes(),
        0,
        "expired rows leave the disk too"
    );
}
