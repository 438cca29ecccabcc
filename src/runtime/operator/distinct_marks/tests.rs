//! DistinctMarks with in-process batches: the rows it marks against a plain set of the pairs
//! seen, with aborted batches, incremental and full snapshots, a restore and spill files.

use std::collections::HashSet;

use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::TimeUnit;
use datafusion::physical_expr::expressions::Column;
use rand::{Rng, SeedableRng};

use super::*;

fn input() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("big", DataType::Boolean, true),
    ]))
}

fn column(name: &str, at: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(Column::new(name, at))
}

/// Marks of `v` (all rows, rows where `big`), of `s` (all rows) and of `t` (rows where `big`),
/// grouped by `k`.
fn spec() -> DistinctMarksSpec {
    let input = input();
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    for name in ["m_v", "m_v_big", "m_s", "m_t_big"] {
        fields.push(Field::new(name, DataType::Boolean, false));
    }
    DistinctMarksSpec {
        groups: vec![column("k", 0)],
        values: vec![
            MarkedValue {
                value: column("v", 1),
                filters: vec![None, Some(column("big", 4))],
            },
            MarkedValue {
                value: column("s", 2),
                filters: vec![None],
            },
            MarkedValue {
                value: column("t", 3),
                filters: vec![Some(column("big", 4))],
            },
        ],
        input,
        output: Arc::new(Schema::new(fields)),
    }
}

type Row = (
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<bool>,
);

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        input(),
        vec![
            Arc::new(rows.iter().map(|r| r.0.clone()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.2.clone()).collect::<StringArray>()),
            Arc::new(
                rows.iter()
                    .map(|r| r.3)
                    .collect::<TimestampMillisecondArray>(),
            ),
            Arc::new(rows.iter().map(|r| r.4).collect::<BooleanArray>()),
        ],
    )
    .unwrap()
}

/// The marks a plain set of pairs seen gives, in the spec's order.
#[derive(Default)]
struct Oracle {
    seen: [HashSet<(Option<String>, String)>; 4],
}

impl Oracle {
    fn marks(&mut self, rows: &[Row]) -> Vec<Vec<bool>> {
        let mut out = vec![Vec::new(); 4];
        for r in rows {
            let big = r.4 == Some(true);
            let candidates = [
                r.1.map(|v| v.to_string()),
                r.1.filter(|_| big).map(|v| v.to_string()),
                r.2.clone(),
                r.3.filter(|_| big).map(|t| t.to_string()),
            ];
            for (i, c) in candidates.into_iter().enumerate() {
                out[i].push(c.is_some_and(|c| self.seen[i].insert((r.0.clone(), c))));
            }
        }
        out
    }
}

fn marks_of(out: &[RecordBatch]) -> Vec<Vec<bool>> {
    let mut marks = vec![Vec::new(); 4];
    for b in out {
        for (i, m) in marks.iter_mut().enumerate() {
            m.extend(b.column(5 + i).as_boolean().iter().map(|x| x.unwrap()));
        }
    }
    marks
}

