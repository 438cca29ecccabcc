//! TLS from Tributary to PostgreSQL: a CDC source and a Postgres sink over verified TLS to a
//! server that rejects the pipeline user's plain-text connections, and the ways it is refused.

use crate::cdc::{setup_source_db, PgCluster};
use crate::harness::*;
use crate::security::test_certificates;

const TLS_PASSWORD: &str = "tls-only-pw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_and_sink_reach_postgres_over_verified_tls_only() {
    let pg = PgCluster::start("logical");
    let shop = setup_source_db(&pg, 100).await;
    let admin = pg.client("postgres").await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE pipeline LOGIN SUPERUSER PASSWORD '{TLS_PASSWORD}'"
        ))
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let [ca, cert, key] = test_certificates(certs.path(), "pg-ca");
    let other = tempfile::tempdir().unwrap();
    let [other_ca, _, _] = test_certificates(other.path(), "other-ca");
    pg.enable_tls(&cert, &key, "pipeline");
    // The test's own sessions (as postgres) stay plain text; the pipeline user's need TLS.
    // The restart closed the sessions opened before.
    drop((shop, admin));
    let shop = pg.client("shop").await;
    let admin = pg.client("postgres").await;
    let warehouse = pg.client("warehouse").await;
    let url = |db: &str, params: &str| {
        format!(
            "postgres://pipeline:{TLS_PASSWORD}@localhost:{}/{db}{params}",
            pg.port
        )
    };
    let verified = format!("?sslmode=verify-full&sslrootcert={}", ca.display());

    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;

    // Refused, each with the reason, before anything runs: plain text (the server's pg_hba
    // rejects it), a certificate from an authority not trusted, TLS asked of a server without it.
    let plain = error_message(
        &c,
        &format!(
            "CREATE SOURCE s WITH (connector = 'postgres-cdc', url = '{}', table = 'customers')",
            url("shop", "?sslmode=disable")
        ),
    )
    .await;
    assert!(plain.contains("no encryption"), "{plain}");
    let untrusted = error_message(
        &c,
        &format!(
            "CREATE SINK k WITH (connector = 'postgres', url = '{}', table = 'public.customers', mode = 'upsert')",
            url(
                "warehouse",
                &format!("?sslmode=verify-full&sslrootcert={}", other_ca.display())
            )
        ),
    )
    .await;
    assert!(
        untrusted.contains("certificate") && !untrusted.contains(TLS_PASSWORD),
        "{untrusted}"
    );
    let bad_mode = error_message(
        &c,
        &format!(
            "CREATE SOURCE s WITH (connector = 'postgres-cdc', url = '{}', table = 'customers')",
            url("shop", "?sslmode=verify-everything")
        ),
    )
    .await;
    assert!(
        bad_mode.contains("sslmode") && !bad_mode.contains(TLS_PASSWORD),
        "{bad_mode}"
    );
    let no_tls_server = PgCluster::start("logical");
    let refused = error_message(
        &c,
        &format!(
            "CREATE SINK k WITH (connector = 'postgres', url = 'postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=require', table = 'public.t')",
            crate::cdc::PASSWORD,
            no_tls_server.port
        ),
    )
    .await;
    assert!(refused.contains("TLS"), "{refused}");
    drop(no_tls_server);

    // Verified TLS both ways: the snapshot, then a change, reach the warehouse.
    c.batch_execute(&format!(
        "CREATE SOURCE customers WITH (connector = 'postgres-cdc', url = '{src}', table = 'customers');
         CREATE SINK wh WITH (connector = 'postgres', url = '{dst}', table = 'public.customers', mode = 'upsert');
         CREATE PIPELINE to_wh WITH (checkpoint_interval = '300ms') AS INSERT INTO wh SELECT * FROM customers;",
        src = url("shop", &verified),
        dst = url("warehouse", &verified),
    ))
    .await
    .unwrap();
    crate::cdc::rename_reaches_the_warehouse(&shop, &warehouse, 100).await;

    // Every session of the pipeline's user is encrypted, the replication stream among them.
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*), count(*) FILTER (WHERE a.backend_type = 'walsender' AND s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'pipeline'",
            &[],
        )
        .await
        .unwrap();
    let (encrypted, all, walsenders): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(
        all >= 2 && encrypted == all && walsenders == 1,
        "{encrypted} of {all} sessions encrypted, {walsenders} walsender"
    );

    // `require` without a root certificate encrypts without verifying, as libpq does.
    c.batch_execute(&format!(
        "CREATE SINK unverified WITH (connector = 'postgres', url = '{}', table = 'public.copy')",
        url("warehouse", "?sslmode=require")
    ))
    .await
    .unwrap();
}
