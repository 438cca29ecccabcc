//! Fuzz target: parses and plans any SQL text as the engine does (CREATE SOURCE/SINK/PIPELINE, SELECT, EXPLAIN, SET...) against a catalog of a few sources and sinks, without running a pipeline or a query.
//!
//! Input: UTF-8 SQL (anything else is skipped). Errors are expected; a panic, an abort or a stack
//! overflow is the bug. What each statement goes through:
//! - all: `sql::redact::redact_statement` (what `tributary.sessions` shows), `sql::parse::parse_sql`,
//!   `server::access::check`, and for errors `Error::located_in` and `server::pgwire::error_info`,
//!   as the server does;
//! - SELECT, EXPLAIN...: `engine::session_statement`, `Engine::plan_query`, then DataFusion's
//!   physical planning (nothing executes: a source's scan starts reading only when executed);
//! - CREATE SOURCE/SINK: `sql::types::schema_from_columns`, the connector's option names
//!   (`Options::validate`), `paths::AllowedPaths::check`, `upsert_key`, `sql::windows::event_time`
//!   for a watermark, and `validate` only where it reads nothing (nexmark, blackhole, delta);
//! - CREATE PIPELINE: its WITH options as `jobs` reads them, the sink's key, then
//!   `sql::plan::compile` and what the engine asks of the plan before it stores the pipeline;
//! - SHOW, SHOW CREATE: `Engine::execute_statement` (they only read the catalog);
//! - START/STOP/DROP, users and secrets: parsed only (they change the catalog or the runtime).
//!
//! Planning uses the engine's own DataFusion session (`Engine::session`).
#![no_main]

#[path = "fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use datafusion::prelude::SessionContext;
use libfuzzer_sys::fuzz_target;
use tributary::catalog::users::Role;
use tributary::paths::AllowedPaths;
use tributary::sql::parse::{parse_sql, Statement};
use tributary::sql::plan::{compile, Target};
use tributary::{Engine, Error, Result};
use tributary_connectors::{SinkSpec, SourceSpec};

/// The sources and sinks every input is planned against (`{dir}` is the data directory).
const CATALOG: &str = "
CREATE SOURCE bids (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'bid', events = 1000, seed = 1);
CREATE SOURCE auctions (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'auction', events = 1000, seed = 1);
CREATE SOURCE persons WITH (connector = 'nexmark', table = 'person', events = 1000);
CREATE SOURCE orders (id BIGINT NOT NULL, customer TEXT, currency TEXT, amount DOUBLE, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
  WITH (connector = 'file', path = '{dir}/in/orders/*.csv', format = 'csv');
CREATE SOURCE customers (seq BIGINT, id BIGINT, region TEXT, name TEXT, balance BIGINT, _op TEXT, PRIMARY KEY (id))
  WITH (connector = 'file', path = '{dir}/in/changes/*.jsonl', format = 'json');
CREATE SOURCE rates (seq BIGINT, currency TEXT, rate DOUBLE, _op TEXT, _commit_ts TIMESTAMP,
  PRIMARY KEY (currency), WATERMARK FOR _commit_ts AS _commit_ts)
  WITH (connector = 'file', path = '{dir}/in/rates/', format = 'json');
CREATE SINK hole WITH (connector = 'blackhole');
CREATE SINK log WITH (connector = 'parquet', path = '{dir}/out/log');
CREATE SINK totals WITH (connector = 'delta', path = '{dir}/out/totals', mode = 'upsert');
CREATE SINK keyed WITH (connector = 'delta', path = '{dir}/out/keyed', mode = 'upsert', key = 'id');
";

/// A line of each file source's input, so that listing and planning find a file.
const INPUT_FILES: &[(&str, &str)] = &[
    (
        "in/orders/orders.csv",
        "id,customer,currency,amount,ts\n1,ann,EUR,12.5,2024-01-01T00:00:00\n",
    ),
    (
        "in/changes/customers.jsonl",
        "{\"seq\":1,\"id\":1,\"region\":\"eu\",\"name\":\"ann\",\"balance\":10,\"_op\":\"insert\"}\n",
    ),
    (
        "in/rates/rates.jsonl",
        "{\"seq\":1,\"currency\":\"EUR\",\"rate\":1.1,\"_op\":\"insert\",\"_commit_ts\":\"2024-01-01T00:00:00\"}\n",
    ),
];

/// The engine over the catalog above, a session planned in as the engine plans, and the
/// directories file sources and sinks may use (the engine's own are private too).
struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    ctx: SessionContext,
    paths: AllowedPaths,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = fixture::runtime();
        let dir = fixture::data_dir("sql_front_end");
        for (path, text) in INPUT_FILES {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().expect("a file in a directory"))
                .expect("creating an input directory");
            std::fs::write(&path, text).expect("writing an input file");
        }
        let engine = runtime.block_on(async {
            let engine = Engine::open(&dir).await.expect("opening the engine");
            // Only the data directory, not the working directory (the repository).
            engine.allow_paths(&[]).expect("confining paths");
            let catalog = CATALOG.replace("{dir}", &dir.display().to_string());
            if let Err(e) = engine.execute_sql(&catalog).await {
                panic!("setting up the fuzz catalog failed: {e}");
            }
            engine
        });
        let ctx = runtime.block_on(async { engine_session(&engine) });
        let paths = AllowedPaths::new(&dir);
        paths.set(&dir, &[]).expect("confining paths");
        Fixture {
            runtime,
            engine,
            ctx,
            paths,
        }
    })
}

