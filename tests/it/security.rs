//! Users, passwords and roles on a real `tributary serve`: the admin created from a password
//! file at the first start, SCRAM-SHA-256 logins from psql, psycopg, tokio-postgres and pgjdbc
//! (wrong and missing passwords refused with 28P01), a reader refused DDL with 42501, the same
//! users over HTTP basic, and no password or verifier in any log, file or system table.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::harness::*;

const ADMIN_PASSWORD: &str = "Adm1n-first-start";
const READER_PASSWORD: &str = "reader-pa55-word";
const NEW_READER_PASSWORD: &str = "reader-changed-it";

/// `psql -c sql` as `user` with `password`: its exit status, stdout and stderr.
fn psql(port: u16, user: &str, password: Option<&str>, sql: &str) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-d",
        "tributary",
        "-X",
        "-A",
        "-t",
        "-w",
        "-c",
        sql,
    ])
    .env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().expect("psql is installed (tests/run.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_passwords_and_roles_over_pgwire_and_http() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let password_file = tmp.path().join("admin-password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let server = Server::start_with(
        &data,
        &["--admin-password-file", password_file.to_str().unwrap()],
    )
    .await;
    let port = server.port;

    // No password, a wrong one, an unknown user: refused, with 28P01 where a password was sent.
    let no_password = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=admin"),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(no_password.is_err(), "a client without a password got in");
    let (ok, _, err) = psql(port, "admin", Some("not-the-password"), "SELECT 1");
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let (ok, _, err) = psql(port, "admin", None, "SELECT 1");
    assert!(!ok && err.contains("password"), "{err}");
    let py = r#"
import sys, psycopg
for user, password in ((sys.argv[2], 'wrong-password'), ('nobody', 'whatever-it-is')):
    try:
        psycopg.connect(host='127.0.0.1', port=sys.argv[1], user=user, password=password, dbname='tributary')
        print('connected')
    except psycopg.OperationalError as e:
        print('28P01' if '28P01' in str(e) or 'password authentication failed' in str(e) else str(e))
"#;
    assert_eq!(
        run_python(py, &[&port.to_string(), "admin"]),
        "28P01\n28P01"
    );

    // The admin: psql with the right password, then users and a source/sink/pipeline.
    let (ok, out, err) = psql(
        port,
        "admin",
        Some(ADMIN_PASSWORD),
        "SELECT name || ' ' || role FROM tributary.users",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "admin admin");
    let admin = server.client_as("admin", ADMIN_PASSWORD).await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE USER ann WITH PASSWORD '{READER_PASSWORD}';
             CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 1000, seed = 3);
             CREATE SINK nowhere WITH (connector = 'blackhole');
             CREATE PIPELINE p WITH (mode = 'batch') AS INSERT INTO nowhere SELECT auction, price FROM bids;"
        ))
        .await
        .unwrap();
    wait_state(&admin, "p", "completed").await;
    assert_eq!(
        query_lines(
            &admin,
            "SELECT name || ' ' || role FROM tributary.users ORDER BY name"
        )
        .await,
        ["admin admin", "ann reader"]
    );
    let e = error_message(&admin, "DROP USER admin").await;
    assert!(e.contains("last admin"), "{e}");

    // The reader: queries and SHOW, no DDL (42501), a new password of its own.
    let ann = server.client_as("ann", READER_PASSWORD).await.unwrap();
    assert_eq!(
        scalar(
            &ann,
            "SELECT state FROM tributary.pipelines WHERE name = 'p'"
        )
        .await,
        "completed"
    );
    let bids = scalar(&admin, "SELECT count(*) FROM bids").await;
    assert!(bids.parse::<u64>().unwrap() > 0);
    assert_eq!(scalar(&ann, "SELECT count(*) FROM bids").await, bids);
    ann.batch_execute("SHOW PIPELINES").await.unwrap();
    for ddl in [
        "CREATE SINK more WITH (connector = 'blackhole')",
        "DROP PIPELINE p",
        "START PIPELINE p",
        "CREATE USER eve PASSWORD 'eve-pa55-word' ADMIN",
        "ALTER USER admin PASSWORD 'taken-over-now'",
    ] {
        let e = ann.batch_execute(ddl).await.unwrap_err();
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "42501", "{ddl}: {}", db.message());
        assert!(
            db.message().contains("\"ann\" is a reader"),
            "{}",
            db.message()
        );
    }
    ann.batch_execute(&format!("ALTER USER ann PASSWORD '{NEW_READER_PASSWORD}'"))
        .await
        .unwrap();
    assert!(server.client_as("ann", READER_PASSWORD).await.is_err());
    let ann = server.client_as("ann", NEW_READER_PASSWORD).await.unwrap();
    assert_eq!(
        scalar(&ann, "SELECT count(*) FROM tributary.users").await,
        "2"
    );

    // pgjdbc logs in with SCRAM-SHA-256 too.
    let probe = tmp.path().join("Login.java");
    std::fs::write(
        &probe,
        r#"import java.sql.*;
public class Login {
  public static void main(String[] a) throws Exception {
    try (Connection c = DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + a[0] + "/tributary", a[1], a[2]);
         ResultSet rs = c.createStatement().executeQuery("SELECT name FROM tributary.users ORDER BY name")) {
      while (rs.next()) System.out.println(rs.getString(1));
    }
    try (Connection c = DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + a[0] + "/tributary", a[1], "wrong")) {
      System.out.println("wrong password accepted");
    } catch (SQLException e) {
      System.out.println(e.getSQLState());
    }
  }
}
"#,
    )
    .unwrap();
    let out = Command::new("java")
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(&probe)
        .args([&port.to_string(), "ann", NEW_READER_PASSWORD])
        .output()
        .expect("java is installed (tests/run.sh installs it and pgjdbc)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "admin\nann\n28P01\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // HTTP: basic authentication with the same users; a reader looks, an admin acts; probes
    // stay open.
    let py = r#"
import sys, json, base64, urllib.request, urllib.error
base = 'http://127.0.0.1:%s' % sys.argv[1]
def call(method, path, user=None, password=None):
    req = urllib.request.Request(base + path, method=method, data=b'' if method == 'POST' else None)
    if user:
        req.add_header('Authorization', 'Basic ' + base64.b64encode(('%s:%s' % (user, password)).encode()).decode())
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers.get('WWW-Authenticate'), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get('WWW-Authenticate'), e.read().decode()
status, challenge, _ = call('GET', '/api/v1/pipelines')
print(status, challenge)
print(call('GET', '/api/v1/pipelines', 'admin', 'wrong')[0])
print(call('GET', '/healthz')[0])
status, _, body = call('GET', '/api/v1/pipelines', sys.argv[2], sys.argv[3])
print(status, [p['name'] for p in json.loads(body)])
print(call('GET', '/metrics', sys.argv[2], sys.argv[3])[0])
status, _, body = call('POST', '/api/v1/pipelines/p/start', sys.argv[2], sys.argv[3])
print(status, json.loads(body)['error']['code'])
print(call('POST', '/api/v1/pipelines/p/stop', 'admin', sys.argv[4])[0])
"#;
    assert_eq!(
        run_python(
            py,
            &[
                &server.http_port.to_string(),
                "ann",
                NEW_READER_PASSWORD,
                ADMIN_PASSWORD
            ]
        ),
        "401 Basic realm=\"tributary\", charset=\"UTF-8\"\n401\n200\n200 ['p']\n200\n403 42501\n200"
    );

    // No password, and no verifier, anywhere a user or operator can look.
    let sessions = query_lines(&admin, "SELECT coalesce(query, '') FROM tributary.sessions").await;
    // The reader's first session last ran its ALTER USER: shown, its password masked.
    assert!(
        sessions.contains(&"ALTER USER ann PASSWORD '********'".to_string()),
        "{sessions:?}"
    );
    let events = query_lines(&admin, "SELECT message FROM tributary.events").await;
    assert!(
        events.iter().any(|e| e == "CREATE USER ann (reader)")
            && events.iter().any(|e| e == "password changed"),
        "{events:?}"
    );
    let catalog = std::fs::read_to_string(data.join("catalog.json")).unwrap();
    let log = server.log();
    for password in [ADMIN_PASSWORD, READER_PASSWORD, NEW_READER_PASSWORD] {
        for (place, text) in [
            ("the log", &log),
            ("catalog.json", &catalog),
            ("tributary.sessions", &sessions.join("\n")),
            ("tributary.events", &events.join("\n")),
        ] {
            assert!(!text.contains(password), "a password in {place}");
        }
    }
    assert!(
        catalog.contains("SCRAM-SHA-256$4096:"),
        "verifiers are stored"
    );
    let verifier_start = catalog.find("SCRAM-SHA-256$").unwrap();
    let verifier: String = catalog[verifier_start..]
        .chars()
        .take_while(|c| *c != '"')
        .collect();
    assert!(!log.contains(&verifier), "a verifier in the log");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("catalog.json")), 0o600);
    assert_eq!(mode(&data), 0o700);

    // Without a user, the server refuses to listen beyond loopback.
    let fresh = tmp.path().join("fresh");
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(&fresh)
        .args(["--pg-listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("refusing to listen on 0.0.0.0"),
        "{stderr}"
    );
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1, made by openssl in
/// `dir`: returns (CA certificate, server certificate, server key).
pub(crate) fn test_certificates(dir: &std::path::Path, ca_name: &str) -> [std::path::PathBuf; 3] {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (tests/run.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_key = format!("{ca_name}.key");
    let ca = format!("{ca_name}.pem");
    run(&[
        &["req", "-x509"][..],
        &ec[..],
        &[
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca_name}"),
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec[..],
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    [
        dir.join(&ca),
        dir.join("server.pem"),
        dir.join("server.key"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_and_verified_by_psql_psycopg_and_pgjdbc() {
    let tmp = tempfile::tempdir().unwrap();
    let [ca, cert, key] = test_certificates(tmp.path(), "test-ca");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let [other_ca, _, _] = test_certificates(&other, "other-ca");
    let data = tmp.path().join("data");
    let password_file = tmp.path().join("admin-password");
    std::fs::write(&password_file, ADMIN_PASSWORD).unwrap();
    let server = Server::start_with(
        &data,
        &[
            "--admin-password-file",
            password_file.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--require-tls",
        ],
    )
    .await;
    let port = server.port;
    let psql_with = |conninfo: String| {
        let out = Command::new("psql")
            .arg(format!(
                "host=localhost port={port} user=admin dbname=tributary {conninfo}"
            ))
            .args([
                "-X",
                "-A",
                "-t",
                "-w",
                "-c",
                "SELECT tls FROM tributary.sessions",
            ])
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // verify-full: the certificate chains to the CA and names the host; SCRAM bound to the
    // channel (SCRAM-SHA-256-PLUS), which libpq refuses to do without when asked to require it.
    let (ok, out, err) = psql_with(format!(
        "sslmode=verify-full sslrootcert={} channel_binding=require",
        ca.display()
    ));
    assert!(ok, "{err}");
    assert_eq!(out, "t");
    // Without TLS: refused by the server, saying why.
    let (ok, _, err) = psql_with("sslmode=disable".into());
    assert!(!ok && err.contains("requires TLS"), "{err}");
    // A CA that did not sign the server's certificate: refused by the client.
    let (ok, _, err) = psql_with(format!(
        "sslmode=verify-full sslrootcert={}",
        other_ca.display()
    ));
    assert!(!ok && err.contains("certificate verify failed"), "{err}");

    let py = r#"
import sys, psycopg
with psycopg.connect(host='localhost', port=sys.argv[1], user='admin', password=sys.argv[2], dbname='tributary', sslmode='require') as c:
    print(c.pgconn.ssl_in_use, c.execute('SELECT count(*) FROM tributary.sessions WHERE tls').fetchone()[0])
"#;
    assert_eq!(
        run_python(py, &[&port.to_string(), ADMIN_PASSWORD]),
        "True 1"
    );

    let probe = tmp.path().join("TlsLogin.java");
    std::fs::write(
        &probe,
        r#"import java.sql.*;
import java.util.Properties;
public class TlsLogin {
  public static void main(String[] a) throws Exception {
    Properties p = new Properties();
    p.setProperty("user", "admin");
    p.setProperty("password", a[1]);
    p.setProperty("sslmode", "verify-full");
    p.setProperty("sslrootcert", a[2]);
    try (Connection c = DriverManager.getConnection("jdbc:postgresql://localhost:" + a[0] + "/tributary", p);
         ResultSet rs = c.createStatement().executeQuery("SELECT count(*) FROM tributary.sessions WHERE tls")) {
      rs.next();
      System.out.println("tls sessions " + rs.getLong(1));
    }
  }
}
"#,
    )
    .unwrap();
    let out = Command::new("java")
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(&probe)
        .args([&port.to_string(), ADMIN_PASSWORD, ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tls sessions 1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // HTTPS with the same certificate: verified against the CA, with basic authentication.
    let py = r#"
import sys, ssl, json, base64, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request('https://localhost:%s/api/v1/pipelines' % sys.argv[1])
req.add_header('Authorization', 'Basic ' + base64.b64encode(('admin:' + sys.argv[3]).encode()).decode())
with urllib.request.urlopen(req, context=ctx) as r:
    print(r.status, json.loads(r.read()))
try:
    urllib.request.urlopen('http://localhost:%s/healthz' % sys.argv[1], timeout=5)
    print('plain HTTP answered')
except Exception:
    print('plain HTTP refused')
"#;
    assert_eq!(
        run_python(
            py,
            &[
                &server.http_port.to_string(),
                ca.to_str().unwrap(),
                ADMIN_PASSWORD
            ]
        ),
        "200 []\nplain HTTP refused"
    );

    // A key file that is not one: the server does not start, and says which file.
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("fresh"))
        .args(["--pg-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--tls-cert", cert.to_str().unwrap(), "--tls-key"])
        .arg(&ca)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("private key") && stderr.contains("test-ca.pem"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_feed_a_cdc_source_and_a_postgres_sink_and_never_show() {
    use crate::cdc::{setup_source_db, PgCluster, PASSWORD};
    let pg = PgCluster::start("logical");
    let shop = setup_source_db(&pg, 100).await;
    let warehouse = pg.client("warehouse").await;
    let (_tmp, server) = start_fresh().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SECRET shop_url AS '{shop}';
         CREATE SECRET wh_url AS 'postgres://postgres:wrong-one@127.0.0.1:{port}/warehouse';
         ALTER SECRET wh_url AS '{wh}';
         CREATE SOURCE customers WITH (connector = 'postgres-cdc', url = SECRET shop_url, table = 'customers');
         CREATE SINK wh WITH (connector = 'postgres', url = SECRET wh_url, table = 'public.customers', mode = 'upsert');
         CREATE PIPELINE to_wh WITH (checkpoint_interval = '300ms') AS INSERT INTO wh SELECT * FROM customers;",
        shop = pg.url("shop"),
        wh = pg.url("warehouse"),
        port = pg.port,
    ))
    .await
    .unwrap();
    // The rows arrive through both secrets, changes included.
    crate::cdc::rename_reaches_the_warehouse(&shop, &warehouse, 100).await;

    // SHOW CREATE and the system tables name the secrets, never their values.
    let show: String = query(&c, "SHOW CREATE SOURCE customers").await[0]
        .iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(show.contains("url = SECRET shop_url"), "{show}");
    assert_eq!(
        query_lines(
            &c,
            "SELECT name || ': ' || used_by FROM tributary.secrets ORDER BY name"
        )
        .await,
        ["shop_url: customers", "wh_url: wh"]
    );
    let e = error_message(&c, "DROP SECRET shop_url").await;
    assert!(e.contains("source \"customers\" use"), "{e}");
    let e = error_message(
        &c,
        "CREATE SINK other WITH (connector = 'postgres', url = SECRET nope, table = 't')",
    )
    .await;
    assert!(e.contains("secret \"nope\" does not exist"), "{e}");
    // Over HTTP too.
    let (_, sources) = crate::http::http(server.http_port, "GET", "/api/v1/sources").await;
    let (_, sinks) = crate::http::http(server.http_port, "GET", "/api/v1/sinks").await;
    let (_, pipelines) = crate::http::http(server.http_port, "GET", "/api/v1/pipelines").await;
    // What the console shows: its page and the pipeline's page data, history included.
    let mut console = crate::http::http(server.http_port, "GET", "/").await.1;
    for path in [
        "/api/v1/pipelines/to_wh",
        "/api/v1/pipelines/to_wh/history",
        "/api/v1/history",
    ] {
        console += &crate::http::http(server.http_port, "GET", path).await.1;
    }

    let mut seen = String::new();
    for table in [
        "sources",
        "sinks",
        "pipelines",
        "events",
        "sessions",
        "secrets",
        "errors",
    ] {
        seen += &query_lines(&c, &format!("SELECT * FROM tributary.{table}"))
            .await
            .join("\n");
    }
    seen += &show;
    let catalog = std::fs::read_to_string(server.data_dir.join("catalog.json")).unwrap();
    let dir = server.data_dir.clone();
    let key = std::fs::metadata(dir.join("secret.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert_eq!(key.len(), 32);
    for (place, text) in [
        ("a system table or SHOW CREATE", &seen),
        ("catalog.json", &catalog),
        ("the log", &server.log()),
        ("the API's sources", &sources),
        ("the API's sinks", &sinks),
        ("the API's pipelines", &pipelines),
        ("the console", &console),
    ] {
        for secret in [PASSWORD, "wrong-one"] {
            assert!(!text.contains(secret), "{secret} in {place}");
        }
    }
    // Every file the engine wrote in its data directory.
    for entry in walk(&dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(PASSWORD),
            "the password in {}",
            entry.display()
        );
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sources_and_sinks_stay_inside_the_allowed_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("a.csv"), "id\n1\n2\n").unwrap();
    std::os::unix::fs::symlink("/etc", inputs.join("etc")).unwrap();
    let server = Server::start_with(&data, &["--allow-path", inputs.to_str().unwrap()]).await;
    let c = server.client().await;
    let refused = |sql: String| {
        let c = &c;
        async move {
            let e = c.batch_execute(&sql).await.unwrap_err();
            let db = e.as_db_error().expect("a server error").clone();
            assert_eq!(db.code().code(), "42501", "{sql}: {}", db.message());
            assert!(db.message().contains("option 'path'"), "{}", db.message());
        }
    };
    let file = |path: String| {
        format!("CREATE SOURCE s (id BIGINT) WITH (connector = 'file', path = '{path}', format = 'csv')")
    };
    refused(file("/etc/passwd".into())).await;
    refused(file(format!("{}/etc/passwd", inputs.display()))).await;
    refused(file(format!("{}/../elsewhere/*.csv", inputs.display()))).await;
    refused(file("file:///etc/passwd".into())).await;
    refused(format!(
        "CREATE SINK out WITH (connector = 'parquet', path = '{}')",
        tmp.path().join("out").display()
    ))
    .await;
    refused(format!(
        "CREATE SINK out WITH (connector = 'delta', path = '{}/etc/lake')",
        inputs.display()
    ))
    .await;
    // Inside the allowed directory and the data directory, all is as before.
    c.batch_execute(&format!(
        "{};
         CREATE SINK out WITH (connector = 'parquet', path = '{}');
         CREATE PIPELINE p WITH (mode = 'batch') AS INSERT INTO out SELECT id FROM s;",
        file(format!("{}/*.csv", inputs.display())),
        data.join("out").display()
    ))
    .await
    .unwrap();
    wait_state(&c, "p", "completed").await;
    assert_eq!(scalar(&c, "SELECT count(*) FROM out").await, "2");
}
