use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::{Rng, SeedableRng};

use super::*;
use crate::runtime::operator::parallel::{instance_of, key_groups, Parallel};
use crate::runtime::operator::tests::aggregate_plan;

const QUERY: &str = "SELECT region, count(*) AS n, sum(amount) AS total, min(amount) AS low, \
                     max(amount) AS high, count(DISTINCT amount) AS amounts FROM t GROUP BY region";

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
    ]))
}

/// The operator's rows: the aggregate's input, the primary key, `_op`.
fn change_schema() -> SchemaRef {
    let mut fields: Vec<Field> = input_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("id", DataType::Int64, true));
    fields.push(Field::new(OP, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Both stages, each as `instances` instances (or one), as a pipeline's graph runs them.
struct Stages {
    partials: Box<dyn Operator>,
    merge: Box<dyn Operator>,
}

impl Stages {
    async fn new(instances: usize, memory: Option<usize>) -> Stages {
        let plan = aggregate_plan(input_schema(), QUERY).await;
        let memory = memory.map(|bytes| StateMemory::new(Some(bytes)).unwrap());
        let partial = |instance| {
            let op = ChangePartials::new(plan.clone(), change_schema(), instance).unwrap();
            Box::new(match &memory {
                Some(m) => op.with_memory(m),
                None => op,
            }) as Box<dyn Operator>
        };
        let merge = |_| {
            let op = ChangeAggregate::new(plan.clone()).unwrap();
            Box::new(match &memory {
                Some(m) => op.with_memory(m),
                None => op,
            }) as Box<dyn Operator>
        };
        let parallel = |make: &dyn Fn(usize) -> Box<dyn Operator>| -> Box<dyn Operator> {
            if instances == 1 {
                return make(0);
            }
            let all: Vec<Box<dyn Operator>> = (0..instances).map(make).collect();
            let keying = all[0].keying().unwrap();
            let p = Parallel::new(all, keying).unwrap();
            Box::new(match &memory {
                Some(m) => p.with_memory(m),
                None => p,
            })
        };
        Stages {
            partials: parallel(&partial),
            merge: parallel(&merge),
        }
    }

    fn process(&mut self, batch: RecordBatch) -> Result<()> {
        let out = self.partials.process(0, batch)?;
        assert!(out.is_empty(), "partial states come at checkpoints");
        Ok(())
    }

    fn commit(&mut self) {
        self.partials.commit_batch();
        self.partials.fit_memory().unwrap();
    }

    /// What the second stage emits at a checkpoint, the first stage's partial states through it.
    fn checkpoint(&mut self) -> Vec<RecordBatch> {
        for batch in self.partials.on_checkpoint().unwrap() {
            assert!(self.merge.process(0, batch).unwrap().is_empty());
            self.merge.commit_batch();
        }
        self.merge.fit_memory().unwrap();
        self.merge.on_checkpoint().unwrap()
    }

    fn snapshot(&mut self, full: bool) -> [Vec<StateChunk>; 2] {
        [
            self.partials.snapshot(full).unwrap(),
            self.merge.snapshot(full).unwrap(),
        ]
    }

    fn restore(&mut self, [partials, merge]: [Vec<StateChunk>; 2]) {
        self.partials.restore(partials, None).unwrap();
        self.merge.restore(merge, None).unwrap();
    }
}

/// A change: (id, op, region, amount); a delete carries only its key, as pgoutput sends it.
type Change = (i64, &'static str, Option<String>, Option<i64>);

fn batch(changes: &[Change]) -> RecordBatch {
    RecordBatch::try_new(
        change_schema(),
        vec![
            Arc::new(StringArray::from(
                changes.iter().map(|c| c.2.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                changes.iter().map(|c| c.3).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                changes.iter().map(|c| c.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                changes.iter().map(|c| c.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Rows as text, keyed by their first column.
fn text_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| array_value_to_string(c, i).unwrap())
                    .collect(),
            );
        }
    }
    out
}

/// Applies emitted upserts and deletes to a keyed sink.
fn apply_to_sink(sink: &mut BTreeMap<String, Vec<String>>, emitted: &[RecordBatch]) {
    for mut row in text_rows(emitted) {
        let op = row.pop().unwrap();
        if op == "delete" {
            sink.remove(&row[0]);
        } else {
            sink.insert(row[0].clone(), row);
        }
    }
}

/// DataFusion's batch aggregate over the table's current rows.
async fn oracle(table: &BTreeMap<i64, (String, i64)>) -> BTreeMap<String, Vec<String>> {
    let regions: Vec<&str> = table.values().map(|v| v.0.as_str()).collect();
    let amounts: Vec<i64> = table.values().map(|v| v.1).collect();
    let rows = RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(StringArray::from(regions)),
            Arc::new(Int64Array::from(amounts)),
        ],
    )
    .unwrap();
    let ctx = SessionContext::new();
    ctx.register_table(
        "t",
        Arc::new(MemTable::try_new(input_schema(), vec![vec![rows]]).unwrap()),
    )
    .unwrap();
    let out = ctx.sql(QUERY).await.unwrap().collect().await.unwrap();
    text_rows(&out)
        .into_iter()
        .map(|r| (r[0].clone(), r))
        .collect()
}

#[tokio::test]
async fn groups_follow_inserts_updates_and_deletes_of_their_rows() {
    let mut op = Stages::new(1, None).await;
    let r = |s: &str| Some(s.to_string());
    op.process(batch(&[
        (1, "insert", r("eu"), Some(10)),
        (2, "insert", r("eu"), Some(30)),
        (3, "insert", r("us"), Some(5)),
    ]))
    .unwrap();
    op.commit();
    let mut sink = BTreeMap::new();
    apply_to_sink(&mut sink, &op.checkpoint());
    assert_eq!(sink["eu"], ["eu", "2", "40", "10", "30", "2"]);
    // Row 2 moves to us with a new amount; row 1 is deleted by key alone: eu is left empty
    // and is deleted; the max of us comes from the moved row.
    op.process(batch(&[
        (2, "update", r("us"), Some(7)),
        (1, "delete", None, None),
    ]))
    .unwrap();
    op.commit();
    // A batch a later operator failed on leaves nothing behind.
    op.process(batch(&[(3, "delete", None, None)])).unwrap();
    op.partials.abort_batch();
    let emitted = op.checkpoint();
    let ops: Vec<String> = text_rows(&emitted)
        .into_iter()
        .map(|r| format!("{} {}", r[0], r[6]))
        .collect();
    assert_eq!(ops, ["us upsert", "eu delete"]);
    apply_to_sink(&mut sink, &emitted);
    assert_eq!(sink.len(), 1);
    assert_eq!(sink["us"], ["us", "2", "12", "5", "7", "2"]);
    assert!(op.checkpoint().is_empty(), "nothing changed");
    assert_eq!(op.partials.state_rows(), 2);
}

/// After a restore into another number of instances, a change to one row of a group spread
/// over every instance updates the group from all its rows, not only those of the instance that
/// changed (whose partial states the second stage no longer has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spread_over_instances_stays_whole_after_a_restore() {
    let mut op = Stages::new(2, None).await;
    let eu = || Some("eu".to_string());
    let rows: Vec<Change> = (1..=20).map(|id| (id, "insert", eu(), Some(id))).collect();
    op.process(batch(&rows)).unwrap();
    op.commit();
    let mut sink = BTreeMap::new();
    apply_to_sink(&mut sink, &op.checkpoint());
    assert_eq!(sink["eu"], ["eu", "20", "210", "1", "20", "20"]);
    for restored_into in [3, 1] {
        let mut restored = Stages::new(restored_into, None).await;
        restored.restore(op.snapshot(true));
        assert!(restored.checkpoint().is_empty(), "nothing changed");
        restored
            .process(batch(&[(1, "update", eu(), Some(100))]))
            .unwrap();
        restored.commit();
        apply_to_sink(&mut sink, &restored.checkpoint());
        assert_eq!(sink["eu"], ["eu", "20", "309", "2", "100", "20"]);
        restored
            .process(batch(&[(1, "update", eu(), Some(1))]))
            .unwrap();
        restored.commit();
        apply_to_sink(&mut sink, &restored.checkpoint());
        op = restored;
    }
}

/// A group whose rows all go between a restore and the next checkpoint is deleted then, though
/// the second stage had not got its partial states again.
#[tokio::test]
async fn a_group_emptied_before_the_first_checkpoint_after_a_restore_is_deleted() {
    let mut op = Stages::new(1, None).await;
    let r = |s: &str| Some(s.to_string());
    op.process(batch(&[
        (1, "insert", r("eu"), Some(10)),
        (2, "insert", r("us"), Some(5)),
    ]))
    .unwrap();
    op.commit();
    let mut sink = BTreeMap::new();
    apply_to_sink(&mut sink, &op.checkpoint());
    let mut restored = Stages::new(1, None).await;
    restored.restore(op.snapshot(true));
    restored
        .process(batch(&[(1, "delete", None, None)]))
        .unwrap();
    restored.commit();
    let emitted = restored.checkpoint();
    let ops: Vec<String> = text_rows(&emitted)
        .into_iter()
        .map(|r| format!("{} {}", r[0], r[6]))
        .collect();
    assert_eq!(ops, ["eu delete"]);
}

/// A row the aggregate cannot take fails in its own batch, before anything is staged.
#[tokio::test]
async fn a_change_of_the_wrong_shape_fails_in_its_batch() {
    let mut op = Stages::new(1, None).await;
    let bad = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap();
    assert!(op.process(bad).is_err());
    assert!(op.checkpoint().is_empty());
}

/// A seeded workload of changes; after every checkpoint the sink built from the emitted
/// updates equals DataFusion's aggregate over the table's current rows. Halfway, the state is
/// restored from its snapshots (a full one, then changes) and goes on the same.
#[tokio::test]
async fn a_random_change_stream_aggregates_as_its_table_does() {
    random_change_stream(1, 1, None).await;
}

/// The same in 64 kB of state memory: the table's older rows spill to disk (and compact,
/// snapshot and restore from there) and the sink is the same.
#[tokio::test]
async fn a_random_change_stream_aggregates_as_its_table_does_with_its_rows_spilled() {
    random_change_stream(1, 1, Some(64 << 10)).await;
}

/// The same in 3 instances of each stage, restored into 2; and in 1, restored into 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_change_stream_aggregates_as_its_table_does_in_any_number_of_instances() {
    random_change_stream(3, 2, None).await;
    random_change_stream(1, 4, Some(64 << 10)).await;
}

/// The second stage's state over `instances` instances: a partial state per region and instance
/// holding rows of it (by the key group of their id), and a result row per region.
fn merge_state_rows(table: &BTreeMap<i64, (String, i64)>, instances: usize) -> usize {
    let ids: ArrayRef = Arc::new(Int64Array::from(table.keys().copied().collect::<Vec<_>>()));
    let groups = key_groups(&[ids], table.len()).unwrap();
    let partials: BTreeSet<(&str, usize)> = table
        .values()
        .zip(groups)
        .map(|(v, g)| (v.0.as_str(), instance_of(g, instances)))
        .collect();
    let regions: BTreeSet<&str> = table.values().map(|v| v.0.as_str()).collect();
    partials.len() + regions.len()
}

async fn random_change_stream(mut instances: usize, restored_into: usize, memory: Option<usize>) {
    let mut spilled = 0;
    let seed = crate::runtime::operator::tests::seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut op = Stages::new(instances, memory).await;
    let mut table: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let mut sink = BTreeMap::new();
    let mut snapshots: [Vec<StateChunk>; 2] = Default::default();
    for epoch in 0..30 {
        for _ in 0..rng.random_range(1..5) {
            let mut changes: Vec<Change> = Vec::new();
            for _ in 0..rng.random_range(1..400) {
                let id = rng.random_range(0..300);
                if rng.random_bool(0.25) {
                    table.remove(&id);
                    changes.push((id, "delete", None, None));
                } else {
                    let region = format!("r{}", rng.random_range(0..12));
                    let amount = rng.random_range(-50..50);
                    let kind = if table.contains_key(&id) {
                        "update"
                    } else {
                        "insert"
                    };
                    table.insert(id, (region.clone(), amount));
                    changes.push((id, kind, Some(region), Some(amount)));
                }
            }
            op.process(batch(&changes)).unwrap();
            op.commit();
        }
        apply_to_sink(&mut sink, &op.checkpoint());
        let context = format!("epoch {epoch}, {instances} instances, seed {seed}");
        assert_eq!(sink, oracle(&table).await, "{context}");
        assert_eq!(op.partials.state_rows(), table.len(), "{context}");
        assert_eq!(
            op.merge.state_rows(),
            merge_state_rows(&table, instances),
            "{context}"
        );
        spilled = spilled.max(op.partials.spilled_bytes());
        if epoch % 7 == 0 {
            // A full snapshot starts the chain again.
            snapshots = op.snapshot(true);
        } else {
            for (all, more) in snapshots.iter_mut().zip(op.snapshot(false)) {
                all.extend(more);
            }
        }
        if epoch == 17 {
            let mut restored = Stages::new(restored_into, memory).await;
            restored.restore(std::mem::take(&mut snapshots));
            assert_eq!(restored.partials.state_rows(), table.len());
            assert!(restored.checkpoint().is_empty(), "{context}");
            snapshots = restored.snapshot(true);
            op = restored;
            instances = restored_into;
        }
    }
    assert_eq!(spilled > 0, memory.is_some(), "spilled {spilled} bytes");
}