/// The engine's DataFusion session: its settings, functions, table functions and schemas.
fn engine_session(engine: &Engine) -> SessionContext {
    engine.session().clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    // On a runtime thread, as the server plans (main.rs gives those threads their stack).
    let planned = f
        .runtime
        .block_on(f.runtime.spawn(plan_text(f, text.to_owned())));
    if let Err(e) = planned {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
});

/// Parses `text` and plans each of its statements, rendering errors as the server would.
async fn plan_text(f: &'static Fixture, text: String) {
    let _ = tributary::sql::redact::redact_statement(&text);
    let statements = match parse_sql(&text) {
        Ok(s) => s,
        Err(e) => {
            render(&e, 0);
            return;
        }
    };
    for stmt in &statements {
        // Who may run it, as the server asks before running anything.
        let _ = tributary::server::access::check(&stmt.statement, Role::Reader, "fuzz");
        if let Err(e) = plan(f, &stmt.statement).await {
            render(&e.located_in(&stmt.text), stmt.offset);
        }
    }
}

/// What a client is shown of an error: SQLSTATE, message, position.
fn render(e: &Error, offset: usize) {
    let _ = tributary::server::pgwire::error_info(e, offset);
    let _ = (
        e.sqlstate(),
        e.position(),
        e.is_resource_error(),
        e.to_string(),
    );
}

/// Plans one statement as the engine would, stopping short of changing the catalog or running.
async fn plan(f: &Fixture, statement: &Statement) -> Result<()> {
    match statement {
        Statement::Sql(stmt) => {
            if tributary::engine::session_statement(stmt).is_some() {
                return Ok(());
            }
            let logical = f.engine.plan_query(stmt).await?;
            // The result's column names as a client is shown them.
            let schema = Arc::new(logical.schema().as_arrow().clone());
            let _ = tributary::sql::column_names::postgres_names(stmt, &schema);
            f.ctx.state().create_physical_plan(&logical).await?;
        }
        Statement::CreateSource {
            name,
            columns,
            watermark,
            options,
            ..
        } => {
            let declared = match columns {
                Some(cols) => Some(Arc::new(tributary::sql::types::schema_from_columns(cols)?)),
                None => None,
            };
            let connector = tributary_connectors::source_connector(options)?;
            tributary::engine::check_option_names(connector.name(), connector.options(), options)?;
            f.paths.check(options)?;
            let spec = SourceSpec {
                name: name.clone(),
                schema: declared.clone(),
                options: options.clone(),
            };
            let _ = connector.is_bounded(&spec);
            let schema = match (connector.name(), declared) {
                // A generator: validate reads nothing.
                ("nexmark", _) => connector.validate(&spec).await?,
                (_, Some(declared)) => declared,
                // The engine would read the files or the upstream table to infer the columns.
                (_, None) => return Ok(()),
            };
            if let Some((column, expression)) = watermark {
                tributary::sql::windows::event_time(&f.ctx.state(), &schema, column, expression)?;
            }
        }
        Statement::CreateSink { name, options, .. } => {
            let connector = tributary_connectors::sink_connector(options)?;
            tributary::engine::check_option_names(connector.name(), connector.options(), options)?;
            f.paths.check(options)?;
            let spec = SinkSpec {
                name: name.clone(),
                options: options.clone(),
            };
            connector.upsert_key(&spec)?;
            // These two only read their options.
            if matches!(connector.name(), "blackhole" | "delta") {
                connector.validate(&spec).await?;
            }
        }
        Statement::CreatePipeline {
            options,
            sink,
            query,
            ..
        } => {
            pipeline_options(options);
            let catalog = f.engine.catalog();
            let Some(sink_entry) = catalog.sink(sink) else {
                return Ok(());
            };
            let sink_options = catalog.resolve_options(&sink_entry.options)?;
            let sink_connector = tributary_connectors::sink_connector(&sink_options)?;
            let key = sink_connector.upsert_key(&SinkSpec {
                name: sink_entry.name.clone(),
                options: sink_options,
            })?;
            let target = Target {
                applies_by_key: key.is_some(),
                groups_expire: options.contains_key("state_ttl"),
            };
            let _ = tributary::sql::places::Places::of(query);
            let compiled = compile(&f.ctx.state(), query, target).await?;
            // What the engine asks of a plan before it stores the pipeline.
            let _ = (
                compiled.joins_changes(),
                compiled.ranks(),
                compiled.keeps_unbounded_rows(),
                compiled.table_inputs(),
                compiled.lookups(),
                compiled.regular_join_sides(),
            );
            for source in compiled.sources() {
                if let Some(entry) = catalog.source(&source) {
                    let connector = tributary_connectors::source_connector(&entry.options)?;
                    let _ = connector.is_bounded(&SourceSpec {
                        name: entry.name.clone(),
                        schema: None,
                        options: entry.options.clone(),
                    });
                }
            }
            let _ = tributary::sql::as_of::query_text(query);
        }
        Statement::Show { .. } | Statement::ShowCreate { .. } => {
            f.engine.execute_statement(statement, None).await?;
        }
        // START/STOP/DROP, users and secrets change the catalog or the runtime: parsed only.
        _ => {}
    }
    Ok(())
}

/// A pipeline's WITH options read as `jobs::pipeline_settings` (crate-private) reads them.
fn pipeline_options(options: &BTreeMap<String, String>) {
    use tributary::jobs::{parse_duration, parse_size};
    for (k, v) in options {
        match k.as_str() {
            "checkpoint_interval" | "idle_timeout" | "state_ttl" => {
                let _ = parse_duration(v);
            }
            "state_memory" => {
                let _ = parse_size(v);
            }
            "parallelism" => {
                let _ = v.trim().parse::<usize>();
            }
            _ => {}
        }
    }
}
