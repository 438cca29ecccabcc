//! Runs every `sql/slt/**/*.slt` file against a real Tributary pgwire server (in-process, real
//! TCP, real tokio-postgres client), one fresh engine and data directory per file.
//!
//! `cargo test --test slt` runs all; `cargo test --test slt -- ddl` runs files whose path contains `ddl`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio_postgres::{NoTls, SimpleQueryMessage};

struct PgDb {
    client: tokio_postgres::Client,
}

#[derive(Debug)]
struct DbError(tokio_postgres::Error);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(f, "{} [{}]", db.severity(), db.code().code())?;
                if let Some(tokio_postgres::error::ErrorPosition::Original(p)) = db.position() {
                    write!(f, " at position {p}")?;
                }
                write!(f, ": {}", db.message())
            }
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for DbError {}

#[async_trait]
impl AsyncDB for PgDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let messages = self.client.simple_query(sql).await.map_err(DbError)?;
        let mut rows = Vec::new();
        let mut columns = 0;
        let mut saw_rows = false;
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    columns = cols.len();
                    saw_rows = true;
                }
                SimpleQueryMessage::Row(r) => {
                    columns = r.len();
                    saw_rows = true;
                    rows.push(
                        (0..r.len())
                            .map(|i| {
                                r.get(i)
                                    .map(|s| {
                                        if s.is_empty() {
                                            "(empty)".to_string()
                                        } else {
                                            s.to_string()
                                        }
                                    })
                                    .unwrap_or_else(|| "NULL".into())
                            })
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        if saw_rows {
            Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; columns],
                rows,
            })
        } else {
            Ok(DBOutput::StatementComplete(0))
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tributary"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }

    async fn run_command(command: std::process::Command) -> std::io::Result<std::process::Output> {
        tokio::process::Command::from(command).output().await
    }

    fn error_sql_state(err: &DbError) -> Option<String> {
        err.0.code().map(|c| c.code().to_string())
    }
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            slt_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "slt") {
            out.push(p);
        }
    }
}

async fn run_file(path: &Path, root: &Path) -> Result<(), String> {
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let engine = tributary::Engine::open(data.path())
        .await
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tributary::server::pgwire::serve(
        engine.clone(),
        listener,
        tributary::server::pgwire::WireSettings::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let conn_str = format!("host=127.0.0.1 port={port} user=tributary dbname=tributary");
    let mut runner = sqllogictest::Runner::new(move || {
        let conn_str = conn_str.clone();
        async move {
            let (client, conn) = tokio_postgres::connect(&conn_str, NoTls)
                .await
                .map_err(DbError)?;
            tokio::spawn(conn);
            Ok(PgDb { client })
        }
    });
    runner.set_var(
        "FIXTURES".into(),
        root.join("sql/fixtures").display().to_string(),
    );
    runner.set_var("DATA_DIR".into(), data.path().display().to_string());
    let result = runner
        .run_file_async(path)
        .await
        .map_err(|e| e.display(true).to_string());
    let _ = stop_tx.send(());
    let _ = server.await;
    engine.shutdown().await;
    result
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut files = Vec::new();
    slt_files(&root.join("sql/slt"), &mut files);
    files.sort();
    files.retain(|f| {
        filter.is_empty() || filter.iter().any(|p| f.display().to_string().contains(p))
    });
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut failures = Vec::new();
    for f in &files {
        let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        match rt.block_on(run_file(f, &root)) {
            Ok(()) => println!("ok   {name}"),
            Err(e) => {
                println!("FAIL {name}\n{e}");
                failures.push(name);
            }
        }
    }
    println!("{} slt files, {} failed", files.len(), failures.len());
    let _ = Arc::new(());
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
