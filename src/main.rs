//! The `tributary` command: `serve` runs the engine behind a Postgres-wire server, `run` executes
//! a SQL script embedded and waits for its batch pipelines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary::catalog::PipelineState;
use tributary::sql::parse::{parse_sql, Statement};
use tributary::{Engine, Output};

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "SQL-first streaming ETL: sources, sinks and pipelines in SQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine and serve Postgres-wire clients (psql -h 127.0.0.1 -p 7432 -U tributary)
    /// and HTTP (the JSON API under /api/v1, /metrics, /healthz, /readyz).
    Serve {
        /// Where the catalog, checkpoints and logs live.
        #[arg(long, default_value = "tributary-data")]
        data_dir: PathBuf,
        /// Address for Postgres-wire clients.
        #[arg(long, default_value = "127.0.0.1:7432")]
        pg_listen: SocketAddr,
        /// Address for HTTP: a loopback address until TLS exists.
        #[arg(long, default_value = tributary::server::http::DEFAULT_HTTP_LISTEN)]
        http_listen: SocketAddr,
        /// A file holding the password of the `admin` user, created at the first start with it
        /// (or set TRIBUTARY_ADMIN_PASSWORD). Once a user exists every client authenticates;
        /// until then only loopback connections are accepted, trusted.
        #[arg(long)]
        admin_password_file: Option<PathBuf>,
        /// The server's certificate chain (PEM) for TLS on the Postgres wire protocol.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Refuse Postgres clients that do not use TLS (needs --tls-cert).
        #[arg(long, requires = "tls_cert")]
        require_tls: bool,
        /// Postgres-wire connections at once; the next is refused (53300).
        #[arg(long, default_value_t = 100)]
        max_connections: usize,
        /// The longest Postgres-wire message a client may send (a statement, a COPY chunk),
        /// such as `64MB`; a longer one ends its connection (54000).
        #[arg(long, default_value = "64MB", value_parser = message_size)]
        max_message_size: usize,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Execute a SQL script embedded, waiting for batch pipelines to complete.
    Run {
        /// The script.
        script: PathBuf,
        /// Where the catalog, checkpoints and logs live.
        #[arg(long, default_value = "tributary-data")]
        data_dir: PathBuf,
        /// No progress display, and no log lines below warnings (unless RUST_LOG is set).
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        paths: PathArgs,
    },
}

/// Who the Postgres-wire listener takes.
struct WireLimits {
    require_tls: bool,
    max_connections: usize,
    max_message_size: usize,
}

/// A `--max-message-size` value: a size such as `64MB`, at least 1 kB (a startup message and
/// the statements of psql's \d fit) and under PostgreSQL's 1 GB ceiling.
fn message_size(value: &str) -> Result<usize, String> {
    match tributary_connectors::options::parse_size(value) {
        Some(n) if (1024..=(1 << 30) - 1).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{value}' is not a size between 1kB and 1GB (such as 64MB)"
        )),
    }
}

/// Where file sources and sinks may read and write.
#[derive(clap::Args)]
struct PathArgs {
    /// A directory file sources and sinks may use besides the data directory (repeatable;
    /// replaces the default, the working directory).
    #[arg(
        long = "allow-path",
        env = "TRIBUTARY_ALLOW_PATH",
        value_delimiter = ':'
    )]
    allow_paths: Vec<PathBuf>,
}

impl PathArgs {
    /// Applies the directories given, if any, to `engine`.
    fn apply(&self, engine: &Engine) -> tributary::Result<()> {
        if self.allow_paths.is_empty() {
            return Ok(());
        }
        engine.allow_paths(&self.allow_paths)
    }
}

/// `mi_option_purge_delay` in mimalloc v2's `mimalloc.h` (libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc: Arrow buffers are allocated and freed per batch; glibc returns large ones to the
/// kernel and faults fresh pages in again, mimalloc keeps and reuses them. Measured on the Nexmark
/// generator alone (100 M bids): 15-16.6 M bids/s against 8-11.5 M with glibc, whose system time
/// swung from 0.6 to 5 s between runs. The cost is peak RSS: 10 M rows into Delta peaked at
/// 440-480 MB against 270-370 MB with glibc (measured with 1 Mi-row Parquet row groups).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stack of every runtime thread. Planning, optimising and evaluating a statement recurse once per
/// nesting level; statements nest at most `MAX_NESTING_DEPTH` levels (parse.rs), which this holds
/// with room to spare. Only the pages a thread touches are committed.
const THREAD_STACK_BYTES: usize = 16 * 1024 * 1024;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a runtime thread, not on main's smaller stack.
    runtime.block_on(async {
        tokio::spawn(async_main()).await.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })
    })
}