fn random_rows(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<Row> {
    (0..n)
        .map(|_| {
            (
                (!rng.random_bool(0.05)).then(|| format!("g{}", rng.random_range(0..20))),
                (!rng.random_bool(0.1)).then(|| rng.random_range(-30_000..30_000)),
                (!rng.random_bool(0.1)).then(|| format!("s{}", rng.random_range(0..200))),
                (!rng.random_bool(0.1)).then(|| rng.random_range(0..100) * 1000),
                (!rng.random_bool(0.1)).then(|| rng.random_bool(0.4)),
            )
        })
        .collect()
}

#[test]
fn marks_the_first_row_of_each_group_and_value_across_aborts_snapshots_and_restores() {
    // Snapshots beyond STATE_ROWS rows go to spill files of this memory.
    let spilled = marks_under(1 << 30);
    assert_eq!(spilled, 0);
}

#[test]
fn past_its_memory_the_pairs_spill_and_mark_the_same() {
    let spilled = marks_under(1 << 20);
    assert!(spilled > 0, "the pairs spilled");
}

/// Runs random batches (some aborted) through the operator under a state memory of `budget`,
/// checking its marks against a set of the pairs seen, with snapshots and restores; returns
/// the bytes it spilled at the end.
fn marks_under(budget: usize) -> u64 {
    let seed = crate::runtime::operator::tests::seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let memory = StateMemory::new(Some(budget)).unwrap();
    let fresh = || DistinctMarks::new(spec()).unwrap().with_memory(&memory);
    let mut op = fresh();
    let mut oracle = Oracle::default();
    let mut snapshots: Vec<StateChunk> = Vec::new();
    let mut spilled_snapshot = false;
    for epoch in 0..40 {
        for _ in 0..rng.random_range(1..4) {
            let n = rng.random_range(1..3_000);
            let rows = random_rows(&mut rng, n);
            if rng.random_bool(0.2) {
                // A batch a later operator failed on leaves nothing counted.
                op.process(0, batch(&rows)).unwrap();
                op.abort_batch();
            }
            let out = op.process(0, batch(&rows)).unwrap();
            op.commit_batch();
            op.fit_memory().unwrap();
            assert_eq!(
                marks_of(&out),
                oracle.marks(&rows),
                "epoch {epoch}, seed {seed}"
            );
            assert_eq!(out[0].num_rows(), rows.len());
        }
        // v's pairs where `big` are among its pairs: one pair with two filters (on disk, one
        // whose second filter came after it spilled is there twice until its runs merge).
        let pairs = oracle.seen[0].len() + oracle.seen[2].len() + oracle.seen[3].len();
        match op.spilled_bytes() {
            0 => assert_eq!(op.state_rows(), pairs, "epoch {epoch}, seed {seed}"),
            _ => assert!(op.state_rows() >= pairs, "epoch {epoch}, seed {seed}"),
        }
        assert!(op.state_bytes() <= budget, "epoch {epoch}, seed {seed}");
        if epoch % 9 == 0 {
            snapshots = op.snapshot(true).unwrap();
        } else {
            snapshots.extend(op.snapshot(false).unwrap());
        }
        spilled_snapshot |= snapshots
            .iter()
            .any(|c| matches!(c, StateChunk::Spilled(_)));
        if epoch % 13 == 12 {
            let mut restored = fresh();
            restored
                .restore(std::mem::take(&mut snapshots), None)
                .unwrap();
            assert!(restored.state_rows() >= pairs);
            snapshots = restored.snapshot(true).unwrap();
            op = restored;
        }
    }
    assert!(
        spilled_snapshot,
        "no snapshot was large enough to go to a file"
    );
    op.spilled_bytes()
}

/// How many rows each mark marks.
fn marked(marks: &[Vec<bool>]) -> Vec<usize> {
    marks
        .iter()
        .map(|m| m.iter().filter(|x| **x).count())
        .collect()
}

/// `n` instances of the operator, split by key group.
fn instances(n: usize, memory: &Arc<StateMemory>) -> Box<dyn Operator> {
    use crate::runtime::operator::parallel::Parallel;

    let instances: Vec<Box<dyn Operator>> = (0..n)
        .map(|_| Box::new(DistinctMarks::new(spec()).unwrap()) as Box<dyn Operator>)
        .collect();
    let keying = instances[0].keying().unwrap();
    Box::new(
        Parallel::new(instances, keying)
            .unwrap()
            .with_memory(memory),
    )
}

#[test]
fn marks_follow_their_key_group_when_run_as_instances() {
    let memory = StateMemory::new(None).unwrap();
    let mut op = instances(2, &memory);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut oracle = Oracle::default();
    let mut counted = [0usize; 4];
    for _ in 0..5 {
        let rows = random_rows(&mut rng, 2_000);
        let out = op.process(0, batch(&rows)).unwrap();
        op.commit_batch();
        // Instances emit their rows in their own order: compare how many each mark marks.
        let got = marked(&marks_of(&out));
        assert_eq!(got, marked(&oracle.marks(&rows)));
        for (c, n) in counted.iter_mut().zip(got) {
            *c += n;
        }
    }
    for (i, seen) in oracle.seen.iter().enumerate() {
        assert_eq!(counted[i], seen.len());
    }
    // Its state restores into a differently split pair of instances.
    let state = op.snapshot(true).unwrap();
    let mut restored = instances(3, &memory);
    restored.restore(state, None).unwrap();
    assert_eq!(restored.state_rows(), op.state_rows());
    let rows = random_rows(&mut rng, 2_000);
    let out = restored.process(0, batch(&rows)).unwrap();
    assert_eq!(marked(&marks_of(&out)), marked(&oracle.marks(&rows)));
}
