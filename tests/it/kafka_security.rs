//! Kafka behind its security settings, passed through `properties.*` to librdkafka: SASL/PLAIN
//! with the password a secret, and TLS verified against a test CA, against Apache Kafka.

use crate::harness::*;
use crate::security::test_certificates;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_sasl_with_its_password_in_a_secret() {
    const KAFKA_PASSWORD: &str = "etl-kafka-pa55";
    let broker = crate::kafka::Broker::start_with_sasl(&[("etl", KAFKA_PASSWORD)]).await;
    broker.create_topic("orders_sasl", 2);
    broker.create_topic("orders_sasl_out", 2);
    broker.produce("orders_sasl", 0, 100, 0);
    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    let sasl = |secret: &str| {
        format!(
            "bootstrap_servers = '{}', \"properties.security.protocol\" = 'SASL_PLAINTEXT', \
             \"properties.sasl.mechanism\" = 'PLAIN', \"properties.sasl.username\" = 'etl', \
             \"properties.sasl.password\" = SECRET {secret}",
            broker.sasl_bootstrap
        )
    };
    c.batch_execute(&format!(
        "CREATE SECRET kafka_pw AS '{KAFKA_PASSWORD}';
         CREATE SOURCE orders (id BIGINT, name TEXT, amount BIGINT) WITH (connector = 'kafka', topic = 'orders_sasl', {});
         CREATE SINK out WITH (connector = 'kafka', topic = 'orders_sasl_out', key = 'id', {});
         CREATE PIPELINE relay WITH (mode = 'batch') AS INSERT INTO out SELECT id, name FROM orders;",
        sasl("kafka_pw"),
        sasl("kafka_pw")
    ))
    .await
    .unwrap();
    wait_state(&c, "relay", "completed").await;
    assert_eq!(counters(&c, "relay").await, (100, 100, 0));
    assert_eq!(broker.consume_all("orders_sasl_out").len(), 100);

    // A wrong password: the broker drops the connection, so CREATE fails (librdkafka reports a
    // transport failure, its words), and the error does not repeat the password.
    c.batch_execute("CREATE SECRET wrong_pw AS 'not-the-kafka-password'")
        .await
        .unwrap();
    let e = error_message(
        &c,
        &format!(
            "CREATE SOURCE nope (id BIGINT) WITH (connector = 'kafka', topic = 'orders_sasl', {})",
            sasl("wrong_pw")
        ),
    )
    .await;
    assert!(e.contains("orders_sasl"), "{e}");
    let options = scalar(
        &c,
        "SELECT options FROM tributary.sources WHERE name = 'orders'",
    )
    .await;
    assert!(options.contains("SECRET kafka_pw"), "{options}");
    for (place, text) in [
        ("the error", e),
        ("the log", server.log()),
        ("tributary.sources", options),
    ] {
        assert!(
            !text.contains(KAFKA_PASSWORD) && !text.contains("not-the-kafka-password"),
            "a Kafka password in {place}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_verified_against_its_ca() {
    let certs = tempfile::tempdir().unwrap();
    let [ca, cert, key] = test_certificates(certs.path(), "kafka-ca");
    std::fs::create_dir_all(certs.path().join("other")).unwrap();
    let [other_ca, _, _] = test_certificates(&certs.path().join("other"), "other-ca");
    // Kafka's PEM keystore: the private key (PKCS#8) and the certificate chain in one file.
    let keystore = certs.path().join("keystore.pem");
    std::fs::write(
        &keystore,
        [std::fs::read(&key).unwrap(), std::fs::read(&cert).unwrap()].concat(),
    )
    .unwrap();
    let broker = crate::kafka::Broker::start_with_ssl(&keystore).await;
    broker.create_topic("orders_tls", 2);
    broker.create_topic("orders_tls_out", 2);
    broker.produce("orders_tls", 0, 100, 0);
    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    let tls = |ca: &std::path::Path| {
        format!(
            "bootstrap_servers = '{}', \"properties.security.protocol\" = 'SSL', \
             \"properties.ssl.ca.location\" = '{}'",
            broker.ssl_bootstrap,
            ca.display()
        )
    };
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, name TEXT, amount BIGINT) WITH (connector = 'kafka', topic = 'orders_tls', {});
         CREATE SINK out WITH (connector = 'kafka', topic = 'orders_tls_out', key = 'id', {});
         CREATE PIPELINE relay WITH (mode = 'batch') AS INSERT INTO out SELECT id, name FROM orders;",
        tls(&ca),
        tls(&ca)
    ))
    .await
    .unwrap();
    wait_state(&c, "relay", "completed").await;
    assert_eq!(counters(&c, "relay").await, (100, 100, 0));
    assert_eq!(broker.consume_all("orders_tls_out").len(), 100);

    // A CA that did not sign the broker's certificate, and plain text to the TLS listener:
    // refused at CREATE, naming the topic.
    for (what, options) in [
        ("an untrusted certificate", tls(&other_ca)),
        (
            "plain text to the TLS listener",
            format!("bootstrap_servers = '{}'", broker.ssl_bootstrap),
        ),
    ] {
        let e = error_message(
            &c,
            &format!(
                "CREATE SOURCE nope (id BIGINT) WITH (connector = 'kafka', topic = 'orders_tls', {options})"
            ),
        )
        .await;
        assert!(e.contains("orders_tls"), "{what}: {e}");
    }
}
