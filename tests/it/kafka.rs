//! Kafka end to end against Apache Kafka (a single-node KRaft broker started from the jars
//! tests/kafka/install.sh fetches) with an independent producer and consumer (Python
//! confluent-kafka): exactly once into Delta across SIGKILLs, stop/start, bad records, lag,
//! batch mode, and the Kafka sink.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// An Apache Kafka broker (KRaft, broker and controller in one process) on free ports, with its
/// log directory in a temporary directory; killed when dropped.
pub struct Broker {
    child: Child,
    dir: tempfile::TempDir,
    pub bootstrap: String,
    /// With [`Broker::start_with_sasl`]: a listener that wants SASL/PLAIN logins.
    pub sasl_bootstrap: String,
    /// With [`Broker::start_with_ssl`]: a listener that speaks TLS only.
    pub ssl_bootstrap: String,
}

/// Any valid cluster id: each broker formats its own fresh log directory.
const CLUSTER_ID: &str = "q1Sh-9_ISia_zwGINzRvyQ";

impl Broker {
    pub async fn start() -> Broker {
        Self::launch(&[], None).await
    }

    /// A broker with a second listener, SASL_PLAINTEXT with the PLAIN mechanism, for `users`
    /// (name, password); the first stays PLAINTEXT for the test's own clients.
    pub async fn start_with_sasl(users: &[(&str, &str)]) -> Broker {
        Self::launch(users, None).await
    }

    /// A broker with a second listener, SSL, serving `keystore` (a PEM file holding the
    /// private key, PKCS#8, and the certificate chain); the first stays PLAINTEXT.
    pub async fn start_with_ssl(keystore: &std::path::Path) -> Broker {
        Self::launch(&[], Some(keystore)).await
    }

