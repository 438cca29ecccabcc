//! The Kafka sink's transactions against Apache Kafka: a checkpointed epoch whose transaction a
//! crash lost is sent again and one that committed is not (driving the sink directly), and a
//! Kafka-to-Kafka pipeline killed three times delivers every record once to a read_committed
//! consumer; a batch pipeline reads the transactional topic to its end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use tributary_connectors::{sink_connector, PreparedCommit, Sink, SinkContext, SinkSpec};

use crate::harness::*;
use crate::kafka::Broker;

/// What a consumer with `isolation` reads of `topic`: messages, distinct `id`s, the least and
/// the largest id (values are JSON objects with an `id`).
fn read_ids(broker: &Broker, topic: &str, isolation: &str) -> (u64, u64, i64, i64) {
    let py = r#"
import sys, json
from confluent_kafka import Consumer
c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'check-' + sys.argv[3], 'auto.offset.reset': 'earliest', 'isolation.level': sys.argv[3], 'enable.auto.commit': False})
c.subscribe([sys.argv[2]])
ids, total, empty = set(), 0, 0
while empty < 10:
    batch = c.consume(10000, 0.5)
    if not batch:
        empty += 1
        continue
    empty = 0
    for m in batch:
        if m.error():
            continue
        total += 1
        ids.add(json.loads(m.value())['id'])
c.close()
print(total, len(ids), min(ids) if ids else -1, max(ids) if ids else -1)
"#;
    let out = run_python(py, &[&broker.bootstrap, topic, isolation]);
    let v: Vec<i64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0] as u64, v[1] as u64, v[2], v[3])
}

fn rows(ids: std::ops::Range<i64>) -> RecordBatch {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
    ]));
    let names: Vec<String> = ids.clone().map(|i| format!("n{i}")).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from(names)),
        ],
    )
    .unwrap()
}

