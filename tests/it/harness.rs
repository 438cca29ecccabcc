//! Starting and stopping a real `tributary serve`, talking to it, and reading results back
//! with readers that are not ours.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A `tributary serve` process.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    /// Where it serves HTTP (the API, /metrics).
    pub http_port: u16,
    pub data_dir: PathBuf,
}

/// A port free now and never handed out before in this test process: the kernel may give the
/// same ephemeral port to two tests between one's choice and its server's bind (a broker's
/// controller and a schema registry once both got 45505), so each port is given once.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

/// The tests' inputs and outputs sit beside the data directory (in the test's temporary
/// directory) or in the repository: the directories a test server may use, unless the test
/// names its own.
fn allowed_paths(data_dir: &Path, args: &[&str]) -> Vec<String> {
    if args.contains(&"--allow-path") {
        return Vec::new();
    }
    let beside = data_dir.parent().unwrap_or(data_dir);
    let repository = std::env::current_dir().unwrap();
    vec![
        "--allow-path".into(),
        beside.display().to_string(),
        "--allow-path".into(),
        repository.display().to_string(),
    ]
}

impl Server {
    /// Starts a server over `data_dir` and waits until it says it serves. Its ports are picked
    /// free and then bound by the server: another test's server can take one in between, so a
    /// start that lost that race goes again on other ports. Whether the port accepts a
    /// connection says nothing: it may be the other server's.
    pub async fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[]).await
    }

    /// [`Server::start`] with more arguments for `tributary serve`.
    pub async fn start_with(data_dir: &Path, args: &[&str]) -> Server {
        let log_path = data_dir.with_extension("log");
        for attempt in 1..=5 {
            let logged = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
            let mut server = Self::spawn(data_dir, args);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let child = server.child.as_mut().expect("a child");
                let alive = child.try_wait().unwrap().is_none();
                let log = server.log();
                let new = log.get(logged..).unwrap_or(&log);
                // Logged once both its listeners are bound, by this server.
                if alive && new.contains(&format!("addr=127.0.0.1:{} ", server.port)) {
                    return server;
                }
                let child = server.child.as_mut().expect("a child");
                if let Some(status) = child.try_wait().unwrap() {
                    let log = server.log();
                    let new = log.get(logged..).unwrap_or(&log);
                    if new.contains("Address already in use") && attempt < 5 {
                        server.child = None;
                        break;
                    }
                    panic!("server exited with {status}; log: {log}");
                }
                assert!(
                    Instant::now() < deadline,
                    "server did not start; log: {}",
                    server.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(data_dir: &Path, args: &[&str]) -> Server {
        let port = free_port();
        let http_port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(bin())
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--pg-listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(allowed_paths(data_dir, args))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tributary");
        Server {
            child: Some(child),
            port,
            http_port,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running server").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub async fn client(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=tributary", self.port),
            NoTls,
        )
        .await
        .expect("connect");
        tokio::spawn(conn);
        client
    }

    /// A client logged in as `user` with `password` (SCRAM-SHA-256), or the error.
    pub async fn client_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user={user} password={password}",
                self.port
            ),
            NoTls,
        )
        .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_sigterm(c.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unsafe_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failing test loses its temp dir, and the server log with it: show its end first.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of the tributary log ({}) ---\n{}",
                self.data_dir.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How long a test waits for the server to answer one statement.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `sql` and returns rows as strings (NULL as None).
pub async fn query(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    // A statement that never answers fails the test here, with the statement, rather than
    // hanging the whole suite.
    let msgs = tokio::time::timeout(STATEMENT_TIMEOUT, client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within {STATEMENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// One value.
pub async fn scalar(client: &Client, sql: &str) -> String {
    query(client, sql)
        .await
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default()
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // An attempt that never returns counts against the deadline too.
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(left.max(Duration::from_secs(1)), f()).await;
        if let Ok(Some(v)) = attempt {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a pipeline reaches `state` (or fails the test if it fails instead).
pub async fn wait_state(client: &Client, pipeline: &str, state: &str) {
    poll(
        Duration::from_secs(300),
        &format!("pipeline {pipeline} to be {state}"),
        || async {
            let rows = query(
                client,
                &format!("SELECT state, error FROM tributary.pipelines WHERE name = '{pipeline}'"),
            )
            .await;
            let row = rows.first()?;
            let s = row[0].clone().unwrap_or_default();
            if s == "failed" && state != "failed" {
                panic!("pipeline {pipeline} failed: {:?}", row[1]);
            }
            (s == state).then_some(())
        },
    )
    .await
}

/// The Python with the independent readers and drivers (set by tests/run.sh).
pub fn python() -> String {
    std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| {
        let venv = format!(
            "{}/.cache/tributary/venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        );
        if Path::new(&venv).exists() {
            venv
        } else {
            "python3".into()
        }
    })
}

/// Runs a Python script with arguments; returns stdout, panics with stderr on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    // deltalake/pyarrow sometimes abort in interpreter teardown ("terminate called without an
    // active exception") after the work is done; leave without teardown once output is flushed.
    let script = format!(
        "{script}\nimport sys as _s, os as _o\n_s.stdout.flush()\n_s.stderr.flush()\n_o._exit(0)\n"
    );
    let out = Command::new(python())
        .arg("-c")
        .arg(&script)
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        script
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Reads a Delta table with the `deltalake` Python package: rows sorted by `id`, one JSON object per line.
pub fn delta_rows(path: &Path, columns: &[&str]) -> Vec<String> {
    let script = r#"
import sys, json, deltalake
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table(columns=sys.argv[2].split(','))
rows = t.sort_by('id').to_pylist()
for r in rows:
    print(json.dumps([r[c] if not hasattr(r[c], 'isoformat') else r[c].isoformat() for c in sys.argv[2].split(',')]))
"#;
    let cols = columns.join(",");
    run_python(script, &[path.to_str().unwrap(), &cols])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `columns` of a Delta table read by the `deltalake` Python package (timestamps as microseconds
/// since the epoch), one row a line, values separated by spaces, rows sorted.
pub fn delta_sorted(path: &Path, columns: &[&str]) -> Vec<String> {
    let script = r#"
import sys, deltalake, pyarrow as pa
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()
def values(c):
    a = t[c]
    if pa.types.is_timestamp(a.type):
        a = a.cast(pa.timestamp('us', tz=a.type.tz)).cast('int64')
    return a.to_pylist()
rows = sorted(zip(*[values(c) for c in sys.argv[2].split(',')]))
print('\n'.join(' '.join(str(v) for v in r) for r in rows))
"#;
    run_python(script, &[path.to_str().unwrap(), &columns.join(",")])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asserts that `got` holds the rows of `want`, naming the first that differs (not the whole
/// lists, which may be long).
pub fn assert_same_rows(got: &[String], want: &[String], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "{what}");
    }
}

/// Count and distinct ids of a Delta table, read by the `deltalake` Python package.
pub fn delta_count_distinct(path: &Path) -> (u64, u64) {
    let script = r#"
import sys, deltalake, pyarrow.compute as pc
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table(columns=['id'])
print(t.num_rows, len(pc.unique(t['id'])))
"#;
    let out = run_python(script, &[path.to_str().unwrap()]);
    let mut it = out.split_whitespace().map(|s| s.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Writes `files` CSV files of `rows` rows each, ids from `first_id`; returns the next id.
pub fn write_csv(dir: &Path, prefix: &str, files: usize, rows: usize, first_id: u64) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut id = first_id;
    for f in 0..files {
        let mut s = String::from("id,customer,amount,ts\n");
        for _ in 0..rows {
            s.push_str(&format!(
                "{id},customer_{},{}.{:02},2026-03-{:02}T{:02}:{:02}:00\n",
                id % 97,
                id % 1000,
                id % 100,
                1 + id % 28,
                id % 24,
                id % 60
            ));
            id += 1;
        }
        std::fs::write(dir.join(format!("{prefix}-{f:04}.csv")), s).unwrap();
    }
    id
}

/// Writes JSON-lines files like [`write_csv`].
pub fn write_json(dir: &Path, prefix: &str, files: usize, rows: usize, first_id: u64) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut id = first_id;
    for f in 0..files {
        let mut s = String::new();
        for _ in 0..rows {
            s.push_str(&format!(
                "{{\"id\":{id},\"customer\":\"customer_{}\",\"amount\":{}.{:02},\"tags\":{{\"k\":1}}}}\n",
                id % 97,
                id % 1000,
                id % 100
            ));
            id += 1;
        }
        std::fs::write(dir.join(format!("{prefix}-{f:04}.jsonl")), s).unwrap();
    }
    id
}

/// A pipeline's rows_in, rows_out and rows_errored (zeros while it is not listed).
pub async fn counters(c: &tokio_postgres::Client, p: &str) -> (u64, u64, u64) {
    let rows = query(
        c,
        &format!(
            "SELECT rows_in, rows_out, rows_errored FROM tributary.pipelines WHERE name = '{p}'"
        ),
    )
    .await;
    let get = |i: usize| {
        rows.first()
            .and_then(|r| r[i].as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get(0), get(1), get(2))
}

/// The random generator of one test's kill points and workload: seeded from `TRIBUTARY_SEED`
/// when set, otherwise at random, and the seed is printed so a failure can be replayed.
pub fn seeded_rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("TRIBUTARY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with TRIBUTARY_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Runs the real `psql` against a server on `port`.
pub fn psql(port: u16, args: &[&str]) -> std::process::Output {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "tributary",
            "-X",
            "-q",
        ])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql is installed (tests/run.sh installs it)")
}

/// A fresh temporary directory and a server over its `data` directory.
pub async fn start_fresh() -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data).await;
    (tmp, server)
}

/// Waits until `pipeline` has committed `epochs` epochs.
pub async fn wait_epoch(c: &Client, pipeline: &str, epochs: u64) {
    let sql = format!("SELECT epoch FROM tributary.pipelines WHERE name = '{pipeline}'");
    poll(
        Duration::from_secs(60),
        &format!("{epochs} epochs of {pipeline}"),
        || async {
            let e: u64 = scalar(c, &sql).await.parse().ok()?;
            (e >= epochs).then_some(())
        },
    )
    .await
}

/// Waits until `pipeline` reads more records than it had read at the call: it is alive.
pub async fn wait_progress(c: &Client, pipeline: &str) {
    let before = counters(c, pipeline).await.0;
    poll(
        Duration::from_secs(60),
        &format!("{pipeline} to move on"),
        || async { (counters(c, pipeline).await.0 > before).then_some(()) },
    )
    .await
}

/// SIGKILLs the server once `pipeline` has read each threshold's rows, restarting it each time;
/// stops early when the run is no longer in progress. Returns the live server and the kill count.
pub async fn kill_at(
    mut server: Server,
    data: &std::path::Path,
    pipeline: &str,
    thresholds: &[u64],
) -> (Server, usize) {
    let mut kills = 0;
    for &threshold in thresholds {
        let c = server.client().await;
        let sql =
            format!("SELECT rows_in, state FROM tributary.pipelines WHERE name = '{pipeline}'");
        let state = poll(
            Duration::from_secs(300),
            "progress before the kill",
            || async {
                let rows = query(&c, &sql).await;
                let n: u64 = rows.first()?.first()?.as_ref()?.parse().ok()?;
                let state = rows[0][1].clone()?;
                (n >= threshold || state != "running").then_some(state)
            },
        )
        .await;
        if state != "running" {
            break;
        }
        server.kill9();
        kills += 1;
        server = Server::start(data).await;
    }
    (server, kills)
}

/// Rows of a query as lines of space-separated values (NULL as empty).
pub async fn query_lines(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    query(c, sql)
        .await
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// SIGKILLs the server twice while `pipeline` reads its `rows`, at seeded points somewhere in
/// the first and second half (a fast machine may finish first), and returns the restarted server.
pub async fn kill_twice(
    server: Server,
    data: &Path,
    pipeline: &str,
    rows: u64,
    test: &str,
) -> Server {
    use rand::Rng;
    let mut rng = seeded_rng(test);
    let thresholds: Vec<u64> = [0.25, 0.6]
        .iter()
        .map(|f| (rows as f64 * (f + rng.random::<f64>() * 0.15)) as u64)
        .collect();
    let (server, kills) = kill_at(server, data, pipeline, &thresholds).await;
    eprintln!("killed {kills} times");
    server
}

/// SIGKILLs the server once in each third of `pipeline`'s reading of `rows`, at seeded points,
/// and returns the restarted server and the kill count.
pub async fn kill_in_each_third(
    server: Server,
    data: &Path,
    pipeline: &str,
    rows: u64,
    test: &str,
) -> (Server, usize) {
    use rand::Rng;
    let mut rng = seeded_rng(test);
    let thresholds: Vec<u64> = (0..3)
        .map(|i| (rows as f64 * (i as f64 + rng.random::<f64>() * 0.8 + 0.1) / 3.0) as u64)
        .collect();
    let (server, kills) = kill_at(server, data, pipeline, &thresholds).await;
    eprintln!("killed {kills} times");
    (server, kills)
}

/// The message of the error `sql` fails with; fails the test when it succeeds.
pub async fn error_message(c: &Client, sql: &str) -> String {
    match c.batch_execute(sql).await {
        Ok(()) => panic!("{sql}: succeeded, an error was expected"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// Kills a helper process (a broker, a registry) and, when the test is failing, prints the end
/// of its log, which goes with its temporary directory.
pub fn stop_showing_log(child: &mut Child, log: &Path, what: &str) {
    let _ = child.kill();
    let _ = child.wait();
    if std::thread::panicking() {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- {what} log (last lines) ---");
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}