    async fn launch(users: &[(&str, &str)], keystore: Option<&std::path::Path>) -> Broker {
        let libs = std::env::var("KAFKA_LIBS").unwrap_or_else(|_| {
            format!(
                "{}/.cache/tributary/kafka-4.1.1/libs",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        assert!(
            std::path::Path::new(&libs).join(".complete").exists(),
            "no Apache Kafka jars in {libs}: tests/run.sh fetches them (bash tests/kafka/install.sh {libs})"
        );
        let classpath = format!("{libs}/*");
        let dir = tempfile::tempdir().unwrap();
        let (port, controller_port, sasl_port, ssl_port) =
            (free_port(), free_port(), free_port(), free_port());
        let sasl = if users.is_empty() {
            String::new()
        } else {
            let accounts: String = users
                .iter()
                .map(|(u, p)| format!(" user_{u}=\"{p}\""))
                .collect();
            format!(
                "sasl.enabled.mechanisms=PLAIN\n\
                 listener.name.sasl_plaintext.plain.sasl.jaas.config=\
                 org.apache.kafka.common.security.plain.PlainLoginModule required{accounts};\n"
            )
        };
        let mut advertised = format!("PLAINTEXT://127.0.0.1:{port}");
        if !users.is_empty() {
            advertised.push_str(&format!(",SASL_PLAINTEXT://127.0.0.1:{sasl_port}"));
        }
        let ssl = match keystore {
            None => String::new(),
            Some(keystore) => {
                advertised.push_str(&format!(",SSL://127.0.0.1:{ssl_port}"));
                format!(
                    "listener.name.ssl.ssl.keystore.type=PEM\n\
                     listener.name.ssl.ssl.keystore.location={}\n\
                     listener.name.ssl.ssl.client.auth=none\n",
                    keystore.display()
                )
            }
        };
        let listeners = format!("{advertised},CONTROLLER://127.0.0.1:{controller_port}");
        let config = dir.path().join("server.properties");
        std::fs::write(
            &config,
            format!(
                "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners={listeners}
advertised.listeners={advertised}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL
inter.broker.listener.name=PLAINTEXT
log.dirs={}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
{sasl}{ssl}",
                dir.path().join("logs").display()
            ),
        )
        .unwrap();
        let java = |log: &str| {
            let log = std::fs::File::create(dir.path().join(log)).unwrap();
            let mut cmd = Command::new("java");
            cmd.args(["-Xmx1g", "-cp", &classpath])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            cmd
        };
        let formatted = java("format.log")
            .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
            .arg(&config)
            .status()
            .expect("running java (tests/run.sh installs it)");
        assert!(
            formatted.success(),
            "formatting the Kafka log directory failed: {}",
            std::fs::read_to_string(dir.path().join("format.log")).unwrap_or_default()
        );
        let mut child = java("broker.log")
            .arg("kafka.Kafka")
            .arg(&config)
            .spawn()
            .expect("starting the Kafka broker");
        let deadline = Instant::now() + Duration::from_secs(90);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            let log = || std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the Kafka broker exited ({status}): {}", log());
            }
            assert!(
                Instant::now() < deadline,
                "the Kafka broker did not start: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Broker {
            child,
            dir,
            bootstrap: format!("127.0.0.1:{port}"),
            sasl_bootstrap: format!("127.0.0.1:{sasl_port}"),
            ssl_bootstrap: format!("127.0.0.1:{ssl_port}"),
        }
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let py = r#"
import sys
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({'bootstrap.servers': sys.argv[1]})
for f in a.create_topics([NewTopic(sys.argv[2], num_partitions=int(sys.argv[3]), replication_factor=1)]).values():
    f.result(30)
"#;
        run_python(py, &[&self.bootstrap, topic, &partitions.to_string()]);
    }

    /// Produces ids `first..first+n` as JSON (keyed by id); every `bad_every`-th record is malformed.
    pub fn produce(&self, topic: &str, first: u64, n: u64, bad_every: u64) {
        let py = r#"
import sys, json
from confluent_kafka import Producer
p = Producer({'bootstrap.servers': sys.argv[1], 'linger.ms': 20, 'batch.num.messages': 5000, 'queue.buffering.max.messages': 1000000})
topic, first, n, bad = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
for i in range(first, first + n):
    if bad and i % bad == 0:
        v = '{"id": %d, "name": broken' % i
    else:
        v = json.dumps({"id": i, "name": "n%d" % (i % 1000), "amount": i % 997})
    while True:
        try:
            p.produce(topic, value=v, key=str(i))
            break
        except BufferError:
            p.poll(0.1)
    if i % 10000 == 0:
        p.poll(0)
left = p.flush(60)
assert left == 0, left
"#;
        run_python(
            py,
            &[
                &self.bootstrap,
                topic,
                &first.to_string(),
                &n.to_string(),
                &bad_every.to_string(),
            ],
        );
    }
}

impl Broker {
    /// Produces each of `values` (JSON text, one per line) into `partition`, in order.
    pub fn produce_values(&self, topic: &str, partition: i32, values: &[&str]) {
        let py = r#"
import sys
from confluent_kafka import Producer
p = Producer({'bootstrap.servers': sys.argv[1]})
for v in sys.argv[4].split('\n'):
    p.produce(sys.argv[2], partition=int(sys.argv[3]), value=v)
assert p.flush(60) == 0
"#;
        run_python(
            py,
            &[
                &self.bootstrap,
                topic,
                &partition.to_string(),
                &values.join("\n"),
            ],
        );
    }

    /// Every message of `topic` (read until it has been quiet for 5 s), as `key value` lines in
    /// offset order per partition, partitions in turn; a tombstone's value is `null`.
    pub fn consume_all(&self, topic: &str) -> Vec<String> {
        let py = r#"
import sys
from confluent_kafka import Consumer
c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'check-' + sys.argv[2], 'auto.offset.reset': 'earliest'})
c.subscribe([sys.argv[2]])
messages, empty = [], 0
while empty < 10:
    m = c.poll(0.5)
    if m is None:
        empty += 1
        continue
    if m.error():
        continue
    empty = 0
    value = 'null' if m.value() is None else m.value().decode()
    messages.append((m.partition(), m.offset(), m.key().decode() + ' ' + value))
c.close()
print('\n'.join(line for _, _, line in sorted(messages)))
"#;
        run_python(py, &[&self.bootstrap, topic])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Produces `{"id": .., "ts": "2026-05-01T10:00:SS"}` for each (id, second) into `partition`.
    pub fn produce_times(&self, topic: &str, partition: i32, rows: &[(u64, u32)]) {
        let py = r#"
import sys, json
from confluent_kafka import Producer
p = Producer({'bootstrap.servers': sys.argv[1]})
for pair in sys.argv[4].split(','):
    i, s = pair.split(':')
    p.produce(sys.argv[2], partition=int(sys.argv[3]), value=json.dumps({"id": int(i), "ts": "2026-05-01T10:00:%02d" % int(s)}))
assert p.flush(60) == 0
"#;
        let rows: Vec<String> = rows.iter().map(|(i, s)| format!("{i}:{s}")).collect();
        run_python(
            py,
            &[
                &self.bootstrap,
                topic,
                &partition.to_string(),
                &rows.join(","),
            ],
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop_showing_log(
            &mut self.child,
            &self.dir.path().join("broker.log"),
            "Kafka broker",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_into_delta_exactly_once_across_sigkills() {
    let broker = Broker::start().await;
    broker.create_topic("orders", 4);
    const N: u64 = 1_000_000;
    broker.produce("orders", 0, N, 0);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let lake = tmp.path().join("lake");
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, name TEXT, amount BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'orders', format = 'json');
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE load WITH (checkpoint_interval = '300ms') AS INSERT INTO lake SELECT id, name, amount * 2 AS doubled FROM orders;",
        broker.bootstrap,
        lake.display()
    ))
    .await
    .unwrap();
    assert_eq!(
        scalar(
            &c,
            "SELECT mode FROM tributary.pipelines WHERE name = 'load'"
        )
        .await,
        "streaming"
    );

    // Three kills at random moments, one in each third of the run.
    let (server, kills) = kill_in_each_third(
        server,
        &data,
        "load",
        N,
        "kafka_into_delta_exactly_once_across_sigkills",
    )
    .await;
    assert!(
        kills >= 1,
        "the pipeline ended before it could be killed once"
    );
    let c = server.client().await;
    poll(Duration::from_secs(300), "every record to land", || async {
        let (rows_in, rows_out, errored) = counters(&c, "load").await;
        if rows_in > N || errored > 0 {
            panic!("read {rows_in} records ({errored} bad) from a topic of {N} good ones");
        }
        (rows_out >= N).then_some(())
    })
    .await;
    // Lag drops to zero on every partition.
    poll(Duration::from_secs(60), "lag to reach zero", || async {
        let rows = query(&c, "SELECT partition, lag, lag_seconds FROM tributary.source_lag WHERE pipeline = 'load' ORDER BY partition").await;
        // Caught up: no records and no seconds behind.
        (rows.len() == 4
            && rows
                .iter()
                .all(|r| r[1].as_deref() == Some("0") && r[2].as_deref() == Some("0")))
        .then_some(())
    })
    .await;
    c.batch_execute("STOP PIPELINE load").await.unwrap();
    assert_eq!(delta_count_distinct(&lake), (N, N));
    assert_eq!(counters(&c, "load").await, (N, N, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stop_start_bad_records_batch_mode_and_sink() {
    let broker = Broker::start().await;
    broker.create_topic("events", 2);
    broker.produce("events", 0, 10_000, 100);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let lake = tmp.path().join("lake");
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE events (id BIGINT, name TEXT, amount BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'events');
         CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE p WITH (checkpoint_interval = '200ms') AS INSERT INTO lake SELECT id, name FROM events;",
        lake.display(),
        b = broker.bootstrap
    ))
    .await
    .unwrap();
    // 1% malformed: counted, kept with topic/partition/offset, every good record lands.
    poll(Duration::from_secs(120), "first records", || async {
        (counters(&c, "p").await.0 >= 10_000).then_some(())
    })
    .await;
    poll(Duration::from_secs(60), "first commit", || async {
        (counters(&c, "p").await.1 >= 9_900).then_some(())
    })
    .await;
    assert_eq!(counters(&c, "p").await, (10_000, 9_900, 100));
    // Bad records show once their epoch is committed.
    let errors = poll(Duration::from_secs(30), "the bad records", || async {
        let rows = query(
            &c,
            "SELECT position, raw FROM tributary.errors WHERE pipeline = 'p' ORDER BY position",
        )
        .await;
        (rows.len() >= 100).then_some(rows)
    })
    .await;
    assert_eq!(errors.len(), 100);
    assert!(errors
        .iter()
        .all(|r| r[0].as_deref().unwrap().starts_with("events/")
            && r[1].as_deref().unwrap().contains("broken")));

    // Produced while stopped, arrives after START.
    c.batch_execute("STOP PIPELINE p").await.unwrap();
    assert_eq!(
        scalar(&c, "SELECT state FROM tributary.pipelines WHERE name = 'p'").await,
        "stopped"
    );
    broker.produce("events", 10_000, 5_000, 0);
    assert_eq!(scalar(&c, "SELECT count(*) FROM lake").await, "9900");
    c.batch_execute("START PIPELINE p").await.unwrap();
    poll(
        Duration::from_secs(120),
        "records produced while stopped",
        || async { (scalar(&c, "SELECT count(*) FROM lake").await == "14900").then_some(()) },
    )
    .await;
    assert_eq!(delta_count_distinct(&lake), (14_900, 14_900));

    // mode = 'batch' reads up to the offsets present at start, then completes.
    c.batch_execute(&format!(
        "CREATE SINK copy WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE once WITH (mode = 'batch') AS INSERT INTO copy SELECT id FROM events;",
        tmp.path().join("copy").display()
    ))
    .await
    .unwrap();
    wait_state(&c, "once", "completed").await;
    assert_eq!(scalar(&c, "SELECT count(*) FROM copy").await, "14900");

    // The Kafka sink: rows as JSON messages keyed by a column, read back by an independent consumer.
    broker.create_topic("out", 3);
    c.batch_execute(&format!(
        "CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'out', key = 'id');
         CREATE PIPELINE to_kafka WITH (mode = 'batch') AS INSERT INTO out SELECT id, upper(name) AS name FROM events WHERE id < 1000;",
        broker.bootstrap
    ))
    .await
    .unwrap();
    wait_state(&c, "to_kafka", "completed").await;
    let py = r#"
import sys, json
from confluent_kafka import Consumer
c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'check', 'auto.offset.reset': 'earliest'})
c.subscribe(['out'])
seen, keyed = {}, 0
empty = 0
while empty < 20:
    m = c.poll(0.5)
    if m is None:
        empty += 1
        continue
    if m.error():
        continue
    empty = 0
    v = json.loads(m.value())
    seen[v['id']] = v['name']
    keyed += m.key().decode() == str(v['id'])
c.close()
print(len(seen), keyed, seen.get(7))
"#;
    // ids < 1000 minus the 10 malformed ones (multiples of 100).
    assert_eq!(run_python(py, &[&broker.bootstrap]), "990 990 N7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_watermark_per_partition_and_idle_partitions() {
    let broker = Broker::start().await;
    broker.create_topic("clicks", 2);
    // Partition 0 reaches 10:00:35; partition 1 only 10:00:05.
    broker.produce_times(
        "clicks",
        0,
        &(0..36).map(|s| (s, s as u32)).collect::<Vec<_>>(),
    );
    broker.produce_times(
        "clicks",
        1,
        &(100..106)
            .map(|i| (i, (i - 100) as u32))
            .collect::<Vec<_>>(),
    );
    let (tmp, server) = start_fresh().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE clicks (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
           WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'clicks');
         CREATE SINK per10 WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE p WITH (idle_timeout = '10s', checkpoint_interval = '200ms') AS INSERT INTO per10
           SELECT window_start, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND)
           GROUP BY window_start, window_end;",
        broker.bootstrap,
        tmp.path().join("out").display()
    ))
    .await
    .unwrap();
    let split_watermarks = "SELECT partition, watermark, idle FROM tributary.source_lag WHERE pipeline = 'p' ORDER BY partition";
    // Each partition's watermark follows its own rows; the pipeline's is the least of them.
    let rows = poll(Duration::from_secs(60), "both partitions read", || async {
        let rows = query_lines(&c, split_watermarks).await;
        (rows.len() == 2 && rows.iter().all(|r| r.contains("2026"))).then_some(rows)
    })
    .await;
    assert_eq!(
        rows,
        vec!["0 2026-05-01 10:00:35+00 f", "1 2026-05-01 10:00:05+00 f"]
    );
    assert_eq!(
        scalar(
            &c,
            "SELECT watermark FROM tributary.pipelines WHERE name = 'p'"
        )
        .await,
        "2026-05-01 10:00:05+00"
    );
    assert_eq!(scalar(&c, "SELECT count(*) FROM per10").await, "0");
    // Partition 1 gives nothing for 10 s: it stops holding the watermark back, and the windows
    // partition 0 has passed close, with partition 1's rows in the first.
    poll(
        Duration::from_secs(60),
        "windows closed by partition 0",
        || async { (scalar(&c, "SELECT count(*) FROM per10").await == "3").then_some(()) },
    )
    .await;
    let windows = query_lines(
        &c,
        "SELECT date_part('second', window_start)::BIGINT, n FROM per10 ORDER BY 1",
    )
    .await;
    assert_eq!(windows, vec!["0 16", "10 10", "20 10"]);
    assert_eq!(
        query_lines(&c, split_watermarks).await[1],
        "1 2026-05-01 10:00:05+00 t"
    );
    assert_eq!(
        scalar(
            &c,
            "SELECT watermark FROM tributary.pipelines WHERE name = 'p'"
        )
        .await,
        "2026-05-01 10:00:35+00"
    );
    // Partition 1 comes back behind the watermark: late, and active again.
    broker.produce_times("clicks", 1, &[(200, 2), (201, 36)]);
    poll(Duration::from_secs(60), "partition 1 back", || async {
        let rows = query_lines(&c, split_watermarks).await;
        (rows[1] == "1 2026-05-01 10:00:36+00 f").then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &c,
            "SELECT rows_late FROM tributary.pipelines WHERE name = 'p'"
        )
        .await,
        "1"
    );
    // The partitions' watermarks are checkpointed: after a restart partition 0, which gives
    // nothing new, still has its own.
    c.batch_execute("STOP PIPELINE p").await.unwrap();
    c.batch_execute("START PIPELINE p").await.unwrap();
    broker.produce_times("clicks", 1, &[(202, 37)]);
    let rows = poll(
        Duration::from_secs(60),
        "partitions after the restart",
        || async {
            let rows = query_lines(&c, split_watermarks).await;
            (rows.len() == 2 && rows[1].contains("10:00:37")).then_some(rows)
        },
    )
    .await;
    assert_eq!(rows[0], "0 2026-05-01 10:00:35+00 f");
    assert_eq!(
        scalar(
            &c,
            "SELECT watermark FROM tributary.pipelines WHERE name = 'p'"
        )
        .await,
        "2026-05-01 10:00:36+00"
    );
}

