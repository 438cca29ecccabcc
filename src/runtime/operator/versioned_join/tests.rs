//! The versioned join with in-process batches: which version each row joins, waiting for the
//! watermark, versions dropped as it passes them, snapshot and restore.

use arrow::array::{Int32Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::physical_expr::expressions::Column;

use super::*;
use crate::runtime::operator::tests::{customers, planning_context, rows_as_text};

fn micros_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// `orders(order_id, customer, ts)`.
fn orders() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int32, true),
        Field::new("customer", DataType::Int32, true),
        Field::new("ts", micros_type(), true),
    ]))
}

fn with_column(schema: &SchemaRef, name: &str) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(name, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// Changes to customers: their columns, then the key, the version time and `_op`.
fn change_schema() -> SchemaRef {
    let mut fields: Vec<Field> = customers()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("id", DataType::Int32, true));
    fields.push(Field::new("valid_from", micros_type(), true));
    fields.push(Field::new(OP, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// `orders LEFT JOIN customers FOR SYSTEM_TIME AS OF orders.ts ON customer = id`, planned as
/// the SQL front end plans it (one more key pair: the order's number).
async fn operator() -> VersionedJoin {
    let ctx = planning_context(&[
        ("orders", with_column(&orders(), PROBE)),
        ("customers", with_column(&customers(), PROBE_TABLE)),
    ]);
    let join = ctx
        .sql(&format!(
            "SELECT order_id, customer, ts, id, name FROM orders LEFT JOIN customers ON customer = id AND {PROBE} = {PROBE_TABLE}"
        ))
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    VersionedJoin::new(VersionedJoinSpec {
        base: TemporalJoinSpec {
            join,
            table_port: 1,
            stream_keys: vec![Arc::new(Column::new("customer", 1))],
            table_keys: vec![Arc::new(Column::new("id", 0))],
            stream_schema: orders(),
            table_schema: customers(),
            change_schema: change_schema(),
        },
        time: Arc::new(Column::new("ts", 2)),
    })
    .unwrap()
}

/// Changes: (id, name, version time, op); a delete carries its key alone.
fn changes(rows: &[(i32, Option<&str>, Option<i64>, &str)]) -> RecordBatch {
    let ids = Arc::new(Int32Array::from(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(
        change_schema(),
        vec![
            ids.clone(),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            ids,
            Arc::new(TimestampMicrosecondArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Orders: (order, customer, time).
fn order_batch(rows: &[(i32, i32, Option<i64>)]) -> RecordBatch {
    RecordBatch::try_new(
        orders(),
        vec![
            Arc::new(Int32Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int32Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMicrosecondArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// (order, name) of joined rows, sorted.
fn joined(batches: &[RecordBatch]) -> Vec<String> {
    let names: Vec<RecordBatch> = batches
        .iter()
        .map(|b| b.project(&[0, 4]).unwrap())
        .collect();
    rows_as_text(&names)
}

/// Customers 1 and 2 from the snapshot; then 1 renamed at 100 (and, arriving later, at 90),
/// 2 deleted at 150, 3 inserted at 120.
fn history(op: &mut VersionedJoin) {
    op.process(
        1,
        changes(&[
            (1, Some("ann"), None, "insert"),
            (2, Some("bob"), None, "insert"),
        ]),
    )
    .unwrap();
    op.commit_batch();
    op.process(
        1,
        changes(&[
            (1, Some("ANN"), Some(100), "update"),
            (2, None, Some(150), "delete"),
            (3, Some("cy"), Some(120), "insert"),
        ]),
    )
    .unwrap();
    op.commit_batch();
    op.process(1, changes(&[(1, Some("mid"), Some(90), "update")]))
        .unwrap();
    op.commit_batch();
}

#[tokio::test]
async fn each_order_joins_the_version_valid_at_its_time_once_the_watermark_passes_it() {
    let mut op = operator().await;
    history(&mut op);
    // Without a time, an order joins the latest versions at once.
    let now = op
        .process(
            0,
            order_batch(&[
                (10, 1, Some(50)),
                (11, 1, Some(100)),
                (12, 2, Some(149)),
                (13, 2, Some(150)),
                (14, 3, Some(119)),
                (15, 3, Some(120)),
                (16, 1, None),
                (17, 1, Some(95)),
                (18, 4, Some(10)),
            ]),
        )
        .unwrap();
    op.commit_batch();
    assert_eq!(joined(&now), ["16 ANN"]);
    // A change the batch's failure undoes leaves nothing behind.
    op.process(1, changes(&[(1, Some("nobody"), Some(60), "update")]))
        .unwrap();
    op.process(0, order_batch(&[(99, 1, Some(60))])).unwrap();
    op.abort_batch();
    // The watermark at 95 lets go the orders before it; the one at 95 waits (a change at 95
    // may still come).
    assert_eq!(joined(&op.on_watermark(95).unwrap()), ["10 ann", "18 "]);
    let first = op.snapshot(true).unwrap();
    let rest = op.on_watermark(200).unwrap();
    let want = ["11 ANN", "12 bob", "13 ", "14 ", "15 cy", "17 mid"];
    assert_eq!(joined(&rest), want);
    // Only the versions rows from 200 on can see are kept: 1's at 100, 3's.
    assert_eq!(op.state_rows(), 2);
    let second = op.snapshot(false).unwrap();

    // Restored at the first snapshot, the waiting orders join the same.
    let mut restored = operator().await;
    restored.restore(first.clone(), Some(95)).unwrap();
    assert_eq!(joined(&restored.on_watermark(200).unwrap()), want);

    // Restored at the second, nothing waits, and later orders join what was kept.
    let mut restored = operator().await;
    restored
        .restore([first, second].concat(), Some(200))
        .unwrap();
    assert_eq!(restored.state_rows(), 2);
    restored
        .process(
            0,
            order_batch(&[(20, 1, Some(300)), (21, 2, Some(300)), (22, 3, Some(200))]),
        )
        .unwrap();
    restored.commit_batch();
    assert_eq!(
        joined(&restored.on_watermark(400).unwrap()),
        ["20 ANN", "21 ", "22 cy"]
    );
}

#[tokio::test]
async fn a_key_updated_many_times_keeps_only_the_versions_still_visible() {
    let mut op = operator().await;
    for round in 0..50i64 {
        let rows: Vec<(i32, String)> = (0..100).map(|id| (id, format!("n{round}-{id}"))).collect();
        let batch: Vec<(i32, Option<&str>, Option<i64>, &str)> = rows
            .iter()
            .map(|(id, n)| (*id, Some(n.as_str()), Some(round * 10), "update"))
            .collect();
        op.process(1, changes(&batch)).unwrap();
        op.commit_batch();
        op.on_watermark(round * 10 - 5).unwrap();
        op.fit_memory().unwrap();
    }
    // Versions at 480 and 490 for each key: 490 is after the watermark at 485.
    assert_eq!(op.state_rows(), 200);
    op.process(
        0,
        order_batch(&[(1, 7, Some(485)), (2, 7, Some(490)), (3, 100, Some(490))]),
    )
    .unwrap();
    op.commit_batch();
    assert_eq!(
        joined(&op.on_watermark(1000).unwrap()),
        ["1 n48-7", "2 n49-7", "3 "]
    );
    assert_eq!(op.state_rows(), 100);
}