async fn async_main() -> ExitCode {
    // Freed pages go back to the OS after 1 s of disuse instead of 10 ms: a pipeline frees and
    // reallocates its batch buffers every few milliseconds, and each purge costs page faults and
    // zeroed pages on the next batch (q0 over JSON lines: 0.7-0.8 s of system time down to 0.5-0.6).
    // MIMALLOC_PURGE_DELAY, when set, has the last word.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; mimalloc documents it as callable at
        // any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    }
    let cli = Cli::parse();
    tributary::telemetry::init(matches!(cli.command, Command::Run { quiet: true, .. }));
    let result = match cli.command {
        Command::Serve {
            data_dir,
            pg_listen,
            http_listen,
            admin_password_file,
            tls_cert,
            tls_key,
            require_tls,
            max_connections,
            max_message_size,
            paths,
        } => {
            let tls = tls_cert.zip(tls_key);
            serve(
                data_dir,
                pg_listen,
                http_listen,
                admin_password_file,
                tls,
                WireLimits {
                    require_tls,
                    max_connections,
                    max_message_size,
                },
                paths,
            )
            .await
        }
        Command::Run {
            script,
            data_dir,
            quiet,
            paths,
        } => run(script, data_dir, quiet, paths).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(
    data_dir: PathBuf,
    pg_listen: SocketAddr,
    http_listen: SocketAddr,
    admin_password_file: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
    limits: WireLimits,
    paths: PathArgs,
) -> anyhow::Result<ExitCode> {
    use tributary::server::http;
    let identity = match &tls {
        Some((cert, key)) => Some(tributary::server::tls::identity(cert, key)?),
        None => None,
    };
    // Refused before anything starts: a non-loopback HTTP address without TLS.
    if identity.is_none() && !http_listen.ip().is_loopback() {
        return Err(http::HttpError::NotLoopback { addr: http_listen }.into());
    }
    let settings = tributary::server::pgwire::WireSettings {
        tls: identity.as_ref().map(|i| i.pgwire()),
        tls_chain_pem: identity.as_ref().map(|i| i.chain_pem().to_vec()),
        require_tls: limits.require_tls,
        max_connections: Some(limits.max_connections.max(1)),
        max_message_size: limits.max_message_size,
    };
    let engine = Engine::open(&data_dir)
        .await
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    paths.apply(&engine)?;
    create_admin(&engine, admin_password_file).await?;
    // Beyond loopback, HTTP needs TLS and users to authenticate.
    let http_listener = http::bind(
        http_listen,
        identity.is_some() && engine.catalog().requires_authentication(),
    )
    .await?;
    if !engine.catalog().requires_authentication() && !pg_listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {pg_listen}: no users exist, so connections would be trusted \
             without a password; give the admin user's password (--admin-password-file or \
             TRIBUTARY_ADMIN_PASSWORD), or listen on a loopback address such as 127.0.0.1"
        );
    }
    let listener = tributary::server::pgwire::bind(pg_listen)
        .await
        .with_context(|| format!("listening on {pg_listen}"))?;
    let ready = Arc::new(AtomicBool::new(false));
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_server = tokio::spawn(http::serve(
        http_listener,
        http::router(engine.clone(), ready.clone()),
        identity.as_ref().map(|i| i.http()),
        async {
            let _ = http_stopped.await;
        },
    ));
    tracing::info!(addr = %pg_listen, http = %http_listen, data_dir = %data_dir.display(), tls = tls.is_some(), "Tributary is serving Postgres-wire clients and HTTP.");
    engine.resume_pipelines().await?;
    ready.store(true, Ordering::Release);
    tributary::server::pgwire::serve(engine.clone(), listener, settings, shutdown_signal()).await?;
    let _ = http_stop.send(());
    // Open HTTP connections get a few seconds to finish; the final checkpoints do not wait on
    // a stuck client.
    let abort = http_server.abort_handle();
    match tokio::time::timeout(Duration::from_secs(5), http_server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "The HTTP server failed."),
        Ok(Err(e)) => tracing::warn!(error = %e, "The HTTP server's task failed."),
        Ok(Ok(Ok(()))) => {}
        Err(_) => {
            tracing::warn!("HTTP connections still open after 5 s: closed.");
            abort.abort();
        }
    }
    tracing::info!("Shutting down: taking final checkpoints.");
    engine.shutdown().await;
    tracing::info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

/// The `admin` user, created with the password given at this start unless it exists (its
/// password is then changed with ALTER USER, not here).
async fn create_admin(engine: &Engine, password_file: Option<PathBuf>) -> anyhow::Result<()> {
    let password = match password_file {
        Some(file) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading the admin password from {}", file.display()))?;
            Some(text.trim_end_matches(['\n', '\r']).to_string())
        }
        None => std::env::var("TRIBUTARY_ADMIN_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
    };
    let Some(password) = password else {
        return Ok(());
    };
    if engine.catalog().user("admin").is_some() {
        return Ok(());
    }
    engine
        .catalog()
        .add_user("admin", &password, tributary::catalog::users::Role::Admin)
        .await
        .context("creating the admin user")?;
    tracing::info!("Created the admin user: clients now authenticate (SCRAM-SHA-256).");
    Ok(())
}