/// Windows over a UNION ALL of two topics: each topic's partitions have their watermarks in
/// `tributary.source_lag`, the pipeline's is the least of the topics', and a restart keeps the
/// topic that is ahead from deciding alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_windows_over_two_topics_wait_for_the_one_behind() {
    let broker = Broker::start().await;
    broker.create_topic("web", 1);
    broker.create_topic("app", 1);
    // web reaches 10:00:35; app only 10:00:15.
    broker.produce_times(
        "web",
        0,
        &(0..36).map(|s| (s, s as u32)).collect::<Vec<_>>(),
    );
    broker.produce_times(
        "app",
        0,
        &(100..116)
            .map(|i| (i, (i - 100) as u32))
            .collect::<Vec<_>>(),
    );
    let (tmp, server) = start_fresh().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE web (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
           WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'web');
         CREATE SOURCE app (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
           WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'app');
         CREATE SINK per10 WITH (connector = 'parquet', path = '{out}');
         CREATE PIPELINE p WITH (idle_timeout = '1h', checkpoint_interval = '200ms') AS INSERT INTO per10
           SELECT window_start, count(*) AS n
           FROM (SELECT * FROM TUMBLE(web, ts, INTERVAL '10' SECOND)
                 UNION ALL SELECT * FROM TUMBLE(app, ts, INTERVAL '10' SECOND)) w
           GROUP BY window_start, window_end;",
        b = broker.bootstrap,
        out = tmp.path().join("out").display()
    ))
    .await
    .unwrap();
    let marks = "SELECT source, partition, watermark FROM tributary.source_lag WHERE pipeline = 'p' ORDER BY source";
    let watermark = "SELECT watermark FROM tributary.pipelines WHERE name = 'p'";
    let rows = poll(Duration::from_secs(60), "both topics read", || async {
        let rows = query_lines(&c, marks).await;
        (rows.len() == 2 && rows.iter().all(|r| r.contains("2026"))).then_some(rows)
    })
    .await;
    assert_eq!(
        rows,
        vec![
            "app 0 2026-05-01 10:00:15+00",
            "web 0 2026-05-01 10:00:35+00"
        ]
    );
    assert_eq!(scalar(&c, watermark).await, "2026-05-01 10:00:15+00");
    // Only the first window has closed, with both topics' rows in it. (Until the sink has a
    // file, its table has no columns to query.)
    let windows = "SELECT date_part('second', window_start)::BIGINT, n FROM per10 ORDER BY 1";
    poll(Duration::from_secs(60), "the first window", || async {
        let rows = c.simple_query(windows).await.ok()?;
        let n = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        (n == 1 && query_lines(&c, windows).await == ["0 20"]).then_some(())
    })
    .await;
    // Restarted: app, still behind, holds the watermark where it was.
    c.batch_execute("STOP PIPELINE p; START PIPELINE p")
        .await
        .unwrap();
    broker.produce_times("web", 0, &[(36, 36)]);
    poll(Duration::from_secs(60), "web after the restart", || async {
        let rows = query_lines(&c, marks).await;
        (rows.len() == 2 && rows[1].contains("10:00:36")).then_some(())
    })
    .await;
    assert_eq!(scalar(&c, watermark).await, "2026-05-01 10:00:15+00");
    assert_eq!(query_lines(&c, windows).await, ["0 20"]);
    // app catches up (to 10:00:40): the windows that end by web's 10:00:36 close, with app's
    // rows in them; none was late.
    broker.produce_times("app", 0, &[(116, 31), (117, 40)]);
    poll(
        Duration::from_secs(60),
        "the windows app held open",
        || async { (query_lines(&c, windows).await == ["0 20", "10 16", "20 10"]).then_some(()) },
    )
    .await;
    assert_eq!(scalar(&c, watermark).await, "2026-05-01 10:00:36+00");
    assert_eq!(
        scalar(
            &c,
            "SELECT rows_late FROM tributary.pipelines WHERE name = 'p'"
        )
        .await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_upsert_sink_takes_updating_aggregates_and_deletes() {
    let broker = Broker::start().await;
    broker.create_topic("events", 2);
    broker.create_topic("totals", 3);
    broker.produce("events", 0, 20_000, 0);
    let (tmp, server) = start_fresh().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE events (id BIGINT, name TEXT, amount BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'events');
         CREATE SINK totals WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'totals', mode = 'upsert');
         CREATE PIPELINE agg WITH (checkpoint_interval = '200ms') AS INSERT INTO totals
           SELECT name, count(*) AS n, sum(amount) AS total FROM events GROUP BY name;",
        b = broker.bootstrap
    ))
    .await
    .unwrap();
    // A checkpoint holding `rows` rows is committed (tributary.commits lists it once the sink's
    // transaction is committed): their changes are visible.
    let emitted = |rows: u64| {
        let c = &c;
        async move {
            poll(Duration::from_secs(60), "the updates", || async {
                let done = scalar(
                    c,
                    "SELECT max(rows_in) FROM tributary.commits WHERE pipeline = 'agg'",
                )
                .await;
                (done == rows.to_string()).then_some(())
            })
            .await;
        }
    };
    emitted(20_000).await;
    // More rows: every group changes again.
    broker.produce("events", 20_000, 10_000, 0);
    emitted(30_000).await;
    // The compacted view (the last message per key) equals the aggregate over all 30 000 rows;
    // the key is the GROUP BY column as a JSON object.
    let mut want = std::collections::BTreeMap::new();
    for i in 0..30_000u64 {
        let e = want.entry(format!("n{}", i % 1000)).or_insert((0u64, 0u64));
        e.0 += 1;
        e.1 += i % 997;
    }
    let messages = broker.consume_all("totals");
    assert!(messages.len() >= 2_000, "{} messages", messages.len());
    let mut latest = std::collections::BTreeMap::new();
    for m in &messages {
        let (key, value) = m.split_once(' ').unwrap();
        latest.insert(key.to_string(), value.to_string());
    }
    assert_eq!(latest.len(), 1000);
    for (name, (n, total)) in &want {
        assert_eq!(
            latest[&format!("{{\"name\":\"{name}\"}}")],
            format!("{{\"name\":\"{name}\",\"n\":{n},\"total\":{total}}}")
        );
    }

    // Changes with deletes (an `_op` column): a delete is a tombstone, the key with no value.
    broker.create_topic("changes", 1);
    broker.create_topic("table", 1);
    broker.produce_values(
        "changes",
        0,
        &[
            r#"{"id": 1, "name": "a"}"#,
            r#"{"id": 2, "name": "b"}"#,
            r#"{"id": 1, "_op": "delete"}"#,
        ],
    );
    c.batch_execute(&format!(
        "CREATE SOURCE changes (id BIGINT, name TEXT, _op TEXT) WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'changes');
         CREATE SINK tbl WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'table', mode = 'upsert', key = 'id');
         CREATE PIPELINE mirror WITH (mode = 'batch') AS INSERT INTO tbl SELECT id, name, _op FROM changes;",
        b = broker.bootstrap
    ))
    .await
    .unwrap();
    wait_state(&c, "mirror", "completed").await;
    assert_eq!(
        broker.consume_all("table"),
        vec![
            r#"{"id":1} {"id":1,"name":"a"}"#,
            r#"{"id":2} {"id":2,"name":"b"}"#,
            r#"{"id":1} null"#,
        ]
    );

    // Read back as upsert topics (key = primary key, a tombstone deletes): into Delta upsert
    // sinks, which then hold what the topics' compacted views hold.
    let (totals_lake, table_lake) = (tmp.path().join("totals"), tmp.path().join("table"));
    c.batch_execute(&format!(
        "CREATE SOURCE totals_topic (name TEXT, n BIGINT, total BIGINT, PRIMARY KEY (name)) WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'totals', mode = 'upsert');
         CREATE SINK totals_lake WITH (connector = 'delta', path = '{}', mode = 'upsert');
         CREATE PIPELINE totals_back WITH (mode = 'batch') AS INSERT INTO totals_lake SELECT * FROM totals_topic;
         CREATE SOURCE table_topic (id BIGINT, name TEXT, PRIMARY KEY (id)) WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'table', mode = 'upsert');
         CREATE SINK table_lake WITH (connector = 'delta', path = '{}', mode = 'upsert');
         CREATE PIPELINE table_back WITH (mode = 'batch') AS INSERT INTO table_lake SELECT * FROM table_topic;",
        totals_lake.display(),
        table_lake.display(),
        b = broker.bootstrap
    ))
    .await
    .unwrap();
    wait_state(&c, "totals_back", "completed").await;
    wait_state(&c, "table_back", "completed").await;
    assert_eq!(
        query_lines(&c, "SELECT * FROM table_lake").await,
        vec!["2 b"]
    );
    let back = query_lines(&c, "SELECT name, n, total FROM totals_lake ORDER BY name").await;
    let want: Vec<String> = want
        .iter()
        .map(|(name, (n, total))| format!("{name} {n} {total}"))
        .collect();
    assert_eq!(back, want);
    // A source in upsert mode needs the key its messages are keyed by.
    let e = error_message(
        &c,
        &format!(
            "CREATE SOURCE nokey (id BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'table', mode = 'upsert')",
            broker.bootstrap
        ),
    )
    .await;
    assert!(e.contains("PRIMARY KEY"), "{e}");
}
