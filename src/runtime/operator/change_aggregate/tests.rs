use std::collections::BTreeMap;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::{Rng, SeedableRng};

use super::*;
use crate::runtime::operator::change_groups::ChangeGroups;
use crate::runtime::operator::parallel::Parallel;
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

/// A GROUP BY over a change stream as a pipeline runs it: its changes routed by
/// [`ChangeGroups`] (keyed by primary key), then aggregated by [`ChangeAggregate`] (keyed by
/// group): one instance of each, or several under [`Parallel`].
struct Routed<A: Operator> {
    groups: Box<dyn Operator>,
    aggregate: A,
}

async fn routed_operators(
    memory: Option<usize>,
) -> (
    impl Fn() -> ChangeGroups,
    impl Fn() -> ChangeAggregate,
    Arc<StateMemory>,
) {
    let plan = aggregate_plan(input_schema(), QUERY).await;
    let memory = StateMemory::new(memory).unwrap();
    let routed = super::super::change_groups::routed_schema(&plan, &change_schema()).unwrap();
    let (m, p) = (memory.clone(), plan.clone());
    let groups = move || {
        ChangeGroups::new(p.clone(), change_schema())
            .unwrap()
            .with_memory(&m)
    };
    let m = memory.clone();
    let aggregate = move || {
        ChangeAggregate::new(plan.clone(), routed.clone())
            .unwrap()
            .with_memory(&m)
    };
    (groups, aggregate, memory)
}

impl Routed<ChangeAggregate> {
    async fn single(memory: Option<usize>) -> Self {
        let (groups, aggregate, _) = routed_operators(memory).await;
        Routed {
            groups: Box::new(groups()),
            aggregate: aggregate(),
        }
    }
}

impl Routed<Parallel> {
    async fn parallel(instances: usize) -> Self {
        let (groups, aggregate, memory) = routed_operators(None).await;
        let run = |all: Vec<Box<dyn Operator>>| {
            let keying = all[0].keying().unwrap();
            Parallel::new(all, keying).unwrap().with_memory(&memory)
        };
        let all_groups = (0..instances).map(|_| Box::new(groups()) as Box<dyn Operator>);
        let all_aggregates = (0..instances).map(|_| Box::new(aggregate()) as Box<dyn Operator>);
        Routed {
            groups: Box::new(run(all_groups.collect())),
            aggregate: run(all_aggregates.collect()),
        }
    }
}

impl<A: Operator> Routed<A> {
    fn process(&mut self, batch: RecordBatch) {
        for routed in self.groups.process(0, batch).unwrap() {
            assert!(self.aggregate.process(0, routed).unwrap().is_empty());
        }
    }

    fn commit_batch(&mut self) {
        self.groups.commit_batch();
        self.aggregate.commit_batch();
    }

    fn abort_batch(&mut self) {
        self.groups.abort_batch();
        self.aggregate.abort_batch();
    }

    fn on_checkpoint(&mut self) -> Vec<RecordBatch> {
        assert!(self.groups.on_checkpoint().unwrap().is_empty());
        self.aggregate.on_checkpoint().unwrap()
    }

    fn fit_memory(&mut self) {
        self.groups.fit_memory().unwrap();
        self.aggregate.fit_memory().unwrap();
    }

    fn snapshot(&mut self, full: bool) -> [Vec<StateChunk>; 2] {
        [
            self.groups.snapshot(full).unwrap(),
            self.aggregate.snapshot(full).unwrap(),
        ]
    }

