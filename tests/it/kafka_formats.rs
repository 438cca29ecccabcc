//! What a Kafka message holds, read and written, against Apache Kafka: key, headers,
//! partition, offset and timestamp as columns (the timestamp as event time; a first run starting
//! at a time), Debezium change events into an upsert sink, and Avro values both ways, produced
//! and read back by fastavro.

use std::time::Duration;

use crate::harness::*;
use crate::kafka::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_metadata_columns_event_time_and_start_at_a_time() {
    let broker = Broker::start().await;
    broker.create_topic("clicks", 2);
    // Ten messages in partition 1, one second apart from 2026-05-01 10:00:00 UTC, each with a
    // key and two headers (one without a value); the value holds only the id.
    let py = r#"
import sys, json
from confluent_kafka import Producer
p = Producer({'bootstrap.servers': sys.argv[1]})
base = 1777629600000  # 2026-05-01T10:00:00Z
for i in range(10):
    p.produce('clicks', partition=1, key='k%d' % i, value=json.dumps({'id': i}),
              headers=[('trace', 't%d' % i), ('empty', None)], timestamp=base + i * 1000)
assert p.flush(60) == 0
"#;
    run_python(py, &[&broker.bootstrap]);
    let (tmp, server) = start_fresh().await;
    let c = server.client().await;
    // A start time before which five messages lie: they are not read.
    c.batch_execute(&format!(
        "CREATE SOURCE clicks (id BIGINT, _key TEXT, _headers TEXT, _partition INT, _offset BIGINT, _timestamp TIMESTAMP,
                               WATERMARK FOR _timestamp AS _timestamp - INTERVAL '1' SECOND)
           WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'clicks',
                 start_from = 'timestamp', start_timestamp = '2026-05-01 10:00:05');
         CREATE SINK seen WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE copy WITH (mode = 'batch') AS INSERT INTO seen SELECT * FROM clicks;
         CREATE SINK per_window WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE windows WITH (mode = 'batch') AS INSERT INTO per_window
           SELECT window_start, window_end, count(*) AS n, min(_key) AS first FROM TUMBLE(clicks, _timestamp, INTERVAL '2' SECOND) GROUP BY window_start, window_end;",
        tmp.path().join("seen").display(),
        tmp.path().join("windows").display(),
        b = broker.bootstrap
    ))
    .await
    .unwrap();
    wait_state(&c, "copy", "completed").await;
    wait_state(&c, "windows", "completed").await;
    assert_eq!(
        query_lines(
            &c,
            "SELECT id, _key, _headers, _partition, _offset, _timestamp FROM seen ORDER BY id"
        )
        .await,
        (5..10)
            .map(|i| format!(
                "{i} k{i} {{\"trace\":\"t{i}\",\"empty\":null}} 1 {i} 2026-05-01 10:00:{i:02}"
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        query_lines(
            &c,
            "SELECT window_start, n, first FROM per_window ORDER BY window_start"
        )
        .await,
        vec![
            "2026-05-01 10:00:04 1 k5",
            "2026-05-01 10:00:06 2 k6",
            "2026-05-01 10:00:08 2 k8",
        ]
    );

    // A metadata column of a type that cannot hold it, and a start time that is not one, are
    // refused at CREATE with what to write instead.
    let e = error_message(
        &c,
        &format!(
            "CREATE SOURCE bad (id BIGINT, _headers BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'clicks')",
            broker.bootstrap
        ),
    )
    .await;
    assert!(e.contains("_headers") && e.contains("TEXT"), "{e}");
    let e = error_message(
        &c,
        &format!(
            "CREATE SOURCE bad (id BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'clicks', start_from = 'timestamp', start_timestamp = 'yesterday')",
            broker.bootstrap
        ),
    )
    .await;
    assert!(
        e.contains("start_timestamp") && e.contains("2026-12-01"),
        "{e}"
    );
}

/// Produces `n` seeded Debezium change events over 200 customers into `topic` (keyed by id,
/// half with the JSON converter's schema envelope, each delete followed by a tombstone, the
/// first events snapshot reads), and one message that is not an event; prints the table the
/// events leave, as JSON `[[id, name, balance], ...]` sorted by id.
const DEBEZIUM_EVENTS: &str = r#"
import sys, json, random
from confluent_kafka import Producer
bootstrap, topic, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
p = Producer({'bootstrap.servers': bootstrap, 'linger.ms': 20})
state = {}
for i in range(n):
    k = rng.randrange(200)
    before = state.get(k)
    if before is None:
        op = 'r' if i < 100 else 'c'
    else:
        op = rng.choice(['u', 'u', 'd'])
    after = None if op == 'd' else {'id': k, 'name': 'n%d' % rng.randrange(1000), 'balance': rng.randrange(-1000, 1000)}
    payload = {'before': before, 'after': after, 'op': op, 'ts_ms': 1777629600000 + i,
               'source': {'connector': 'postgresql', 'db': 'shop', 'schema': 'public', 'table': 'customers', 'lsn': i}}
    value = payload if i % 2 else {'schema': {'type': 'struct', 'name': 'shop.public.customers.Envelope', 'optional': False, 'fields': []}, 'payload': payload}
    key = json.dumps({'id': k})
    p.produce(topic, key=key, value=json.dumps(value))
    if op == 'd':
        p.produce(topic, key=key, value=None)
        del state[k]
    else:
        state[k] = after
    if i == n // 2:
        p.produce(topic, key=key, value=json.dumps({'id': k, 'name': 'not an event'}))
    if i % 1000 == 0:
        p.poll(0)
assert p.flush(60) == 0
print(json.dumps(sorted([[k, v['name'], v['balance']] for k, v in state.items()])))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_events_from_kafka_keep_a_delta_table_equal_to_the_upstream_one() {
    let broker = Broker::start().await;
    broker.create_topic("shop.public.customers", 2);
    let seed: u64 = rand::Rng::random(&mut seeded_rng(
        "debezium_events_from_kafka_keep_a_delta_table_equal_to_the_upstream_one",
    ));
    const EVENTS: u64 = 20_000;
    let expected = run_python(
        DEBEZIUM_EVENTS,
        &[
            &broker.bootstrap,
            "shop.public.customers",
            &seed.to_string(),
            &EVENTS.to_string(),
        ],
    );
    let (tmp, server) = start_fresh().await;
    let c = server.client().await;
    let lake = tmp.path().join("customers");
    c.batch_execute(&format!(
        "CREATE SOURCE customers (id BIGINT, name TEXT, balance BIGINT, PRIMARY KEY (id))
           WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'shop.public.customers', format = 'debezium-json');
         CREATE SINK mirror WITH (connector = 'delta', path = '{}', mode = 'upsert');
         CREATE PIPELINE cdc WITH (checkpoint_interval = '200ms') AS INSERT INTO mirror SELECT * FROM customers;",
        lake.display(),
        b = broker.bootstrap
    ))
    .await
    .unwrap();
    // Every event read (tombstones are no rows), the one that is not an event kept as bad.
    // tributary.commits lists a checkpoint once the sink's commit is through (a checkpoint is
    // stored, and listed in tributary.checkpoints, just before).
    poll(
        Duration::from_secs(120),
        "every event committed",
        || async {
            let done = scalar(
                &c,
                "SELECT max(rows_in) FROM tributary.commits WHERE pipeline = 'cdc'",
            )
            .await;
            (done.parse::<u64>().unwrap_or(0) > EVENTS).then_some(())
        },
    )
    .await;
    assert_eq!(counters(&c, "cdc").await.2, 1);
    // Bad records show once their epoch's commit is through.
    let bad = poll(Duration::from_secs(30), "the bad record", || async {
        let rows = query(
            &c,
            "SELECT error, raw FROM tributary.errors WHERE pipeline = 'cdc'",
        )
        .await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert!(
        bad[0][0].as_deref().unwrap().contains("\"op\"")
            && bad[0][1].as_deref().unwrap().contains("not an event"),
        "{bad:?}"
    );
    // An independent reader of the Delta table sees the upstream table.
    let py = r#"
import sys, json, deltalake
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist()
print(json.dumps(sorted([[r['id'], r['name'], r['balance']] for r in t])))
"#;
    assert_eq!(run_python(py, &[&lake.to_string_lossy()]), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_values_in_and_out_read_by_fastavro() {
    let broker = Broker::start().await;
    broker.create_topic("clicks_avro", 2);
    broker.create_topic("clicks_out", 2);
    const SCHEMA: &str = r#"{"type": "record", "name": "click", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": ["null", "string"], "default": null},
        {"name": "amount", "type": "double"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "kind", "type": {"type": "enum", "name": "kind", "symbols": ["VIEW", "BUY"]}}]}"#;
    // 1000 clicks written by fastavro (every 7th without a name), and one message that is not Avro.
    let py = r#"
import sys, io, json, datetime
import fastavro
from confluent_kafka import Producer
schema = fastavro.parse_schema(json.loads(sys.argv[2]))
p = Producer({'bootstrap.servers': sys.argv[1]})
base = datetime.datetime(2026, 5, 1, 10, 0, 0, tzinfo=datetime.timezone.utc)
for i in range(1000):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {'id': i, 'name': None if i % 7 == 0 else 'n%d' % i, 'amount': i / 4,
                                             'at': base + datetime.timedelta(milliseconds=i * 250), 'kind': 'BUY' if i % 3 == 0 else 'VIEW'})
    p.produce('clicks_avro', key=str(i), value=buf.getvalue())
p.produce('clicks_avro', key='bad', value=b'\xff\xff\xff')
assert p.flush(60) == 0
"#;
    run_python(py, &[&broker.bootstrap, SCHEMA]);
    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE clicks (id BIGINT, name TEXT, amount DOUBLE, at TIMESTAMP, kind TEXT)
           WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'clicks_avro', format = 'avro', avro_schema = '{SCHEMA}');
         CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'clicks_out', key = 'id', format = 'avro');
         CREATE PIPELINE relay WITH (mode = 'batch') AS INSERT INTO out
           SELECT id, name, amount * 2 AS doubled, at, kind = 'BUY' AS bought FROM clicks;",
        b = broker.bootstrap
    ))
    .await
    .unwrap();
    wait_state(&c, "relay", "completed").await;
    assert_eq!(counters(&c, "relay").await, (1001, 1000, 1));
    // tributary.commits says what each commit with rows made visible: a Kafka transaction.
    let commits = query_lines(
        &c,
        "SELECT sink_commit FROM tributary.commits WHERE pipeline = 'relay' AND sink_commit IS NOT NULL",
    )
    .await;
    assert!(
        !commits.is_empty()
            && commits
                .iter()
                .all(|c| c.starts_with("Kafka transaction of ") && c.ends_with(" messages")),
        "{commits:?}"
    );
    let bad = query(
        &c,
        "SELECT error FROM tributary.errors WHERE pipeline = 'relay'",
    )
    .await;
    assert!(bad[0][0].as_deref().unwrap().contains("Avro"), "{bad:?}");
    // The sink's schema, derived from the pipeline's columns, as the README gives the rule; an
    // independent reader decodes every message with it.
    const DERIVED: &str = r#"{"type": "record", "name": "row", "namespace": "tributary", "fields": [
        {"name": "id", "type": ["null", "long"], "default": null},
        {"name": "name", "type": ["null", "string"], "default": null},
        {"name": "doubled", "type": ["null", "double"], "default": null},
        {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": null},
        {"name": "bought", "type": ["null", "boolean"], "default": null}]}"#;
    let py = r#"
