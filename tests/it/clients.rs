//! Real clients: the psql binary (script files, error exit codes), psycopg and asyncpg
//! (extended protocol, parameters, binary results).

use std::time::{Duration, Instant};

use crate::harness::*;

/// A server whose source `orders` reads `files` CSV files of `rows` orders each.
async fn with_orders(
    files: usize,
    rows: usize,
) -> (tempfile::TempDir, Server, tokio_postgres::Client) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_csv(&input, "orders", files, rows, 1);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE orders (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) WITH (connector = 'file', path = '{}')",
        input.display()
    ))
    .await
    .unwrap();
    (tmp, server, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_a_script_and_reports_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_csv(&input, "orders", 2, 500, 1);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    let script = tmp.path().join("script.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE orders (id BIGINT, customer TEXT, amount DOUBLE, ts TIMESTAMP) WITH (connector = 'file', path = '{}');\n\
             CREATE SINK out WITH (connector = 'parquet', path = '{}');\n\
             CREATE PIPELINE p AS INSERT INTO out SELECT id, amount FROM orders WHERE id <= 10;\n\
             SHOW SOURCES;\n\
             SELECT count(*) AS n, sum(id) AS s FROM orders;\n",
            input.display(),
            tmp.path().join("out").display()
        ),
    )
    .unwrap();
    let out = psql(
        server.port,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-A",
            "-t",
            "-f",
            script.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("orders|file|"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "1000|500500"), "{stdout}");

    let c = server.client().await;
    wait_state(&c, "p", "completed").await;
    assert_eq!(scalar(&c, "SELECT sum(id) FROM out").await, "55");

    // A bad statement: psql prints the server's error with its position and exits 3 under ON_ERROR_STOP.
    let bad = tmp.path().join("bad.sql");
    std::fs::write(
        &bad,
        "SELECT 1;\nCREATE SINK s WITH (connector 'delta');\nSELECT 2;\n",
    )
    .unwrap();
    let out = psql(
        server.port,
        &["-v", "ON_ERROR_STOP=1", "-f", bad.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("syntax error")
            && stderr.contains("LINE 1: CREATE SINK s WITH (connector 'delta')"),
        "{stderr}"
    );

    // And the server still serves.
    assert_eq!(scalar(&c, "SELECT 40 + 2").await, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_asyncpg_use_the_extended_protocol() {
    let (_tmp, server, _c) = with_orders(1, 1000).await;

    let psycopg = r#"
import sys, psycopg
with psycopg.connect(host='127.0.0.1', port=int(sys.argv[1]), user='tributary', dbname='tributary', autocommit=True) as conn:
    rows = conn.execute("SELECT id, customer, amount, ts FROM orders WHERE id BETWEEN %s AND %s ORDER BY id", (10, 12)).fetchall()
    print(len(rows), rows[0][0], rows[0][1], rows[0][2], rows[0][3].isoformat())
    try:
        conn.execute("SELECT * FROM missing_table")
    except psycopg.errors.UndefinedTable as e:
        print("undefined_table", e.sqlstate)
    print(conn.execute("SELECT count(*) FROM orders").fetchone()[0])
"#;
    let out = run_python(psycopg, &[&server.port.to_string()]);
    assert_eq!(
        out,
        "3 10 customer_10 10.1 2026-03-11T10:10:00\nundefined_table 42P01\n1000"
    );

    let asyncpg = r#"
import sys, asyncio, asyncpg
async def main():
    conn = await asyncpg.connect(host='127.0.0.1', port=int(sys.argv[1]), user='tributary', database='tributary')
    rows = await conn.fetch("SELECT id, customer, amount FROM orders WHERE id > $1 ORDER BY id LIMIT 2", 998)
    print([tuple(r) for r in rows])
    print(await conn.fetchval("SELECT sum(id) FROM orders WHERE customer = $1", 'customer_1'))
    try:
        await conn.fetch("SELEC 1")
    except asyncpg.exceptions.PostgresSyntaxError as e:
        print("syntax", e.sqlstate, e.position)
    await conn.close()
asyncio.run(main())
"#;
    let out = run_python(asyncpg, &[&server.port.to_string()]);
    let expected_sum: u64 = (1..=1000u64).filter(|i| i % 97 == 1).sum();
    assert_eq!(out, format!("[(999, 'customer_29', 999.99), (1000, 'customer_30', 0.0)]\n{expected_sum}\nsyntax 42601 1"));
}

/// psql's `\d` commands and SQLAlchemy's reflection read pg_catalog: sources and sinks are
/// tables in `public`, system tables in `tributary`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describe_and_sqlalchemy_reflection_see_sources_sinks_and_system_tables() {
    let (tmp, server, c) = with_orders(1, 100).await;
    c.batch_execute(&format!(
        "CREATE SINK totals WITH (connector = 'parquet', path = '{}');
         CREATE SINK nowhere WITH (connector = 'blackhole');
         CREATE PIPELINE big_orders AS INSERT INTO nowhere
           SELECT id, upper(customer) AS who, amount * 2 AS doubled FROM orders WHERE amount > 1;",
        tmp.path().join("out").display()
    ))
    .await
    .unwrap();
    let run = |args: &[&str]| {
        let out = psql(server.port, args);
        assert!(
            out.status.success(),
            "psql {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // \dt: the sources and sinks that hold rows (a blackhole keeps none), not the system tables.
    let tables = run(&["-A", "-t", "-c", "\\dt"]);
    let names: Vec<&str> = tables
        .lines()
        .map(|l| l.split('|').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(names, ["orders", "totals"], "{tables}");
    // \d orders: its columns and their PostgreSQL types.
    let orders = run(&["-A", "-t", "-c", "\\d orders"]);
    for line in [
        "id|bigint",
        "customer|text",
        "amount|double precision",
        "ts|timestamp",
    ] {
        assert!(
            orders.lines().any(|l| l.starts_with(line)),
            "{line} in {orders}"
        );
    }
    // \dt tributary.*: the system tables (off the search path, so not in \dt); \dn the
    // schemas; \l the database.
    let system = run(&["-A", "-t", "-c", "\\dt tributary.*"]);
    assert!(
        system.contains("tributary|pipelines|table") && system.contains("tributary|sessions|table"),
        "{system}"
    );
    let schemas = run(&["-A", "-t", "-c", "\\dn"]);
    assert!(
        schemas.lines().any(|l| l.starts_with("public|"))
            && schemas.lines().any(|l| l.starts_with("tributary|")),
        "{schemas}"
    );
    let databases = run(&["-A", "-t", "-c", "\\l"]);
    assert!(!databases.trim().is_empty(), "{databases}");
    // information_schema.columns in PostgreSQL's type names, short ones in udt_name.
    let columns = run(&[
        "-A",
        "-t",
        "-c",
        "SELECT column_name, data_type, c.udt_name FROM information_schema.columns c WHERE table_name = 'orders' ORDER BY ordinal_position",
    ]);
    assert_eq!(
        columns.trim(),
        "id|bigint|int8\ncustomer|text|text\namount|double precision|float8\nts|timestamp without time zone|timestamp"
    );
    // Pipelines are views: \dv lists them, \d shows their SELECT's columns, \d+ the SELECT.
    let views = run(&["-A", "-t", "-c", "\\dv"]);
    assert_eq!(views.trim(), "public|big_orders|view|postgres", "{views}");
    let pipeline = run(&["-A", "-t", "-c", "\\d big_orders"]);
    for line in ["id|bigint", "who|text", "doubled|double precision"] {
        assert!(
            pipeline.lines().any(|l| l.starts_with(line)),
            "{line} in {pipeline}"
        );
    }
    // \dt+ and \d+ of a table: sizes and comments (none here) and storage columns.
    let verbose = run(&["-A", "-t", "-c", "\\dt+", "-c", "\\d+ orders"]);
    assert!(
        verbose.contains("public|orders|table|")
            && verbose.contains("ts|timestamp without time zone|"),
        "{verbose}"
    );
    let described = run(&["-c", "\\d+ big_orders"]);
    assert!(
        described.contains("View definition:")
            && described.contains("SELECT id, upper(customer) AS who, amount * 2 AS doubled FROM orders WHERE amount > 1"),
        "{described}"
    );
    // Tab completion: the queries psql 15 sends for `SELECT * FROM or<TAB>` and
    // `tributary.pi<TAB>`.
    let completion = run(&[
        "-A",
        "-t",
        "-c",
        "SELECT c.relname, NULL::pg_catalog.text FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'S', 'v', 'm', 'f', 'p') AND (c.relname) LIKE 'or%' AND pg_catalog.pg_table_is_visible(c.oid) AND c.relnamespace <> (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'pg_catalog') \
         UNION ALL SELECT NULL::pg_catalog.text, n.nspname FROM pg_catalog.pg_namespace n WHERE n.nspname LIKE 'or%' AND n.nspname NOT LIKE E'pg\\\\_%' LIMIT 1000",
    ]);
    assert_eq!(completion.trim(), "orders|");
    let completion = run(&[
        "-A",
        "-t",
        "-c",
        "SELECT c.relname, n.nspname FROM pg_catalog.pg_class c, pg_catalog.pg_namespace n WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'S', 'v', 'm', 'f', 'p') AND (c.relname) LIKE 'pi%' AND n.nspname = 'tributary' LIMIT 1000",
    ]);
    assert_eq!(completion.trim(), "pipelines|tributary");

    // SQLAlchemy 2 over psycopg 3: connects (it reads version()), reflects tables, views and
    // columns, and runs a bound query through pandas.
    let sqlalchemy = r#"
import sys
import sqlalchemy as sa, pandas as pd
engine = sa.create_engine(f"postgresql+psycopg://tributary@127.0.0.1:{sys.argv[1]}/tributary")
with engine.connect() as conn:
    print(conn.dialect.server_version_info[:2])
insp = sa.inspect(engine)
print(sorted(insp.get_table_names()))
print([(c["name"], str(c["type"])) for c in insp.get_columns("orders")])
print([n for n in sorted(insp.get_table_names(schema="tributary")) if n in ("checkpoints", "errors", "operators", "pipelines")])
print(insp.get_view_names(), insp.get_view_definition("big_orders"))
df = pd.read_sql(sa.text("SELECT id, amount FROM orders WHERE id <= :n ORDER BY id"), engine, params={"n": 3})
print(df["id"].tolist(), round(float(df["amount"].sum()), 2))
"#;
    let out = run_python(sqlalchemy, &[&server.port.to_string()]);
    assert_eq!(
        out,
        "(16, 6)\n['orders', 'totals']\n[('id', 'BIGINT'), ('customer', 'TEXT'), ('amount', 'DOUBLE PRECISION'), ('ts', 'TIMESTAMP')]\n['checkpoints', 'errors', 'operators', 'pipelines']\n['big_orders'] SELECT id, upper(customer) AS who, amount * 2 AS doubled FROM orders WHERE amount > 1\n[1, 2, 3] 6.06"
    );
}

/// pgjdbc's DatabaseMetaData (what DBeaver, DataGrip and Metabase browse with) and psycopg 2 read
/// the catalog; result columns are named as PostgreSQL names them; psql's \df and \x work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_metadata_psycopg2_and_postgres_column_names() {
    let (tmp, server, _c) = with_orders(1, 100).await;

    let probe = tmp.path().join("Probe.java");
    std::fs::write(
        &probe,
        r#"import java.sql.*;
public class Probe {
  public static void main(String[] a) throws Exception {
    try (Connection c = DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + a[0] + "/tributary?user=tributary")) {
      DatabaseMetaData md = c.getMetaData();
      System.out.println(md.getDatabaseProductName() + " " + md.getDatabaseMajorVersion());
      try (ResultSet rs = md.getTables(null, "public", "%", new String[]{"TABLE"})) { while (rs.next()) System.out.println("table " + rs.getString(2) + "." + rs.getString(3)); }
      try (ResultSet rs = md.getTables(null, "tributary", "pipe%", new String[]{"TABLE"})) { while (rs.next()) System.out.println("system " + rs.getString(2) + "." + rs.getString(3)); }
      try (ResultSet rs = md.getColumns(null, "public", "orders", "%")) { while (rs.next()) System.out.println("column " + rs.getString(4) + " " + rs.getString(6)); }
      try (PreparedStatement s = c.prepareStatement("SELECT customer, count(*) FROM orders WHERE id <= ? GROUP BY customer ORDER BY customer")) {
        s.setLong(1, 2);
        try (ResultSet rs = s.executeQuery()) {
          ResultSetMetaData m = rs.getMetaData();
          while (rs.next()) System.out.println("row " + m.getColumnName(1) + "=" + rs.getString(1) + " " + m.getColumnName(2) + "=" + rs.getLong(2));
        }
      }
    }
  }
}
"#,
    )
    .unwrap();
    let out = std::process::Command::new("java")
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(&probe)
        .arg(server.port.to_string())
        .output()
        .expect("java is installed (tests/run.sh installs it and pgjdbc)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PostgreSQL 16\ntable public.orders\nsystem tributary.pipelines\n\
         column id int8\ncolumn customer text\ncolumn amount float8\ncolumn ts timestamp\n\
         row customer=customer_1 count=1\nrow customer=customer_2 count=1\n"
    );

    let psycopg2 = r#"
import sys, psycopg2
conn = psycopg2.connect(host='127.0.0.1', port=int(sys.argv[1]), user='tributary', dbname='tributary')
cur = conn.cursor()
cur.execute("SELECT id, amount, 1 + 1, upper(customer), CASE WHEN id > 1 THEN 'many' END FROM orders WHERE id = %s", (3,))
print([d.name for d in cur.description], cur.fetchall())
conn.commit()
"#;
    let out = run_python(psycopg2, &[&server.port.to_string()]);
    assert_eq!(
        out,
        "['id', 'amount', '?column?', 'upper', 'case'] [(3, 3.03, 2, 'CUSTOMER_3', 'many')]"
    );

    // \df lists no function outside pg_catalog (as in an empty PostgreSQL database); \x turns on
    // the expanded display.
    let out = psql(
        server.port,
        &["-c", "\\df", "-c", "\\x", "-c", "SELECT 7 AS n"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("List of functions") && stdout.contains("(0 rows)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-[ RECORD 1 ]") && stdout.contains("n | 7"),
        "{stdout}"
    );
}

/// A psql session cancelled with Ctrl-C (SIGINT, which psql turns into a cancel request) stops
/// its query; `statement_timeout` stops one that runs too long; `tributary.sessions` shows who
/// is connected, with which application, running what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_statement_timeout_and_sessions() {
    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    // A query that would run for hours.
    c.batch_execute(
        "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 5000000000, seed = 1)",
    )
    .await
    .unwrap();

    let mut psql = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port.to_string(),
            "-U",
            "tributary",
            "-X",
        ])
        .args(["-c", "SELECT count(*) AS long_count FROM bids"])
        .env("PGAPPNAME", "cancel-test")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql is installed");
    // The session shows the query running, under psql's application name.
    poll(Duration::from_secs(60), "the query to run", || async {
        let n = scalar(
            &c,
            "SELECT count(*) FROM tributary.sessions WHERE application_name = 'cancel-test' \
             AND state = 'active' AND query LIKE '%long_count%' AND query_started_at IS NOT NULL",
        )
        .await;
        (n == "1").then_some(())
    })
    .await;
    let status = std::process::Command::new("kill")
        .args(["-INT", &psql.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if psql.try_wait().unwrap().is_some() {
                return psql.wait_with_output().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "psql did not stop after the cancel"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    // Its session left with it; the server still serves.
    poll(Duration::from_secs(30), "psql's session to end", || async {
        let n = scalar(
            &c,
            "SELECT count(*) FROM tributary.sessions WHERE application_name = 'cancel-test'",
        )
        .await;
        (n == "0").then_some(())
    })
    .await;

    // statement_timeout, as PostgreSQL reads it; SHOW answers with the session's own value.
    c.batch_execute("SET statement_timeout = '300ms'; SET application_name = 'etl-job'")
        .await
        .unwrap();
    assert_eq!(scalar(&c, "SHOW statement_timeout").await, "300ms");
    let e = c
        .simple_query("SELECT count(*) FROM bids")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57014");
    assert!(
        db.message().contains("statement timeout"),
        "{}",
        db.message()
    );
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    assert_eq!(
        query(
            &c,
            "SELECT application_name, state, user_name FROM tributary.sessions WHERE query LIKE '%FROM tributary.sessions%'"
        )
        .await,
        vec![vec![
            Some("etl-job".to_string()),
            Some("active".to_string()),
            Some("tributary".to_string())
        ]]
    );
}

/// psql's `\copy (SELECT ...) TO file` (COPY ... TO STDOUT) exports a Delta sink's rows as CSV,
/// the same rows the deltalake package reads; text format escapes as PostgreSQL's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_exports_a_delta_sink_as_csv() {
    let (tmp, server, c) = with_orders(2, 300).await;
    let lake = tmp.path().join("lake");
    c.batch_execute(&format!(
        "CREATE SINK lake WITH (connector = 'delta', path = '{}');
         CREATE PIPELINE load AS INSERT INTO lake SELECT id, customer, amount, ts, id % 7 = 0 AS lucky FROM orders;",
        lake.display()
    ))
    .await
    .unwrap();
    wait_state(&c, "load", "completed").await;

    let csv = tmp.path().join("out.csv");
    let out = psql(
        server.port,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!(
                "\\copy (SELECT id, customer, amount, ts, lucky FROM lake ORDER BY id) TO '{}' WITH (FORMAT csv, HEADER)",
                csv.display()
            ),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compare = r#"
import sys, csv, deltalake
rows = list(csv.reader(open(sys.argv[1], newline='')))
t = deltalake.DeltaTable(sys.argv[2]).to_pyarrow_table().sort_by('id').to_pylist()
want = [[str(r['id']), r['customer'], repr(r['amount']), str(r['ts']), 't' if r['lucky'] else 'f'] for r in t]
print(rows[0], len(rows) - 1, rows[1:] == want)
"#;
    let got = run_python(compare, &[csv.to_str().unwrap(), lake.to_str().unwrap()]);
    assert_eq!(got, "['id', 'customer', 'amount', 'ts', 'lucky'] 600 True");

    // COPY ... TO STDOUT in text format, over the simple protocol.
    let out = psql(
        server.port,
        &["-c", "COPY (SELECT 'a\tb' AS t, NULL AS n) TO STDOUT"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\\tb\t\\N\n");
    // COPY FROM is refused with a clear error.
    let out = psql(server.port, &["-c", "COPY lake FROM STDIN"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("COPY FROM is not supported"), "{stderr}");
}

/// Values past what one wire type holds reach clients whole, or fail with an error, never as a
/// clamped number or a NULL: an unsigned 64-bit value past BIGINT, a timestamp past the range of
/// nanoseconds, a decimal of more than 28 digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_values_reach_clients_whole() {
    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    let rows = query(
        &c,
        "SELECT arrow_cast(18446744073709551615, 'UInt64') AS big, \
                arrow_cast(253402300799, 'Timestamp(Second, None)') AS last_second, \
                CAST('12345678901234567890123456789.123' AS DECIMAL(38, 3)) AS wide",
    )
    .await;
    assert_eq!(
        rows,
        vec![vec![
            Some("18446744073709551615".to_string()),
            Some("9999-12-31 23:59:59".to_string()),
            Some("12345678901234567890123456789.123".to_string())
        ]]
    );
    // Binary results (psycopg 3): the unsigned value as NUMERIC; the wide decimal, which binary
    // NUMERIC cannot carry here, is an error naming the way out.
    let script = r#"
import sys, psycopg
with psycopg.connect(host='127.0.0.1', port=int(sys.argv[1]), user='tributary', dbname='tributary', autocommit=True) as conn:
    cur = conn.cursor(binary=True)
    print(cur.execute("SELECT arrow_cast(18446744073709551615, 'UInt64')").fetchone()[0])
    try:
        cur.execute("SELECT CAST('12345678901234567890123456789.123' AS DECIMAL(38, 3))").fetchone()
    except psycopg.Error as e:
        print(e.sqlstate, 'text results' in str(e))
"#;
    assert_eq!(
        run_python(script, &[&server.port.to_string()]),
        "18446744073709551615\n22003 True"
    );
}

/// Grafana's PostgreSQL data source sends its macros expanded: `$__timeFilter(at)` as a BETWEEN
/// of RFC 3339 strings, `$__timeGroup(at, 1m)` as epoch arithmetic. Over the system tables they
/// chart a pipeline's checkpoints and rows. Its query builder (and dbt) read column types from
/// information_schema, in PostgreSQL's names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_time_series_queries_over_system_tables() {
    let (tmp, _server, c) = with_orders(1, 100).await;
    c.batch_execute(&format!(
        "CREATE SINK out WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE p AS INSERT INTO out SELECT id, amount FROM orders;",
        tmp.path().join("out").display()
    ))
    .await
    .unwrap();
    wait_state(&c, "p", "completed").await;
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let to = (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let per_minute = query(
        &c,
        &format!(
            "SELECT floor(extract(epoch from at)/60)*60 AS \"time\", sum(rows_in) AS rows \
             FROM tributary.checkpoints WHERE at BETWEEN '{from}' AND '{to}' AND pipeline = 'p' \
             GROUP BY 1 ORDER BY 1"
        ),
    )
    .await;
    let total: f64 = per_minute
        .iter()
        .map(|r| r[1].as_deref().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 100.0, "{per_minute:?}");
    // Outside the time range: nothing.
    let none = query(
        &c,
        "SELECT count(*) FROM tributary.checkpoints WHERE at BETWEEN '2001-01-01T00:00:00Z' AND '2001-01-02T00:00:00Z'",
    )
    .await;
    assert_eq!(none, vec![vec![Some("0".to_string())]]);
    let series = query(
        &c,
        &format!(
            "SELECT started_at AS \"time\", name AS metric, rows_in AS value FROM tributary.pipelines \
             WHERE started_at >= '{from}'::timestamptz AND started_at <= now() ORDER BY 1"
        ),
    )
    .await;
    assert_eq!(series.len(), 1);
    assert_eq!(
        series[0][1..],
        [Some("p".to_string()), Some("100".to_string())]
    );
    // Its query builder finds time columns by their PostgreSQL type in information_schema.
    let time_columns = query(
        &c,
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_schema = 'tributary' AND table_name = 'checkpoints' \
         AND data_type IN ('timestamp with time zone', 'timestamp without time zone') ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(
        time_columns,
        vec![vec![
            Some("at".to_string()),
            Some("timestamp with time zone".to_string())
        ]]
    );
    let types = query(
        &c,
        "SELECT c.column_name, c.data_type FROM information_schema.columns c \
         WHERE c.table_name = 'orders' ORDER BY c.ordinal_position",
    )
    .await;
    let types: Vec<String> = types
        .iter()
        .map(|r| format!("{} {}", r[0].as_deref().unwrap(), r[1].as_deref().unwrap()))
        .collect();
    assert_eq!(
        types,
        [
            "id bigint",
            "customer text",
            "amount double precision",
            "ts timestamp without time zone"
        ]
    );
}

/// A query's rows stream: an Execute with a row limit (a cursor's fetch) gets its first rows of
/// a result that would take hours to build whole, and the next fetch continues after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_stream_and_a_row_limit_suspends_the_portal() {
    let (_tmp, server) = start_fresh().await;
    let mut c = server.client().await;
    c.batch_execute(
        "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 5000000000, seed = 1)",
    )
    .await
    .unwrap();
    let tx = c.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT auction, price FROM bids WHERE price > $1")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[&0i64]).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), tx.query_portal(&portal, 10))
        .await
        .expect("the first rows come before the whole result")
        .unwrap();
    assert_eq!(first.len(), 10);
    let next = tx.query_portal(&portal, 5).await.unwrap();
    assert_eq!(next.len(), 5);
    assert!(next.iter().all(|r| r.get::<_, i64>(1) > 0));
    drop(tx);
    // The session is usable after (the rest of the rows are dropped with the portal).
    assert_eq!(scalar(&c, "SELECT 40 + 2").await, "42");
}