    fn restore(&mut self, [groups, aggregate]: [Vec<StateChunk>; 2]) {
        self.groups.restore(groups, None).unwrap();
        self.aggregate.restore(aggregate, None).unwrap();
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
    let mut op = Routed::single(None).await;
    let r = |s: &str| Some(s.to_string());
    op.process(batch(&[
        (1, "insert", r("eu"), Some(10)),
        (2, "insert", r("eu"), Some(30)),
        (3, "insert", r("us"), Some(5)),
    ]));
    op.commit_batch();
    let mut sink = BTreeMap::new();
    apply_to_sink(&mut sink, &op.on_checkpoint());
    assert_eq!(sink["eu"], ["eu", "2", "40", "10", "30", "2"]);
    // Row 2 moves to us with a new amount; row 1 is deleted by key alone: eu is left empty
    // and is deleted; the max of us comes from the moved row.
    op.process(batch(&[
        (2, "update", r("us"), Some(7)),
        (1, "delete", None, None),
    ]));
    op.commit_batch();
    // A batch a later operator failed on leaves nothing behind.
    op.process(batch(&[(3, "delete", None, None)]));
    op.abort_batch();
    let emitted = op.on_checkpoint();
    let ops: Vec<String> = text_rows(&emitted)
        .into_iter()
        .map(|r| format!("{} {}", r[0], r[6]))
        .collect();
    assert_eq!(ops, ["us upsert", "eu delete"]);
    apply_to_sink(&mut sink, &emitted);
    assert_eq!(sink.len(), 1);
    assert_eq!(sink["us"], ["us", "2", "12", "5", "7", "2"]);
    assert!(op.on_checkpoint().is_empty(), "nothing changed");
    assert_eq!(op.aggregate.state_rows(), 2);
    assert_eq!(op.groups.state_rows(), 2);
}

/// A seeded workload of changes; after every checkpoint the sink built from the emitted
/// updates equals DataFusion's aggregate over the table's current rows. Halfway, the state is
/// restored from its snapshots (a full one, then changes) and goes on the same.
#[tokio::test]
async fn a_random_change_stream_aggregates_as_its_table_does() {
    let op = random_change_stream(|| Routed::single(None)).await;
    // Most rows were replaced many times: dead ones were compacted away.
    assert!(
        op.table.dead_rows() < 4_096 + 400,
        "{}",
        op.table.dead_rows()
    );
}

/// The same, its changes routed to 3 instances of each operator, restored into 2: rows moving
/// between groups held by different instances leave their old group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_change_stream_aggregates_as_its_table_does_in_three_instances() {
    let runs = std::cell::Cell::new(0);
    let op = random_change_stream(|| {
        runs.set(runs.get() + 1);
        Routed::parallel(if runs.get() == 1 { 3 } else { 2 })
    })
    .await;
    assert_eq!(runs.get(), 2);
    assert_eq!(op.instance_stats().len(), 2);
    assert!(op.instance_stats().iter().all(|i| i.state_rows > 0));
}

/// The same in 64 kB of state memory: the table's older rows spill to disk (and compact,
/// snapshot and restore from there) and the sink is the same.
#[tokio::test]
async fn a_random_change_stream_aggregates_as_its_table_does_with_its_rows_spilled() {
    let op = random_change_stream(|| Routed::single(Some(64 << 10))).await;
    assert!(op.spilled_bytes() > 0);
}

/// Runs the workload through fresh operators from `operator` (restored from their snapshots
/// halfway) and returns the GROUP BY's operator at the end.
async fn random_change_stream<A: Operator, F: std::future::Future<Output = Routed<A>>>(
    operator: impl Fn() -> F,
) -> A {
    let seed = crate::runtime::operator::tests::seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut op = operator().await;
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
            op.process(batch(&changes));
            op.commit_batch();
            op.fit_memory();
        }
        apply_to_sink(&mut sink, &op.on_checkpoint());
        assert_eq!(sink, oracle(&table).await, "epoch {epoch}, seed {seed}");
        assert_eq!(op.aggregate.state_rows(), table.len());
        assert_eq!(op.groups.state_rows(), table.len());
        if epoch % 7 == 0 {
            // A full snapshot starts the chain again.
            snapshots = op.snapshot(true);
        } else {
            let [groups, aggregate] = op.snapshot(false);
            snapshots[0].extend(groups);
            snapshots[1].extend(aggregate);
        }
        if epoch == 17 {
            let mut restored = operator().await;
            restored.restore(std::mem::take(&mut snapshots));
            assert_eq!(restored.aggregate.state_rows(), table.len());
            assert!(restored.on_checkpoint().is_empty());
            snapshots = restored.snapshot(true);
            op = restored;
        }
    }
    op.aggregate
}