import sys, io, json
import fastavro
from confluent_kafka import Consumer
schema = fastavro.parse_schema(json.loads(sys.argv[2]))
c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'check', 'auto.offset.reset': 'earliest'})
c.subscribe(['clicks_out'])
rows, empty = {}, 0
while empty < 10:
    m = c.poll(0.5)
    if m is None:
        empty += 1
        continue
    if m.error():
        continue
    empty = 0
    r = fastavro.schemaless_reader(io.BytesIO(m.value()), schema, None)
    assert m.key().decode() == str(r['id'])
    rows[r['id']] = r
c.close()
print(len(rows))
for i in (0, 1, 999):
    r = rows[i]
    print(r['id'], r['name'], r['doubled'], r['at'].isoformat(), r['bought'])
"#;
    assert_eq!(
        run_python(py, &[&broker.bootstrap, DERIVED]),
        "1000
0 None 0.0 2026-05-01T10:00:00+00:00 True
1 n1 0.5 2026-05-01T10:00:00.250000+00:00 False
999 n999 499.5 2026-05-01T10:04:09.750000+00:00 True"
    );
    // A schema that is not one is refused at CREATE.
    let e = error_message(
        &c,
        &format!(
            "CREATE SOURCE bad (id BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'clicks_avro', format = 'avro', avro_schema = '{{\"type\": \"nope\"}}')",
            broker.bootstrap
        ),
    )
    .await;
    assert!(
        e.contains("avro_schema") && e.contains("Avro schema"),
        "{e}"
    );
}
