//! Avro through a real schema registry (Apicurio Registry's Confluent-compatible API, built by
//! tests/registry/install.sh) and Apache Kafka, with Confluent's own Python serializer and
//! deserializer on the other side: a source whose columns come from the registry and whose
//! messages were written with two versions of their schema, a sink that registers its schema,
//! messages the registry cannot explain kept as bad records, and the registry's refusals.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::kafka::Broker;

/// A schema registry on a free port, its log in a temporary directory; killed when dropped.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// The Confluent-compatible API's base URL.
    pub url: String,
}

impl Registry {
    pub async fn start() -> Registry {
        let home = std::env::var("SCHEMA_REGISTRY_HOME").unwrap_or_else(|_| {
            format!(
                "{}/.cache/tributary/apicurio-registry-2.4.2",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        assert!(
            std::path::Path::new(&home).join(".complete").exists(),
            "no schema registry in {home}: tests/run.sh builds it (bash tests/registry/install.sh {home})"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut child = Command::new("java")
            .args([
                "-Xmx256m",
                "-Dquarkus.http.host=127.0.0.1",
                &format!("-Dquarkus.http.port={port}"),
                "-jar",
                &format!("{home}/registry-runner.jar"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the schema registry (java)");
        let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
        let deadline = Instant::now() + Duration::from_secs(120);
        let probe = r#"
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1] + '/subjects', timeout=2).status)
except Exception:
    print('down')
"#;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                && run_python(probe, &[&url]) == "200"
            {
                break;
            }
            let log =
                || std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the schema registry exited ({status}): {}", log());
            }
            assert!(
                Instant::now() < deadline,
                "the schema registry did not start: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Registry { child, dir, url }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_showing_log(
            &mut self.child,
            &self.dir.path().join("registry.log"),
            "schema registry",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_through_a_schema_registry_both_ways() {
    let (broker, registry) = tokio::join!(Broker::start(), Registry::start());
    broker.create_topic("orders_avro", 2);
    broker.create_topic("orders_out", 2);
    // 600 orders in the first version of their schema, 400 in the second (a new nullable
    // field), through Confluent's serializer (which registers each version under
    // orders_avro-value); then a message that is not in the wire format and one naming a schema
    // id the registry lacks.
    let py = r#"
import sys, datetime
from confluent_kafka import Producer
from confluent_kafka.serialization import SerializationContext, MessageField
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
V1 = '''{"type": "record", "name": "order", "namespace": "shop", "fields": [
  {"name": "id", "type": "long"},
  {"name": "customer", "type": "string"},
  {"name": "amount", "type": "double"},
  {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}'''
V2 = V1.replace(']}', ', {"name": "coupon", "type": ["null", "string"], "default": null}]}')
reg = SchemaRegistryClient({'url': sys.argv[2]})
p = Producer({'bootstrap.servers': sys.argv[1]})
ctx = SerializationContext('orders_avro', MessageField.VALUE)
base = datetime.datetime(2026, 5, 1, 10, 0, 0, tzinfo=datetime.timezone.utc)
for version, schema, ids in ((1, V1, range(600)), (2, V2, range(600, 1000))):
    ser = AvroSerializer(reg, schema)
    for i in ids:
        order = {'id': i, 'customer': 'c%d' % (i % 10), 'amount': i / 4, 'at': base + datetime.timedelta(seconds=i)}
        if version == 2:
            order['coupon'] = 'SPRING' if i % 2 == 0 else None
        p.produce('orders_avro', key=str(i), value=ser(order, ctx))
p.produce('orders_avro', key='json', value=b'{"id": 1}')
p.produce('orders_avro', key='unknown', value=b'\x00\x00\x00\x27\x0f\x02')
assert p.flush(60) == 0
print(reg.get_latest_version('orders_avro-value').version)
"#;
    assert_eq!(run_python(py, &[&broker.bootstrap, &registry.url]), "2");

    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    // No columns declared: they are the latest schema's fields.
    c.batch_execute(&format!(
        "CREATE SOURCE orders WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'orders_avro',
                                    format = 'avro', schema_registry_url = '{r}');
         CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'orders_out', key = 'id',
                               format = 'avro', schema_registry_url = '{r}');
         CREATE PIPELINE relay WITH (mode = 'batch') AS INSERT INTO out
           SELECT id, upper(customer) AS customer, amount, at, coalesce(coupon, 'none') AS coupon FROM orders;",
        b = broker.bootstrap,
        r = registry.url
    ))
    .await
    .unwrap();
    let columns = query_lines(
        &c,
        "SELECT column_name || ' ' || data_type || ' ' || is_nullable FROM information_schema.columns
          WHERE table_name = 'orders' ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(
        columns,
        [
            "id bigint NO",
            "customer text NO",
            "amount double precision NO",
            "at timestamp without time zone NO",
            "coupon text YES"
        ],
        "the source's columns from the registry's latest schema"
    );
    wait_state(&c, "relay", "completed").await;
    assert_eq!(counters(&c, "relay").await, (1002, 1000, 2));
    let errors = query_lines(
        &c,
        "SELECT error FROM tributary.errors WHERE pipeline = 'relay' ORDER BY position",
    )
    .await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("wire format"))
            && errors.iter().any(|e| e.contains("schema id 9999")),
        "{errors:?}"
    );

    // Confluent's deserializer reads every message with the schema the sink registered under
    // orders_out-value; messages written with the first version read coupon as null.
    let py = r#"
import sys, json
from confluent_kafka import Consumer
from confluent_kafka.serialization import SerializationContext, MessageField
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
reg = SchemaRegistryClient({'url': sys.argv[2]})
latest = reg.get_latest_version('orders_out-value')
fields = [f['name'] for f in json.loads(latest.schema.schema_str)['fields']]
de = AvroDeserializer(reg)
ctx = SerializationContext('orders_out', MessageField.VALUE)
c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'check', 'auto.offset.reset': 'earliest', 'isolation.level': 'read_committed'})
c.subscribe(['orders_out'])
rows, empty, ids = {}, 0, set()
while empty < 10:
    m = c.poll(0.5)
    if m is None:
        empty += 1
        continue
    if m.error():
        continue
    empty = 0
    ids.add(int.from_bytes(m.value()[1:5], 'big'))
    r = de(m.value(), ctx)
    assert m.key().decode() == str(r['id'])
    rows[r['id']] = r
c.close()
print(len(rows), ids == {latest.schema_id}, ','.join(fields))
for i in (0, 599, 600, 601, 999):
    r = rows[i]
    print(r['id'], r['customer'], r['amount'], r['at'].isoformat(), r['coupon'])
"#;
    assert_eq!(
        run_python(py, &[&broker.bootstrap, &registry.url]),
        "1000 True id,customer,amount,at,coupon
0 C0 0.0 2026-05-01T10:00:00+00:00 none
599 C9 149.75 2026-05-01T10:09:59+00:00 none
600 C0 150.0 2026-05-01T10:10:00+00:00 SPRING
601 C1 150.25 2026-05-01T10:10:01+00:00 none
999 C9 249.75 2026-05-01T10:16:39+00:00 none"
    );

    // A schema the subject's compatibility rule refuses fails the pipeline at start, with the
    // registry's words; nothing is written.
    let py = r#"
import sys, json, urllib.request
req = urllib.request.Request(sys.argv[1] + '/config/orders_out-value', method='PUT',
    data=json.dumps({'compatibility': 'BACKWARD'}).encode(),
    headers={'Content-Type': 'application/vnd.schemaregistry.v1+json'})
print(json.loads(urllib.request.urlopen(req).read())['compatibility'])
"#;
    assert_eq!(run_python(py, &[&registry.url]), "BACKWARD");
    c.batch_execute(&format!(
        "CREATE SINK out2 WITH (connector = 'kafka', bootstrap_servers = '{b}', topic = 'orders_out',
                                format = 'avro', schema_registry_url = '{r}',
                                avro_schema = '{{\"type\": \"record\", \"name\": \"o\", \"fields\": [{{\"name\": \"id\", \"type\": \"long\"}}, {{\"name\": \"region\", \"type\": \"string\"}}]}}');
         CREATE PIPELINE relay2 WITH (mode = 'batch') AS INSERT INTO out2 SELECT id, customer AS region FROM orders;",
        b = broker.bootstrap,
        r = registry.url
    ))
    .await
    .unwrap();
    wait_state(&c, "relay2", "failed").await;
    let error = scalar(
        &c,
        "SELECT error FROM tributary.pipelines WHERE name = 'relay2'",
    )
    .await;
    assert!(
        error.contains("registering the sink's Avro schema under orders_out-value")
            && error.contains("ncompatible"),
        "{error}"
    );

    // A registry that is not there is found out at CREATE.
    let e = error_message(
        &c,
        &format!(
            "CREATE SOURCE nowhere WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'orders_avro', format = 'avro', schema_registry_url = 'http://127.0.0.1:{}/')",
            broker.bootstrap,
            free_port()
        ),
    )
    .await;
    assert!(e.contains("reaching the schema registry"), "{e}");
    let e = error_message(
        &c,
        &format!(
            "CREATE SOURCE json_reg (id BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'orders_avro', schema_registry_url = '{}')",
            broker.bootstrap, registry.url
        ),
    )
    .await;
    assert!(e.contains("format = 'avro'"), "{e}");
}