async fn run(
    script: PathBuf,
    data_dir: PathBuf,
    quiet: bool,
    paths: PathArgs,
) -> anyhow::Result<ExitCode> {
    let sql = std::fs::read_to_string(&script)
        .with_context(|| format!("reading {}", script.display()))?;
    let engine = Engine::open(&data_dir)
        .await
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    paths.apply(&engine)?;
    let statements = match parse_sql(&sql) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {}", script.display(), describe_error(&sql, &e, 0));
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut failed = false;
    let mut streaming = Vec::new();
    for stmt in statements {
        let started = Instant::now();
        match engine.execute(&stmt).await {
            Ok(Output::Rows { batches, .. }) => {
                match arrow::util::pretty::pretty_format_batches(&batches) {
                    Ok(t) => println!("{t}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            Ok(Output::Command(tag)) => {
                if !quiet {
                    eprintln!("{tag}");
                }
            }
            Ok(Output::Empty) => {}
            Ok(Output::Notice(notice, _)) => eprintln!("NOTICE: {notice}"),
            Err(e) => {
                eprintln!(
                    "{}: {}",
                    script.display(),
                    describe_error(&sql, &e, stmt.offset)
                );
                failed = true;
                break;
            }
        }
        let pipeline = match &stmt.statement {
            Statement::CreatePipeline { name, .. } | Statement::StartPipeline { name } => {
                Some(name.clone())
            }
            _ => None,
        };
        if let Some(name) = pipeline {
            let Some(entry) = engine.catalog().pipeline(&name) else {
                continue;
            };
            if entry.options.get("mode").map(String::as_str) == Some("streaming") {
                streaming.push(name);
                continue;
            }
            let state = wait_with_progress(&engine, &name, quiet).await;
            let status = engine.runtime().status(&name, "", state, None);
            let st = status.snapshot();
            let secs = started.elapsed().as_secs_f64();
            let operators = status.operators();
            let state_rows: u64 = operators.iter().map(|o| o.state_rows).sum();
            let state_bytes: u64 = operators.iter().map(|o| o.state_bytes).sum();
            let spilled_bytes: u64 = operators.iter().map(|o| o.spilled_bytes).sum();
            eprintln!(
                "pipeline {name}: {} — {} rows in, {} rows out, {} errored in {secs:.1}s ({:.0} rows/s); state at the end: {state_rows} rows, {state_bytes} bytes in memory, {spilled_bytes} spilled",
                state.as_str(),
                st.rows_in,
                st.rows_out,
                st.rows_errored,
                st.rows_in as f64 / secs.max(1e-9)
            );
            if state == PipelineState::Failed {
                eprintln!("pipeline {name} failed: {}", st.error.unwrap_or_default());
                failed = true;
                break;
            }
        }
    }
    if !failed && !streaming.is_empty() {
        eprintln!(
            "streaming pipelines {} run until Ctrl-C",
            streaming.join(", ")
        );
        shutdown_signal().await;
    }
    engine.shutdown().await;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn wait_with_progress(engine: &Engine, name: &str, quiet: bool) -> PipelineState {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let started = Instant::now();
    let status = engine
        .runtime()
        .status(name, "", PipelineState::Running, None);
    let wait = engine.wait_pipeline(name);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            state = &mut wait => {
                bar.finish_and_clear();
                return state.unwrap_or(PipelineState::Failed);
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let rows = status.rows_in.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "{name}: {rows} rows in, {} out, {} errored, epoch {} ({:.0} rows/s)",
                    status.rows_out.load(Ordering::Relaxed),
                    status.rows_errored.load(Ordering::Relaxed),
                    status.epoch.load(Ordering::Relaxed),
                    rows as f64 / secs.max(1e-9)
                ));
                bar.tick();
            }
        }
    }
}

/// `ERROR [SQLSTATE]: message` plus the line and a caret under the position, like psql.
fn describe_error(sql: &str, e: &tributary::Error, offset: usize) -> String {
    let mut s = format!("ERROR [{}]: {e}", e.sqlstate());
    if let Some(pos) = e.position() {
        let pos = pos + offset;
        let before: String = sql.chars().take(pos.saturating_sub(1)).collect();
        let line_no = before.matches('\n').count() + 1;
        let col = before.chars().rev().take_while(|c| *c != '\n').count();
        if let Some(line) = sql.lines().nth(line_no - 1) {
            s.push_str(&format!(
                "\nLINE {line_no}: {line}\n{}^",
                " ".repeat(col + format!("LINE {line_no}: ").len())
            ));
        }
    }
    s
}
