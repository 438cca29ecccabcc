use std::collections::BTreeMap;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::{Rng, SeedableRng};

use super::*;
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

async fn operator() -> ChangeAggregate {
    let plan = aggregate_plan(input_schema(), QUERY).await;
    ChangeAggregate::new(plan, change_schema()).unwrap()
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
    let mut op = operator().await;
    let r = |s: &str| Some(s.to_string());
    op.process(
        0,
        batch(&[
            (1, "insert", r("eu"), Some(10)),
            (2, "insert", r("eu"), Some(30)),
            (3, "insert", r("us"), Some(5)),
        ]),
    )
    .unwrap();
    op.commit_batch();
    let mut sink = BTreeMap::new();
    apply_to_sink(&mut sink, &op.on_checkpoint().unwrap());
    assert_eq!(sink["eu"], ["eu", "2", "40", "10", "30", "2"]);
    // Row 2 moves to us with a new amount; row 1 is deleted by key alone: eu is left empty
    // and is deleted; the max of us comes from the moved row.
    op.process(
        0,
        batch(&[(2, "update", r("us"), Some(7)), (1, "delete", None, None)]),
    )
    .unwrap();
    op.commit_batch();
    // A batch a later operator failed on leaves nothing behind.
    op.process(0, batch(&[(3, "delete", None, None)])).unwrap();
    op.abort_batch();
    let emitted = op.on_checkpoint().unwrap();
    let ops: Vec<String> = text_rows(&emitted)
        .into_iter()
        .map(|r| format!("{} {}", r[0], r[6]))
        .collect();
    assert_eq!(ops, ["us upsert", "eu delete"]);
    apply_to_sink(&mut sink, &emitted);
    assert_eq!(sink.len(), 1);
    assert_eq!(sink["us"], ["us", "2", "12", "5", "7", "2"]);
    assert!(op.on_checkpoint().unwrap().is_empty(), "nothing changed");
    assert_eq!(op.state_rows(), 2);
}

/// A seeded workload of changes; after every checkpoint the sink built from the emitted
/// updates equals DataFusion's aggregate over the table's current rows. Halfway, the state is
/// restored from its snapshots (a full one, then changes) and goes on the same.
#[tokio::test]
async fn a_random_change_stream_aggregates_as_its_table_does() {
    random_change_stream(None).await;
}

/// The same in 64 kB of state memory: the table's older rows spill to disk (and compact,
/// snapshot and restore from there) and the sink is the same.
#[tokio::test]
async fn a_random_change_stream_aggregates_as_its_table_does_with_its_rows_spilled() {
    random_change_stream(Some(64 << 10)).await;
}

async fn random_change_stream(memory: Option<usize>) {
    let operator = move || async move {
        let op = operator().await;
        match memory {
            Some(bytes) => op.with_memory(&StateMemory::new(Some(bytes)).unwrap()),
            None => op,
        }
    };
    let mut spilled = 0;
    let seed = crate::runtime::operator::tests::seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut op = operator().await;
    let mut table: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let mut sink = BTreeMap::new();
    let mut snapshots: Vec<StateChunk> = Vec::new();
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
            op.process(0, batch(&changes)).unwrap();
            op.commit_batch();
            op.fit_memory().unwrap();
        }
        apply_to_sink(&mut sink, &op.on_checkpoint().unwrap());
        assert_eq!(sink, oracle(&table).await, "epoch {epoch}, seed {seed}");
        assert_eq!(op.state_rows(), table.len());
        spilled = spilled.max(op.spilled_bytes());
        if epoch % 7 == 0 {
            // A full snapshot starts the chain again.
            snapshots = op.snapshot(true).unwrap();
        } else {
            snapshots.extend(op.snapshot(false).unwrap());
        }
        if epoch == 17 {
            let mut restored = operator().await;
            restored
                .restore(std::mem::take(&mut snapshots), None)
                .unwrap();
            assert_eq!(restored.state_rows(), table.len());
            assert!(restored.on_checkpoint().unwrap().is_empty());
            snapshots = restored.snapshot(true).unwrap();
            op = restored;
        }
    }
    assert_eq!(spilled > 0, memory.is_some(), "spilled {spilled} bytes");
    // Most rows were replaced many times: dead ones were compacted away.
    assert!(
        op.table.dead_rows() < 4_096 + 400,
        "{}",
        op.table.dead_rows()
    );
}
