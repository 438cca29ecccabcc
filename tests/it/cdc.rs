//! Change data capture end to end against a throwaway PostgreSQL cluster (initdb into a temp dir,
//! `wal_level = logical`, a free port): snapshot then stream into a Delta upsert sink (read back
//! by the `deltalake` Python package) and a PostgreSQL upsert sink, under a mixed workload and
//! SIGKILLs; upstream restarts; schema drift; tables without a key; bad credentials; previews and
//! slots that are not the pipeline's own; sink errors that retrying cannot fix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::Rng;
use tokio_postgres::{Client, NoTls};

use crate::harness::*;

pub(crate) const PASSWORD: &str = "pg-secret";

/// A PostgreSQL cluster of our own, stopped and removed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
    if let Ok(b) = std::env::var("PG_BIN") {
        return PathBuf::from(b);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "PostgreSQL server binaries (tests/run.sh installs them) under /usr/lib/postgresql/*/bin",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (the server refuses root).
fn pg_tool(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(tool);
    let out = if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&exe)
            .args(args)
            .output()
    } else {
        Command::new(&exe).args(args).output()
    }
    .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    out
}

impl PgCluster {
    /// initdb, then start with `wal_level` as given.
    pub fn start(wal_level: &str) -> PgCluster {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("tributary-pg")
            .tempdir()
            .unwrap();
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        let out = pg_tool(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = PgCluster {
            dir,
            bin,
            port: free_port(),
        };
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = {wal_level}\n\
             max_replication_slots = 10\nmax_wal_senders = 10\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            cluster.port,
            cluster.dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        cluster.ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    fn ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = pg_tool(&self.bin, "pg_ctl", &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Turns TLS on with this certificate and key, and lets `tls_user` in over TLS only (its
    /// plain-text connections are rejected); other users connect as before. Restarts.
    pub fn enable_tls(&self, cert: &Path, key: &Path, tls_user: &str) {
        let data = self.dir.path().join("data");
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            std::fs::copy(from, data.join(to)).unwrap();
            std::fs::set_permissions(
                data.join(to),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            if is_root() {
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join(to))
                    .status()
                    .unwrap();
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .unwrap();
        let hba = data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!(
                "hostnossl all {tls_user} 127.0.0.1/32 reject\n\
                 hostnossl replication {tls_user} 127.0.0.1/32 reject\n{rules}"
            ),
        )
        .unwrap();
        self.stop();
        self.restart_server();
    }

    pub fn stop(&self) {
        self.ctl(&["stop", "-m", "fast", "-w"]);
    }

    pub fn restart_server(&self) {
        self.ctl(&["start", "-w", "-t", "60"]);
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    pub async fn client(&self, db: &str) -> Client {
        let (c, conn) = tokio_postgres::connect(&self.url(db), NoTls)
            .await
            .expect("connect to test PostgreSQL");
        tokio::spawn(conn);
        c
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = pg_tool(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "stop",
                "-m",
                "immediate",
                "-w",
            ],
        );
    }
}

/// `SELECT count(*) FROM <from>`; `None` while the table does not exist yet.
async fn count(c: &Client, from: &str) -> Option<i64> {
    let row = c
        .query_one(&format!("SELECT count(*) FROM {from}"), &[])
        .await
        .ok()?;
    Some(row.get(0))
}

/// Rows of a table as sorted text tuples, from PostgreSQL.
pub(crate) async fn pg_rows(c: &Client, table: &str) -> Vec<String> {
    let rows = c
        .query(
            &format!(
                "SELECT id::text || '|' || coalesce(name, '~') || '|' || coalesce(balance::text, '~') || '|' ||
                        coalesce((extract(epoch from updated_at) * 1000000)::bigint::text, '~')
                 FROM {table} ORDER BY id"
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// The same tuples from a Delta table, read by the `deltalake` Python package.
pub(crate) fn delta_tuples(path: &Path) -> Vec<String> {
    let script = r#"
import sys, deltalake, pyarrow.compute as pc
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table(columns=['id', 'name', 'balance', 'updated_at']).sort_by('id')
ts = pc.cast(t.column('updated_at'), 'int64').to_pylist()
for (i, n, b), u in zip(zip(t.column('id').to_pylist(), t.column('name').to_pylist(), t.column('balance').to_pylist()), ts):
    print('%s|%s|%s|%s' % (i, '~' if n is None else n, '~' if b is None else b, '~' if u is None else u))
"#;
    run_python(script, &[path.to_str().unwrap()])
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// A mixed workload on `customers`: inserts, updates, deletes, multi-row transactions.
pub(crate) async fn workload(c: Client, rounds: u64, first_new_id: i64) {
    let mut next = first_new_id;
    for r in 0..rounds {
        let k = (r * 7919 % 200_000) as i64 + 1;
        let sql = match r % 5 {
            0 => format!("INSERT INTO customers VALUES ({next}, 'new{next}', {r}.25, now())"),
            1 => format!(
                "UPDATE customers SET balance = balance + 1, name = 'upd{r}' WHERE id = {k}"
            ),
            2 => format!("DELETE FROM customers WHERE id = {k}"),
            3 => format!(
                "BEGIN; INSERT INTO customers VALUES ({next}, 'tx{r}', 1.00, now()); \
                 UPDATE customers SET balance = balance * 2 WHERE id BETWEEN {k} AND {k} + 20; \
                 DELETE FROM customers WHERE id = {k} + 30; COMMIT"
            ),
            _ => format!(
                "UPDATE customers SET updated_at = now(), name = NULL WHERE id % 1000 = {}",
                r % 1000
            ),
        };
        if r % 5 == 0 || r % 5 == 3 {
            next += 1;
        }
        c.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Renames customer 7 in the shop and waits until the warehouse holds its `rows` customers
/// with the change.
pub(crate) async fn rename_reaches_the_warehouse(shop: &Client, warehouse: &Client, rows: i64) {
    shop.batch_execute("UPDATE customers SET name = 'renamed' WHERE id = 7")
        .await
        .unwrap();
    poll(
        Duration::from_secs(120),
        "the change in the warehouse",
        || async {
            // The sink creates the table at its first commit.
            let row = warehouse
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE name = 'renamed') FROM public.customers",
                    &[],
                )
                .await
                .ok()?;
            (row.get::<_, i64>(0) == rows && row.get::<_, i64>(1) == 1).then_some(())
        },
    )
    .await;
}

pub(crate) async fn setup_source_db(pg: &PgCluster, rows: i64) -> Client {
    let admin = pg.client("postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    admin
        .batch_execute("CREATE DATABASE warehouse")
        .await
        .unwrap();
    let c = pg.client("shop").await;
    c.batch_execute(&format!(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, balance numeric(12,2), updated_at timestamptz);
         INSERT INTO customers SELECT g, 'c' || g, (g % 1000) + 0.5, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
         FROM generate_series(1, {rows}) g;
         ANALYZE customers;"
    ))
    .await
    .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_into_delta_and_postgres_exactly_once_across_sigkills() {
    let pg = PgCluster::start("logical");
    const ROWS: i64 = 200_000;
    let shop = setup_source_db(&pg, ROWS).await;
    let warehouse = pg.client("warehouse").await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let lake = tmp.path().join("lake");
    let mut server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE customers_lake WITH (connector = 'postgres-cdc', url = '{url}', table = 'public.customers');
         CREATE SOURCE customers_wh WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK lake WITH (connector = 'delta', path = '{lake}', mode = 'upsert', key = 'id');
         CREATE SINK wh WITH (connector = 'postgres', url = '{wh}', table = 'public.customers', mode = 'upsert');
         CREATE PIPELINE to_lake WITH (checkpoint_interval = '500ms') AS INSERT INTO lake SELECT id, name, balance, updated_at FROM customers_lake;
         CREATE PIPELINE to_wh WITH (checkpoint_interval = '500ms') AS INSERT INTO wh SELECT * FROM customers_wh;",
        url = pg.url("shop"),
        wh = pg.url("warehouse"),
        lake = lake.display()
    ))
    .await
    .unwrap();
    // Columns and key came from upstream; secrets are redacted.
    let schema = scalar(
        &c,
        "SELECT schema FROM tributary.sources WHERE name = 'customers_lake'",
    )
    .await;
    assert!(
        schema.contains("balance") && schema.contains("_op"),
        "{schema}"
    );
    let opts = scalar(
        &c,
        "SELECT options FROM tributary.sources WHERE name = 'customers_lake'",
    )
    .await;
    assert!(!opts.contains(PASSWORD), "{opts}");

    // The workload runs while Tributary is killed three times.
    const ROUNDS: u64 = 3000;
    let mut rng = seeded_rng("cdc_into_delta_and_postgres_exactly_once_across_sigkills");
    let kill_after: Vec<u64> = (0..3).map(|_| rng.random_range(800..3300)).collect();
    let load = tokio::spawn(workload(pg.client("shop").await, ROUNDS, ROWS + 1));
    for ms in kill_after {
        // A random moment to kill at (seeded), not synchronisation.
        tokio::time::sleep(Duration::from_millis(ms)).await;
        server.kill9();
        server = Server::start(&data).await;
    }
    load.await.unwrap();
    let c = server.client().await;
    // Both pipelines resumed and run.
    for p in ["to_lake", "to_wh"] {
        wait_state(&c, p, "running").await;
    }

    // The sinks converge to the source table, row for row.
    let expected = pg_rows(&shop, "customers").await;
    assert!(expected.len() > 190_000, "{}", expected.len());
    poll(
        Duration::from_secs(240),
        "the PostgreSQL sink to equal the source",
        || async {
            let got = pg_rows(&warehouse, "public.customers").await;
            (got == expected).then_some(())
        },
    )
    .await;
    poll(
        Duration::from_secs(240),
        "the Delta sink to equal the source",
        || async {
            // Each read starts a Python reader (about a second): that paces the polling.
            (delta_tuples(&lake) == expected).then_some(())
        },
    )
    .await;
    // No duplicate keys in either sink.
    let dup = scalar(&c, "SELECT count(*) - count(DISTINCT id) FROM lake").await;
    assert_eq!(dup, "0");

    // Lag shows the slot, its confirmed LSN and the server's WAL position.
    let lag = poll(Duration::from_secs(60), "source_lag to catch up", || async {
        let rows = query(
            &c,
            "SELECT partition, confirmed_lsn, latest_lsn, lag, lag_seconds FROM tributary.source_lag WHERE pipeline = 'to_wh'",
        )
        .await;
        let r = rows.first()?.clone();
        (r[0].as_deref() == Some("tributary_customers_wh") && r[1].is_some() && r[4].is_some())
            .then_some(r)
    })
    .await;
    assert!(lag[2].as_deref().unwrap_or("").contains('/'), "{lag:?}");
    let phase = scalar(
        &c,
        "SELECT phase FROM tributary.pipelines WHERE name = 'to_wh'",
    )
    .await;
    assert!(phase.starts_with("streaming"), "{phase}");

    // DROP SOURCE releases the slot (after its pipeline is gone); KEEP SLOT keeps it.
    c.batch_execute("DROP PIPELINE to_wh; DROP SOURCE customers_wh; DROP PIPELINE to_lake; DROP SOURCE customers_lake KEEP SLOT")
        .await
        .unwrap();
    let slots: Vec<String> = shop
        .query(
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slots, vec!["tributary_customers_lake".to_string()]);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_survives_upstream_restart_and_refuses_what_it_cannot_do() {
    let pg = PgCluster::start("logical");
    let shop = setup_source_db(&pg, 1000).await;
    shop.batch_execute("CREATE TABLE events (at timestamptz, what text); INSERT INTO events VALUES (now(), 'first')")
        .await
        .unwrap();
    let warehouse = pg.client("warehouse").await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;

    // Bad credentials and a server without wal_level = logical are refused at CREATE.
    let bad = format!("postgres://postgres:wrong@127.0.0.1:{}/shop", pg.port);
    let err = c
        .batch_execute(&format!(
            "CREATE SOURCE x WITH (connector = 'postgres-cdc', url = '{bad}', table = 'customers')"
        ))
        .await
        .unwrap_err();
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(!msg.contains("wrong"), "password leaked: {msg}");
    let replica = PgCluster::start("replica");
    let err = c
        .batch_execute(&format!(
            "CREATE SOURCE x WITH (connector = 'postgres-cdc', url = '{}', table = 'pg_class')",
            replica.url("postgres")
        ))
        .await
        .unwrap_err();
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("wal_level"), "{msg}");
    drop(replica);

    // A table without a primary key: refused for upsert sinks, fine for append.
    c.batch_execute(&format!(
        "CREATE SOURCE events WITH (connector = 'postgres-cdc', url = '{url}', table = 'events');
         CREATE SINK ev_upsert WITH (connector = 'postgres', url = '{wh}', table = 'events_u', mode = 'upsert');
         CREATE SINK ev_append WITH (connector = 'postgres', url = '{wh}', table = 'events_log');",
        url = pg.url("shop"),
        wh = pg.url("warehouse")
    ))
    .await
    .unwrap();
    let err = c
        .batch_execute("CREATE PIPELINE bad AS INSERT INTO ev_upsert SELECT * FROM events")
        .await
        .unwrap_err();
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("no primary key"), "{msg}");
    c.batch_execute(
        "CREATE PIPELINE ev WITH (checkpoint_interval = '200ms') AS INSERT INTO ev_append SELECT what, _op, _lsn FROM events",
    )
    .await
    .unwrap();
    poll(
        Duration::from_secs(60),
        "the snapshot row in the append sink",
        || async {
            let n = count(&warehouse, "events_log").await?;
            (n == 1).then_some(())
        },
    )
    .await;

    // Upstream restart: the error shows while PostgreSQL is down, then the stream carries on.
    c.batch_execute(&format!(
        "CREATE SOURCE cust WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK wh WITH (connector = 'postgres', url = '{wh}', table = 'customers', mode = 'upsert');
         CREATE PIPELINE p WITH (checkpoint_interval = '200ms') AS INSERT INTO wh SELECT id, name, balance, updated_at FROM cust;",
        url = pg.url("shop"),
        wh = pg.url("warehouse")
    ))
    .await
    .unwrap();
    poll(
        Duration::from_secs(60),
        "the snapshot in the warehouse",
        || async {
            let n = count(&warehouse, "customers").await?;
            (n == 1000).then_some(())
        },
    )
    .await;
    drop(shop);
    drop(warehouse);
    pg.stop();
    poll(
        Duration::from_secs(60),
        "the reconnect error in tributary.pipelines",
        || async {
            let e = scalar(
                &c,
                "SELECT coalesce(error, '') FROM tributary.pipelines WHERE name = 'p'",
            )
            .await;
            e.contains("reconnecting").then_some(())
        },
    )
    .await;
    let state = scalar(&c, "SELECT state FROM tributary.pipelines WHERE name = 'p'").await;
    assert_eq!(state, "running");
    pg.restart_server();
    let shop = pg.client("shop").await;
    let warehouse = pg.client("warehouse").await;
    shop.batch_execute("UPDATE customers SET name = 'after restart' WHERE id <= 10; DELETE FROM customers WHERE id > 990; INSERT INTO events VALUES (now(), 'second')")
        .await
        .unwrap();
    poll(
        Duration::from_secs(120),
        "changes after the restart",
        || async {
            let n = count(&warehouse, "customers WHERE name = 'after restart'").await?;
            let total = count(&warehouse, "customers").await?;
            (n == 10 && total == 990).then_some(())
        },
    )
    .await;
    let e = scalar(
        &c,
        "SELECT coalesce(error, '') FROM tributary.pipelines WHERE name = 'p'",
    )
    .await;
    assert_eq!(e, "");
    poll(
        Duration::from_secs(60),
        "the append sink to log the insert",
        || async {
            let rows = warehouse
                .query("SELECT what, _op FROM events_log ORDER BY _lsn", &[])
                .await
                .ok()?;
            let v: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            (v == vec![
                ("first".into(), "insert".into()),
                ("second".into(), "insert".into()),
            ])
            .then_some(())
        },
    )
    .await;

    // The PostgreSQL sink under a file pipeline: append, and upsert by key (no _op: every row upserts).
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("a.csv"),
        "id,name,amount\n1,a,10\n2,b,20\n1,a2,11\n3,\"tab\there\",30\n",
    )
    .unwrap();
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, name TEXT, amount BIGINT) WITH (connector = 'file', path = '{files}', format = 'csv');
         CREATE SINK orders_log WITH (connector = 'postgres', url = '{wh}', table = 'orders_log');
         CREATE SINK orders_now WITH (connector = 'postgres', url = '{wh}', table = 'orders_now', mode = 'upsert', key = 'id');
         CREATE PIPELINE load_log AS INSERT INTO orders_log SELECT * FROM orders;
         CREATE PIPELINE load_now AS INSERT INTO orders_now SELECT * FROM orders;",
        files = files.display(),
        wh = pg.url("warehouse")
    ))
    .await
    .unwrap();
    wait_state(&c, "load_log", "completed").await;
    wait_state(&c, "load_now", "completed").await;
    let rows = |sql: &'static str| {
        let warehouse = &warehouse;
        async move {
            warehouse
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{}|{}|{}",
                        r.get::<_, i64>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i64>(2)
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        rows("SELECT id, name, amount FROM orders_log ORDER BY id, amount").await,
        vec!["1|a|10", "1|a2|11", "2|b|20", "3|tab\there|30"]
    );
    assert_eq!(
        rows("SELECT id, name, amount FROM orders_now ORDER BY id").await,
        vec!["1|a2|11", "2|b|20", "3|tab\there|30"]
    );
    // A second run of the batch pipeline over a new file applies only the new rows, once.
    std::fs::write(files.join("b.csv"), "id,name,amount\n2,b2,21\n4,d,40\n").unwrap();
    c.batch_execute("START PIPELINE load_now").await.unwrap();
    wait_state(&c, "load_now", "completed").await;
    assert_eq!(
        rows("SELECT id, name, amount FROM orders_now ORDER BY id").await,
        vec!["1|a2|11", "2|b2|21", "3|tab\there|30", "4|d|40"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_schema_drift_reaches_both_sinks_or_stops_the_pipeline() {
    let pg = PgCluster::start("logical");
    let shop = setup_source_db(&pg, 100).await;
    let warehouse = pg.client("warehouse").await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let lake = tmp.path().join("lake");
    let changelog = tmp.path().join("changelog");
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE a WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SOURCE b WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SOURCE strict WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers', on_schema_change = 'fail');
         CREATE SOURCE d WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK changelog WITH (connector = 'delta', path = '{changelog}');
         CREATE SINK wh WITH (connector = 'postgres', url = '{wh}', table = 'customers_all', mode = 'upsert');
         CREATE SINK lake WITH (connector = 'delta', path = '{lake}', mode = 'upsert');
         CREATE SINK strict_wh WITH (connector = 'postgres', url = '{wh}', table = 'customers_strict', mode = 'upsert');
         CREATE PIPELINE pa WITH (checkpoint_interval = '200ms') AS INSERT INTO wh SELECT * FROM a;
         CREATE PIPELINE pb WITH (checkpoint_interval = '200ms') AS INSERT INTO lake SELECT * FROM b;
         CREATE PIPELINE ps WITH (checkpoint_interval = '200ms') AS INSERT INTO strict_wh SELECT id, name FROM strict;
         CREATE PIPELINE pd WITH (checkpoint_interval = '200ms') AS INSERT INTO changelog SELECT * FROM d;",
        url = pg.url("shop"),
        wh = pg.url("warehouse"),
        lake = lake.display(),
        changelog = changelog.display()
    ))
    .await
    .unwrap();
    poll(Duration::from_secs(60), "the snapshots", || async {
        let n = count(&warehouse, "customers_all").await?;
        let m = count(&warehouse, "customers_strict").await?;
        (n == 100 && m == 100).then_some(())
    })
    .await;
    shop.batch_execute(
        "ALTER TABLE customers ADD COLUMN tier text; UPDATE customers SET tier = 'gold' WHERE id <= 5;          INSERT INTO customers VALUES (1000, 'late', 1.5, now(), 'silver')",
    )
    .await
    .unwrap();
    poll(
        Duration::from_secs(90),
        "the new column in the PostgreSQL sink",
        || async {
            let rows = warehouse
                .query(
                    "SELECT id, tier FROM customers_all WHERE tier IS NOT NULL ORDER BY id",
                    &[],
                )
                .await
                .ok()?;
            let v: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            (v.len() == 6 && v[5] == (1000, "silver".to_string())).then_some(())
        },
    )
    .await;
    poll(Duration::from_secs(90), "the new column in the Delta sink", || async {
        let out = run_python(
            "import sys, deltalake\nt = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()\nprint(t.num_rows, sorted(x for x in t.column('tier').to_pylist() if x) if 'tier' in t.column_names else None)",
            &[lake.to_str().unwrap()],
        );
        (out == "101 ['gold', 'gold', 'gold', 'gold', 'gold', 'silver']").then_some(())
    })
    .await;
    // An append Delta sink gains the column too: earlier rows read NULL in it.
    poll(Duration::from_secs(90), "the new column in the append Delta sink", || async {
        let out = run_python(
            "import sys, deltalake\nt = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()\nprint(t.num_rows, sorted(x for x in t.column('tier').to_pylist() if x) if 'tier' in t.column_names else None)",
            &[changelog.to_str().unwrap()],
        );
        (out == "106 ['gold', 'gold', 'gold', 'gold', 'gold', 'silver']").then_some(())
    })
    .await;
    // on_schema_change = 'fail' stops its pipeline with an error naming the column.
    wait_state(&c, "ps", "failed").await;
    let e = scalar(
        &c,
        "SELECT error FROM tributary.pipelines WHERE name = 'ps'",
    )
    .await;
    assert!(
        e.contains("\"tier\"") && e.contains("on_schema_change"),
        "{e}"
    );
    // A dropped column the pipelines read stops them, naming it.
    shop.batch_execute(
        "ALTER TABLE customers DROP COLUMN name; UPDATE customers SET balance = 0 WHERE id = 1",
    )
    .await
    .unwrap();
    wait_state(&c, "pa", "failed").await;
    let e = scalar(
        &c,
        "SELECT error FROM tributary.pipelines WHERE name = 'pa'",
    )
    .await;
    assert!(e.contains("\"name\"") && e.contains("dropped"), "{e}");

    // A column type with no Arrow counterpart arrives as text; a retyped column stops the pipeline.
    shop.batch_execute(
        "CREATE TABLE shapes (id int PRIMARY KEY, at point, tags text[]); INSERT INTO shapes VALUES (1, '(1,2)', '{a,b}')",
    )
    .await
    .unwrap();
    c.batch_execute(&format!(
        "CREATE SOURCE shapes WITH (connector = 'postgres-cdc', url = '{url}', table = 'shapes');
         CREATE SINK shapes_wh WITH (connector = 'postgres', url = '{wh}', table = 'shapes', mode = 'upsert');
         CREATE PIPELINE psh WITH (checkpoint_interval = '200ms') AS INSERT INTO shapes_wh SELECT id, at, tags FROM shapes;",
        url = pg.url("shop"),
        wh = pg.url("warehouse")
    ))
    .await
    .unwrap();
    let schema = scalar(
        &c,
        "SELECT schema FROM tributary.sources WHERE name = 'shapes'",
    )
    .await;
    assert!(
        schema.contains("at TEXT") || schema.contains("at Utf8"),
        "{schema}"
    );
    poll(
        Duration::from_secs(60),
        "the point and array as text",
        || async {
            let r = warehouse
                .query_opt("SELECT at, tags FROM shapes WHERE id = 1", &[])
                .await
                .ok()??;
            (r.get::<_, String>(0) == "(1,2)" && r.get::<_, String>(1) == "{a,b}").then_some(())
        },
    )
    .await;
    shop.batch_execute("ALTER TABLE shapes ALTER COLUMN id TYPE bigint; INSERT INTO shapes VALUES (2, '(0,0)', '{}')")
        .await
        .unwrap();
    wait_state(&c, "psh", "failed").await;
    let e = scalar(
        &c,
        "SELECT error FROM tributary.pipelines WHERE name = 'psh'",
    )
    .await;
    assert!(e.contains("\"id\"") && e.contains("changed type"), "{e}");
}

/// The slot's confirmed LSN upstream, `None` when the slot does not exist.
async fn slot_confirmed(c: &Client, slot: &str) -> Option<String> {
    c.query_opt(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

async fn error_of(c: &tokio_postgres::Client, pipeline: &str) -> String {
    scalar(
        c,
        &format!("SELECT coalesce(error, '') FROM tributary.pipelines WHERE name = '{pipeline}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_previews_and_foreign_slots_lose_nothing() {
    let pg = PgCluster::start("logical");
    let shop = setup_source_db(&pg, 100).await;
    let warehouse = pg.client("warehouse").await;
    let (tmp, server) = start_fresh().await;
    let lake = tmp.path().join("lake");
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE cust WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK lake WITH (connector = 'delta', path = '{lake}', mode = 'upsert', key = 'id');
         CREATE PIPELINE p WITH (checkpoint_interval = '200ms') AS INSERT INTO lake SELECT id, name, _op FROM cust;",
        url = pg.url("shop"),
        lake = lake.display()
    ))
    .await
    .unwrap();
    let lake_count = || async { scalar(&c, "SELECT count(*) FROM lake").await };
    poll(
        Duration::from_secs(60),
        "the snapshot in the lake",
        || async { (lake_count().await == "100").then_some(()) },
    )
    .await;

    // A second pipeline on the source is refused at CREATE, naming the one that holds it.
    c.batch_execute(&format!(
        "CREATE SINK lake2 WITH (connector = 'delta', path = '{}')",
        tmp.path().join("lake2").display()
    ))
    .await
    .unwrap();
    let err = c
        .batch_execute("CREATE PIPELINE p2 AS INSERT INTO lake2 SELECT id FROM cust")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000", "{}", db.message());
    assert!(db.message().contains("\"p\""), "{}", db.message());

    // Stop; insert; preview; insert; start: both batches of inserts reach the sink, and the
    // preview neither moved nor replaced the slot.
    c.batch_execute("STOP PIPELINE p").await.unwrap();
    wait_state(&c, "p", "stopped").await;
    shop.batch_execute(
        "INSERT INTO customers SELECT g, 'first' || g, 1, now() FROM generate_series(101, 150) g",
    )
    .await
    .unwrap();
    let before = slot_confirmed(&shop, "tributary_cust").await;
    assert!(before.is_some());
    let preview = query(&c, "SELECT id, name FROM cust LIMIT 5").await;
    assert_eq!(preview.len(), 5, "{preview:?}");
    let newest = query(&c, "SELECT id FROM cust WHERE id > 140 LIMIT 100").await;
    assert_eq!(
        newest.len(),
        10,
        "a preview reads the table as it is now: {newest:?}"
    );
    assert_eq!(slot_confirmed(&shop, "tributary_cust").await, before);
    shop.batch_execute(
        "INSERT INTO customers SELECT g, 'second' || g, 1, now() FROM generate_series(151, 200) g",
    )
    .await
    .unwrap();
    c.batch_execute("START PIPELINE p").await.unwrap();
    poll(
        Duration::from_secs(60),
        "both batches of inserts in the lake",
        || async { (lake_count().await == "200").then_some(()) },
    )
    .await;

    // Previewing a source no pipeline reads creates no slot and no publication.
    c.batch_execute(&format!(
        "CREATE SOURCE fresh WITH (connector = 'postgres-cdc', url = '{}', table = 'customers')",
        pg.url("shop")
    ))
    .await
    .unwrap();
    let newest = query(&c, "SELECT id FROM fresh WHERE id > 195 LIMIT 50").await;
    assert_eq!(newest.len(), 5, "{newest:?}");
    assert_eq!(slot_confirmed(&shop, "tributary_fresh").await, None);
    let publications = count(&shop, "pg_publication WHERE pubname = 'tributary_fresh'").await;
    assert_eq!(publications, Some(0));

    // A slot that exists at a pipeline's first start is not ours: an error naming it, and the
    // slot is left alone; existing_slot = 'adopt' streams from it without a snapshot.
    shop.batch_execute("SELECT pg_create_logical_replication_slot('tributary_orphan', 'pgoutput')")
        .await
        .unwrap();
    let orphan_at = slot_confirmed(&shop, "tributary_orphan").await;
    c.batch_execute(&format!(
        "CREATE SOURCE orphan WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers');
         CREATE SINK orphan_wh WITH (connector = 'postgres', url = '{wh}', table = 'orphan', mode = 'upsert');
         CREATE PIPELINE po WITH (checkpoint_interval = '200ms') AS INSERT INTO orphan_wh SELECT id, name, _op FROM orphan;",
        url = pg.url("shop"),
        wh = pg.url("warehouse")
    ))
    .await
    .unwrap();
    wait_state(&c, "po", "failed").await;
    let e = error_of(&c, "po").await;
    assert!(
        e.contains("tributary_orphan")
            && e.contains("pg_drop_replication_slot")
            && e.contains("adopt"),
        "{e}"
    );
    assert_eq!(slot_confirmed(&shop, "tributary_orphan").await, orphan_at);
    c.batch_execute(&format!(
        "DROP PIPELINE po; DROP SOURCE orphan KEEP SLOT;
         CREATE SOURCE orphan WITH (connector = 'postgres-cdc', url = '{url}', table = 'customers', existing_slot = 'adopt');
         CREATE PIPELINE po WITH (checkpoint_interval = '200ms') AS INSERT INTO orphan_wh SELECT id, name, _op FROM orphan;",
        url = pg.url("shop"),
    ))
    .await
    .unwrap();
    wait_state(&c, "po", "running").await;
    shop.batch_execute("UPDATE customers SET name = 'adopted' WHERE id = 7")
        .await
        .unwrap();
    // Only what changed after the slot's position arrives: no snapshot copies the table.
    poll(
        Duration::from_secs(60),
        "the adopted slot's changes",
        || async {
            let n = count(&warehouse, "orphan").await?;
            let seven = count(&warehouse, "orphan WHERE id = 7 AND name = 'adopted'").await?;
            (n == 1 && seven == 1).then_some(())
        },
    )
    .await;

    // A slot held by another consumer while the pipeline resumes is reported as such (not as an
    // unreachable server), and the pipeline carries on once the slot is released.
    c.batch_execute("STOP PIPELINE p").await.unwrap();
    wait_state(&c, "p", "stopped").await;
    let mut holder = Command::new(pg_bin().join("pg_recvlogical"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "shop",
            "-S",
            "tributary_cust",
            "--start",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=tributary_cust",
            "-f",
            "/dev/null",
            "--no-loop",
        ])
        .env("PGPASSWORD", PASSWORD)
        .spawn()
        .expect("pg_recvlogical");
    poll(
        Duration::from_secs(30),
        "pg_recvlogical to hold the slot",
        || async {
            let active = count(
                &shop,
                "pg_replication_slots WHERE slot_name = 'tributary_cust' AND active",
            )
            .await?;
            (active == 1).then_some(())
        },
    )
    .await;
    c.batch_execute("START PIPELINE p").await.unwrap();
    let e = poll(
        Duration::from_secs(60),
        "the busy slot in the pipeline's error",
        || async {
            let e = error_of(&c, "p").await;
            (!e.is_empty()).then_some(e)
        },
    )
    .await;
    assert!(e.contains("in use by another consumer"), "{e}");
    holder.kill().unwrap();
    let _ = holder.wait();
    shop.batch_execute("INSERT INTO customers VALUES (201, 'after release', 1, now())")
        .await
        .unwrap();
    poll(
        Duration::from_secs(90),
        "the pipeline to resume after the release",
        || async { (lake_count().await == "201").then_some(()) },
    )
    .await;
    assert_eq!(error_of(&c, "p").await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_fails_at_once_on_errors_retrying_cannot_fix() {
    let pg = PgCluster::start("replica");
    let admin = pg.client("postgres").await;
    admin
        .batch_execute("CREATE TABLE checked (id bigint, amount bigint CHECK (amount >= 0))")
        .await
        .unwrap();
    let (tmp, server) = start_fresh().await;
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("a.csv"), "id,amount\n1,10\n2,-5\n").unwrap();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE amounts (id BIGINT, amount BIGINT) WITH (connector = 'file', path = '{files}', format = 'csv');
         CREATE SINK checked WITH (connector = 'postgres', url = '{url}', table = 'checked');
         CREATE PIPELINE load AS INSERT INTO checked SELECT * FROM amounts;",
        files = files.display(),
        url = pg.url("postgres")
    ))
    .await
    .unwrap();
    // Retrying a constraint violation took ten attempts over 40 s; it now fails on the first.
    let started = std::time::Instant::now();
    wait_state(&c, "load", "failed").await;
    let e = error_of(&c, "load").await;
    assert!(
        e.contains("checked_amount_check") && e.contains("23514"),
        "{e}"
    );
    assert!(!server.log().contains("retrying"), "{}", server.log());
    eprintln!("failed after {:?}", started.elapsed());
    assert_eq!(
        count(&admin, "checked").await,
        Some(0),
        "nothing of the epoch is applied"
    );
}
