//! The join of two change streams with in-process batches: what each checkpoint emits as the
//! two tables change, a batch undone, snapshot and restore.

use arrow::array::{Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_expr::expressions::Column;

use super::*;
use crate::runtime::operator::stateless::OP;
use crate::runtime::operator::tests::{planning_context, rows_as_text};

fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// `orders(order_id, customer) LEFT JOIN customers(id, name) ON customer = id`, planned as the
/// SQL front end plans it: each side's primary key after its columns.
async fn operator() -> ChangeJoin {
    let ctx = planning_context(&[
        (
            "o",
            schema(&[
                ("order_id", DataType::Int32),
                ("customer", DataType::Int32),
                ("__key0_0", DataType::Int32),
            ]),
        ),
        (
            "c",
            schema(&[
                ("id", DataType::Int32),
                ("name", DataType::Utf8),
                ("__key1_0", DataType::Int32),
            ]),
        ),
    ]);
    let join = ctx
        .sql("SELECT * FROM o LEFT JOIN c ON customer = id")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    ChangeJoin::new(ChangeJoinSpec {
        join,
        keys: [
            vec![Arc::new(Column::new("customer", 1))],
            vec![Arc::new(Column::new("id", 0))],
        ],
        schemas: [
            schema(&[("order_id", DataType::Int32), ("customer", DataType::Int32)]),
            schema(&[("id", DataType::Int32), ("name", DataType::Utf8)]),
        ],
        change_schemas: [
            schema(&[
                ("order_id", DataType::Int32),
                ("customer", DataType::Int32),
                ("order_id", DataType::Int32),
                (OP, DataType::Utf8),
            ]),
            schema(&[
                ("id", DataType::Int32),
                ("name", DataType::Utf8),
                ("id", DataType::Int32),
                (OP, DataType::Utf8),
            ]),
        ],
        output: schema(&[
            ("order_id", DataType::Int32),
            ("customer", DataType::Int32),
            ("id", DataType::Int32),
            ("name", DataType::Utf8),
            (OP, DataType::Utf8),
        ]),
        appends: [false, false],
        names_out: false,
    })
    .unwrap()
}

/// Changes to orders: (order, customer, op).
fn orders(op: &ChangeJoin, rows: &[(i32, Option<i32>, &str)]) -> RecordBatch {
    let ids = Arc::new(Int32Array::from(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(
        op.spec.change_schemas[0].clone(),
        vec![
            ids.clone(),
            Arc::new(Int32Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            ids,
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Changes to customers: (id, name, op).
fn customers(op: &ChangeJoin, rows: &[(i32, Option<&str>, &str)]) -> RecordBatch {
    let ids = Arc::new(Int32Array::from(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(
        op.spec.change_schemas[1].clone(),
        vec![
            ids.clone(),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            ids,
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn step(op: &mut ChangeJoin, input: usize, batch: RecordBatch) {
    assert!(op.process(input, batch).unwrap().is_empty());
    op.commit_batch();
}

#[tokio::test]
async fn each_checkpoint_emits_the_joined_rows_the_changes_touched() {
    let mut op = operator().await;
    let c = customers(
        &op,
        &[(1, Some("ann"), "insert"), (2, Some("bob"), "insert")],
    );
    step(&mut op, 1, c);
    let o = orders(
        &op,
        &[
            (10, Some(1), "insert"),
            (11, Some(2), "insert"),
            (12, Some(3), "insert"),
        ],
    );
    step(&mut op, 0, o);
    assert_eq!(
        rows_as_text(&op.on_checkpoint().unwrap()),
        ["10 1 1 ann upsert", "11 2 2 bob upsert", "12 3   upsert"]
    );
    // Nothing changed, nothing emitted.
    assert!(op.on_checkpoint().unwrap().is_empty());
    // A customer renamed (its orders follow), an order moved to it (the row it was leaves),
    // an order deleted; a change whose batch failed leaves nothing behind.
    let c = customers(&op, &[(1, Some("ANN"), "update")]);
    step(&mut op, 1, c);
    let o = orders(&op, &[(11, Some(1), "update"), (12, None, "delete")]);
    step(&mut op, 0, o);
    let undone = customers(&op, &[(2, Some("nobody"), "update")]);
    op.process(1, undone).unwrap();
    op.abort_batch();
    assert_eq!(
        rows_as_text(&op.on_checkpoint().unwrap()),
        [
            "10 1 1 ANN upsert",
            "11 1 1 ANN upsert",
            "11 2 2 bob delete",
            "12 3   delete"
        ]
    );
    let full = op.snapshot(true).unwrap();
    // Customer 2 leaves (no order of it is left), customer 3 arrives for a new order.
    let c = customers(&op, &[(2, None, "delete"), (3, Some("cy"), "insert")]);
    step(&mut op, 1, c);
    let o = orders(&op, &[(13, Some(3), "insert")]);
    step(&mut op, 0, o);
    let want = ["13 3 3 cy upsert"];
    assert_eq!(rows_as_text(&op.on_checkpoint().unwrap()), want);
    assert_eq!(op.state_rows(), 5);
    let changed = op.snapshot(false).unwrap();

    // Restored from the first snapshot, the same changes emit the same.
    let mut restored = operator().await;
    restored.restore(full.clone(), None).unwrap();
    assert_eq!(restored.state_rows(), 4);
    let c = customers(&restored, &[(2, None, "delete"), (3, Some("cy"), "insert")]);
    step(&mut restored, 1, c);
    let o = orders(&restored, &[(13, Some(3), "insert")]);
    step(&mut restored, 0, o);
    assert_eq!(rows_as_text(&restored.on_checkpoint().unwrap()), want);

    // Restored from both, a later change finds every joined row it touches.
    let mut restored = operator().await;
    restored.restore([full, changed].concat(), None).unwrap();
    let c = customers(&restored, &[(1, None, "delete")]);
    step(&mut restored, 1, c);
    assert_eq!(
        rows_as_text(&restored.on_checkpoint().unwrap()),
        [
            "10 1   upsert",
            "10 1 1 ANN delete",
            "11 1   upsert",
            "11 1 1 ANN delete"
        ]
    );
}

/// `clicks(click, ad) LEFT JOIN views(ad, page)` of two streams that only append: each row
/// its own id.
async fn streams() -> ChangeJoin {
    let ctx = planning_context(&[
        (
            "clicks",
            schema(&[
                ("click", DataType::Int32),
                ("ad", DataType::Int32),
                ("__key0_0", DataType::UInt64),
            ]),
        ),
        (
            "views",
            schema(&[
                ("ad_id", DataType::Int32),
                ("page", DataType::Utf8),
                ("__key1_0", DataType::UInt64),
            ]),
        ),
    ]);
    let join = ctx
        .sql("SELECT * FROM clicks LEFT JOIN views ON ad = ad_id")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let change = |fields: &[(&str, DataType)]| {
        let mut all = fields.to_vec();
        all.push(("__rid", DataType::UInt64));
        all.push((OP, DataType::Utf8));
        schema(&all)
    };
    ChangeJoin::new(ChangeJoinSpec {
        join,
        keys: [
            vec![Arc::new(Column::new("ad", 1))],
            vec![Arc::new(Column::new("ad_id", 0))],
        ],
        schemas: [
            schema(&[("click", DataType::Int32), ("ad", DataType::Int32)]),
            schema(&[("ad_id", DataType::Int32), ("page", DataType::Utf8)]),
        ],
        change_schemas: [
            change(&[("click", DataType::Int32), ("ad", DataType::Int32)]),
            change(&[("ad_id", DataType::Int32), ("page", DataType::Utf8)]),
        ],
        output: schema(&[
            ("click", DataType::Int32),
            ("ad", DataType::Int32),
            ("ad_id", DataType::Int32),
            ("page", DataType::Utf8),
            (OP, DataType::Utf8),
        ]),
        appends: [true, true],
        names_out: false,
    })
    .unwrap()
}

fn pairs(a: &[(i32, i32)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(&[("a", DataType::Int32), ("b", DataType::Int32)]),
        vec![
            Arc::new(Int32Array::from(a.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(Int32Array::from(a.iter().map(|r| r.1).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn views(rows: &[(i32, &str)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(&[("ad_id", DataType::Int32), ("page", DataType::Utf8)]),
        vec![
            Arc::new(Int32Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn an_outer_join_of_streams_updates_a_row_when_its_match_comes() {
    let hour = Some(std::time::Duration::from_secs(3_600));
    let mut op = streams().await.with_ttl(hour);
    step(&mut op, 0, pairs(&[(1, 10), (2, 20)]));
    assert_eq!(
        rows_as_text(&op.on_checkpoint().unwrap()),
        ["1 10   upsert", "2 20   upsert"]
    );
    // A view of ad 10 comes: click 1's row without one goes, the joined row comes; a second
    // view of it joins too.
    step(&mut op, 1, views(&[(10, "home"), (10, "news"), (30, "x")]));
    assert_eq!(
        rows_as_text(&op.on_checkpoint().unwrap()),
        [
            "1 10   delete",
            "1 10 10 home upsert",
            "1 10 10 news upsert"
        ]
    );
    let full = op.snapshot(true).unwrap();
    // Restored, new rows get ids of their own, after the restored ones; the rows kept keep
    // the times they were kept at.
    let mut restored = streams().await.with_ttl(hour);
    restored.restore(full, None).unwrap();
    for s in 0..2 {
        assert_eq!(restored.sides[s].kept, op.sides[s].kept, "side {s}");
    }
    assert_eq!(restored.sides[0].kept.len(), 1);
    step(&mut restored, 0, pairs(&[(3, 30), (1, 10)]));
    assert_eq!(
        rows_as_text(&restored.on_checkpoint().unwrap()),
        [
            "1 10 10 home upsert",
            "1 10 10 news upsert",
            "3 30 30 x upsert"
        ]
    );
    assert_eq!(restored.state_rows(), 7);
    // Past the TTL every row leaves, emitting nothing; a later view finds no click.
    let mut expiring = restored.with_ttl(Some(std::time::Duration::ZERO));
    assert!(expiring.on_checkpoint().unwrap().is_empty());
    assert_eq!(expiring.state_rows(), 0);
    step(&mut expiring, 1, views(&[(20, "late")]));
    assert!(expiring.on_checkpoint().unwrap().is_empty());
}

/// Past its memory both tables' older rows spill to disk: checkpoints emit what the same join in
/// memory emits, and a full snapshot (its spilled rows written to a file) restores the same.
#[tokio::test]
async fn tables_beyond_the_budget_spill_and_join_the_same() {
    let mut unbounded = operator().await;
    let name = |i: i32, round: i32| format!("customer {i} of round {round} {}", "x".repeat(1_000));
    let feed = |op: &mut ChangeJoin, round: i32| -> Vec<String> {
        for part in (0..2_000).collect::<Vec<i32>>().chunks(200) {
            let names: Vec<String> = part.iter().map(|&i| name(i, round)).collect();
            let rows: Vec<(i32, Option<&str>, &str)> = part
                .iter()
                .zip(&names)
                .map(|(&i, n)| (i, Some(n.as_str()), "insert"))
                .collect();
            let c = customers(op, &rows);
            step(op, 1, c);
            let rows: Vec<(i32, Option<i32>, &str)> = part
                .iter()
                .map(|&i| (i + 10_000 * round, Some((i * 7) % 2_000), "insert"))
                .collect();
            let o = orders(op, &rows);
            step(op, 0, o);
            op.fit_memory().unwrap();
        }
        rows_as_text(&op.on_checkpoint().unwrap())
    };
    let want: Vec<Vec<String>> = (0..3).map(|r| feed(&mut unbounded, r)).collect();
    let budget = unbounded.state_bytes() * 2 / 3;
    let memory = || crate::runtime::memory::StateMemory::new(Some(budget)).unwrap();
    let mut spilling = operator().await.with_memory(&memory());
    for (round, want) in want.iter().enumerate() {
        assert_eq!(&feed(&mut spilling, round as i32), want, "round {round}");
    }
    assert!(spilling.spilled_bytes() > 0, "the tables spilled");
    assert!(spilling.state_bytes() <= budget);
    let full = spilling.snapshot(true).unwrap();
    assert!(full.iter().any(|c| matches!(c, StateChunk::Spilled(_))));
    let mut restored = operator().await.with_memory(&memory());
    restored.restore(full, None).unwrap();
    assert_eq!(restored.state_rows(), unbounded.state_rows());
    // A fourth round on each: the same updates.
    assert_eq!(feed(&mut restored, 3), feed(&mut unbounded, 3));
}
