//! Fuzz target: writes arbitrary bytes to a Tributary Postgres-wire server running in this process, then checks that the server still answers a fresh client.
//!
//! Input: the first byte chooses the path; even: a valid startup message (protocol 3.0, user
//! `tributary`) and `SET statement_timeout` go first, so the rest reaches the message loop
//! (Query, Parse/Bind/Execute, COPY...) and a runaway query of the input ends by itself; odd:
//! the rest is sent as is, so it reaches the startup path (SSLRequest, CancelRequest, startup
//! packets, authentication). The connection is half-closed after the input and read until the
//! server closes it or `EXCHANGE` passes.
//!
//! After every input, what it created is dropped (pipelines, sources, sinks, users, secrets:
//! a user would make the next client need a password, a running pipeline would hold the CPU),
//! then a new client must get `1` from `SELECT 1` within `ALIVE_WITHIN`; else the target panics,
//! which libFuzzer reports as a crash with this input. A panic anywhere in the server (a
//! connection's task included) aborts the process too: libfuzzer-sys' panic hook aborts.
#![no_main]

#[path = "fixture.rs"]
mod fixture;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use tributary::sql::parse::{ObjectKind, Statement};
use tributary::Engine;

/// How long one input's connection is written and read at most.
const EXCHANGE: Duration = Duration::from_secs(2);
/// How long the server has to answer `SELECT 1` on a new connection.
const ALIVE_WITHIN: Duration = Duration::from_secs(10);

/// The server, its engine and its address.
struct Server {
    runtime: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    addr: SocketAddr,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // libFuzzer's main, not Rust's, starts the process: SIGPIPE is not ignored yet, and a
        // write to a connection the other side closed would end the process silently.
        // SAFETY: sets a signal's disposition before any thread of ours exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let runtime = fixture::runtime();
        let dir = fixture::data_dir("pgwire_frames");
        let (engine, addr) = runtime.block_on(async {
            let engine = Engine::open(&dir).await.expect("opening the engine");
            // File sources and sinks only under the data directory, not the repository.
            engine.allow_paths(&[]).expect("confining paths");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binding a loopback port");
            let addr = listener.local_addr().expect("the listener's address");
            tokio::spawn(tributary::server::pgwire::serve(
                engine.clone(),
                listener,
                tributary::server::pgwire::WireSettings::default(),
                std::future::pending::<()>(),
            ));
            (engine, addr)
        });
        Server {
            runtime,
            engine,
            addr,
        }
    })
}

/// A Query message (simple query protocol).
fn query(sql: &str) -> Vec<u8> {
    let mut message = vec![b'Q'];
    message.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    message.extend_from_slice(sql.as_bytes());
    message.push(0);
    message
}

/// A StartupMessage: protocol 3.0, user and database `tributary`.
fn startup_message() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for s in [
        "user",
        "tributary",
        "database",
        "tributary",
        "application_name",
        "fuzz",
    ] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

fuzz_target!(|data: &[u8]| {
    let Some((&path, rest)) = data.split_first() else {
        return;
    };
    let s = server();
    let mut bytes = Vec::with_capacity(rest.len() + 64);
    if path % 2 == 0 {
        bytes.extend(startup_message());
        bytes.extend(query("SET statement_timeout = '5s'"));
    }
    bytes.extend_from_slice(rest);
    s.runtime.block_on(async {
        exchange(s.addr, &bytes).await;
        reset(&s.engine).await;
        let first = match answers(s.addr).await {
            Ok(()) => return,
            Err(e) => e,
        };
        // A statement of the input may still have been running at the reset (its connection
        // timed out): reset again and give the server a second chance before calling it dead.
        tokio::time::sleep(Duration::from_secs(1)).await;
        reset(&s.engine).await;
        if let Err(second) = answers(s.addr).await {
            panic!(
                "the server no longer answers SELECT 1 after this input: {first}; again: {second}"
            );
        }
    });
});

/// Writes `bytes` on a new connection, half-closes it, and reads what comes back until the
/// server closes the connection or `EXCHANGE` passes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) {
    let mut socket = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => panic!("the server refused a connection: {e}"),
    };
    let talk = async {
        // The server may close the connection before it read everything: not a failure.
        if socket.write_all(bytes).await.is_ok() {
            let _ = socket.shutdown().await;
        }
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(EXCHANGE, talk).await;
}

/// Drops what an input created, pipelines first (they hold their sources and sinks).
async fn reset(engine: &Engine) {
    let catalog = engine.catalog();
    for p in catalog.pipelines() {
        let drop = Statement::Drop {
            kind: ObjectKind::Pipeline,
            name: p.name.clone(),
            if_exists: true,
            keep_slot: false,
        };
        if engine.execute_statement(&drop, None).await.is_err() {
            let _ = catalog.remove(ObjectKind::Pipeline, &p.name).await;
        }
    }
    // Removed from the catalog directly: DROP SOURCE would contact a CDC source's upstream.
    for s in catalog.sources() {
        let _ = catalog.remove(ObjectKind::Source, &s.name).await;
    }
    for s in catalog.sinks() {
        let _ = catalog.remove(ObjectKind::Sink, &s.name).await;
    }
    for u in catalog.users() {
        let _ = catalog.drop_user(&u.name).await;
    }
    for s in catalog.secrets() {
        let _ = catalog.drop_secret(&s.name).await;
    }
}

/// Whether a new client gets `1` from `SELECT 1` within `ALIVE_WITHIN`.
async fn answers(addr: SocketAddr) -> Result<(), String> {
    let config = format!(
        "host={} port={} user=tributary dbname=tributary connect_timeout=5",
        addr.ip(),
        addr.port()
    );
    let check = async {
        let (client, connection) = tokio_postgres::connect(&config, NoTls)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let connection = tokio::spawn(connection);
        let messages = client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("SELECT 1: {e}"))?;
        drop(client);
        let _ = connection.await;
        let one = messages
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("1")));
        match one {
            true => Ok(()),
            false => Err(format!(
                "SELECT 1 gave no row 1 ({} messages)",
                messages.len()
            )),
        }
    };
    tokio::time::timeout(ALIVE_WITHIN, check)
        .await
        .map_err(|_| format!("no answer within {ALIVE_WITHIN:?}"))?
}