async fn open_sink(broker: &Broker, state: &std::path::Path) -> Box<dyn Sink> {
    let options: BTreeMap<String, String> = [
        ("connector", "kafka"),
        ("bootstrap_servers", broker.bootstrap.as_str()),
        ("topic", "out"),
        ("key", "id"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let spec = SinkSpec {
        name: "out".into(),
        options: options.clone(),
    };
    let mut sink = sink_connector(&options)
        .unwrap()
        .create(&spec)
        .await
        .unwrap();
    let ctx = SinkContext {
        pipeline: "p".into(),
        writer_id: "w1".into(),
        state_dir: state.to_path_buf(),
        primary_key: Vec::new(),
    };
    sink.open(&ctx, rows(0..0).schema()).await.unwrap();
    sink
}

async fn write_and_prepare(
    sink: &mut Box<dyn Sink>,
    ids: std::ops::Range<i64>,
    epoch: u64,
) -> PreparedCommit {
    sink.write(rows(ids)).await.unwrap();
    sink.prepare(epoch).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_sends_again_only_the_checkpointed_epoch_a_crash_lost() {
    let broker = Broker::start().await;
    broker.create_topic("out", 3);
    let state = tempfile::tempdir().unwrap();

    // A run commits epoch 1, prepares epoch 2 (its checkpoint is written) and dies before
    // committing it: its transaction stays open on the broker.
    let mut first = open_sink(&broker, state.path()).await;
    let p1 = write_and_prepare(&mut first, 0..1000, 1).await;
    first.commit(1, p1.clone()).await.unwrap();
    assert_eq!(
        first.last_commit().as_deref(),
        Some("Kafka transaction of 1000 messages")
    );
    let p2 = write_and_prepare(&mut first, 1000..2000, 2).await;
    drop(first);

    // The next run fences it (the open transaction is aborted), then redoes the last
    // checkpoint's commit, as the runtime does at start: epoch 1 committed (nothing is sent),
    // epoch 2 did not (its staged rows are sent in a new transaction).
    let mut second = open_sink(&broker, state.path()).await;
    second.commit(1, p1).await.unwrap();
    assert_eq!(second.last_commit(), None);
    second.commit(2, p2.clone()).await.unwrap();
    assert_eq!(
        second.last_commit().as_deref(),
        Some("Kafka transaction of 1000 messages (sent again)")
    );
    let p3 = write_and_prepare(&mut second, 2000..2500, 3).await;
    second.commit(3, p3.clone()).await.unwrap();
    drop(second);

    // A run after a clean commit redoes nothing.
    let mut third = open_sink(&broker, state.path()).await;
    third.commit(3, p3).await.unwrap();
    assert_eq!(third.last_commit(), None);
    // An epoch without rows commits no transaction.
    let empty = third.prepare(4).await.unwrap();
    third.commit(4, empty).await.unwrap();
    drop(third);

    assert_eq!(
        read_ids(&broker, "out", "read_committed"),
        (2500, 2500, 0, 2499)
    );
    // The aborted transaction's messages are in the log, hidden from read_committed readers.
    assert_eq!(
        read_ids(&broker, "out", "read_uncommitted"),
        (3500, 2500, 0, 2499)
    );
    // Committed epochs leave no staged files behind.
    let staged: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".arrow"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_kafka_exactly_once_across_sigkills() {
    let broker = Broker::start().await;
    broker.create_topic("events", 4);
    broker.create_topic("copy", 3);
    const N: u64 = 300_000;
    broker.produce("events", 0, N, 0);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE events (id BIGINT, name TEXT, amount BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'events');
         CREATE SINK copy WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'copy', key = 'id', compression = 'lz4', linger_ms = 20);
         CREATE PIPELINE relay WITH (checkpoint_interval = '300ms') AS INSERT INTO copy SELECT id, name, amount + 1 AS amount FROM events;",
        b = broker.bootstrap
    ))
    .await
    .unwrap();

    // Three kills at random moments, one in each third of the run.
    let (server, kills) = kill_in_each_third(
        server,
        &data,
        "relay",
        N,
        "kafka_to_kafka_exactly_once_across_sigkills",
    )
    .await;
    assert!(
        kills >= 1,
        "the pipeline ended before it could be killed once"
    );
    let c = server.client().await;
    poll(
        Duration::from_secs(300),
        "every record to be relayed",
        || async {
            let (rows_in, rows_out, errored) = counters(&c, "relay").await;
            if rows_in > N || errored > 0 {
                panic!("read {rows_in} records ({errored} bad) from a topic of {N} good ones");
            }
            (rows_out >= N).then_some(())
        },
    )
    .await;
    c.batch_execute("STOP PIPELINE relay").await.unwrap();

    // A read_committed consumer sees every record once.
    assert_eq!(
        read_ids(&broker, "copy", "read_committed"),
        (N, N, 0, N as i64 - 1)
    );
    let uncommitted = read_ids(&broker, "copy", "read_uncommitted");
    eprintln!("read_uncommitted: {uncommitted:?} (aborted transactions' messages included)");

    // A batch pipeline over the transactional topic reaches its end (the last offset of each
    // partition is a transaction marker, never delivered) and completes, with every record once.
    c.batch_execute(&format!(
        "CREATE SOURCE copied (id BIGINT, amount BIGINT, _partition INT, _offset BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'copy');
         CREATE SINK back WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE once WITH (mode = 'batch') AS INSERT INTO back SELECT * FROM copied;",
        tmp.path().join("back").display(),
        b = broker.bootstrap
    ))
    .await
    .unwrap();
    wait_state(&c, "once", "completed").await;
    assert_eq!(
        query(
            &c,
            "SELECT count(*), count(DISTINCT id), sum(CASE WHEN amount = id % 997 + 1 THEN 1 ELSE 0 END), count(DISTINCT _partition * 1000000000 + _offset) FROM back"
        )
        .await,
        vec![vec![
            Some(N.to_string()),
            Some(N.to_string()),
            Some(N.to_string()),
            Some(N.to_string())
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_fails_the_epoch_with_its_error_and_nothing_is_visible() {
    let broker = Broker::start().await;
    broker.create_topic("small", 1);
    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    // Rows of 2 MB: more than the broker takes in a message (1 MB). The producer is told it may
    // send them, so it is the broker that refuses.
    c.batch_execute(&format!(
        "CREATE SINK small WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'small', \"properties.message.max.bytes\" = '10000000');
         CREATE SOURCE gen WITH (connector = 'nexmark', table = 'bid', events = 10, seed = 1);
         CREATE PIPELINE big WITH (mode = 'batch') AS INSERT INTO small
           SELECT auction AS id, repeat('x', 2000000) AS padding FROM gen;",
        broker.bootstrap
    ))
    .await
    .unwrap();
    wait_state(&c, "big", "failed").await;
    let error = scalar(
        &c,
        "SELECT error FROM tributary.pipelines WHERE name = 'big'",
    )
    .await;
    assert!(
        error.contains("delivering to small") && error.contains("Broker: Message size too large"),
        "{error}"
    );
    // The epoch's transaction was aborted: a read_committed reader sees nothing.
    assert_eq!(read_ids(&broker, "small", "read_committed").0, 0);
}
