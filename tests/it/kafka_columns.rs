//! What a Kafka message carries besides its value, as columns, against Apache Kafka: key,
//! headers, partition, offset and timestamp; the timestamp as event time for windows; and a
//! first run starting at a time.

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
    let e = c
        .batch_execute(&format!(
            "CREATE SOURCE bad (id BIGINT, _headers BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'clicks')",
            broker.bootstrap
        ))
        .await
        .unwrap_err();
    let e = e.as_db_error().unwrap().message().to_string();
    assert!(e.contains("_headers") && e.contains("TEXT"), "{e}");
    let e = c
        .batch_execute(&format!(
            "CREATE SOURCE bad (id BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'clicks', start_from = 'timestamp', start_timestamp = 'yesterday')",
            broker.bootstrap
        ))
        .await
        .unwrap_err();
    let e = e.as_db_error().unwrap().message().to_string();
    assert!(
        e.contains("start_timestamp") && e.contains("2026-12-01"),
        "{e}"
    );
}
