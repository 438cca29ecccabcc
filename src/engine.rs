//! The control plane's core: executes statements against the catalog, the SQL planner and the
//! runtime. The pgwire server, `tributary run` and tests all drive Tributary through [`Engine`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chrono::Utc;
use datafusion::common::ParamValues;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;
use tributary_connectors::{SinkSpec, SourceSpec};

use crate::catalog::users::Role;
use crate::catalog::{columns_of, Catalog, PipelineEntry, PipelineState, SinkEntry, SourceEntry};
use crate::error::{Error, Result};
use crate::health::History;
use crate::jobs::{applies_by_key, build_job, check_pipeline_options, check_updates_sink};
use crate::paths::AllowedPaths;
use crate::runtime::Runtime;
use crate::sessions::Sessions;
use crate::sql::column_names::postgres_names;
use crate::sql::parse::{parse_sql, ObjectKind, ParsedStatement, Statement};
use crate::sql::plan::{compile, Target};
use crate::sql::session_window::{Session, SESSION_NAMES};
use crate::sql::types::schema_from_columns;
use crate::sql::windows::{event_time, Hop, Tumble};
use crate::system_tables::{columns_text, options_text, CatalogSchema, SystemSchema};

/// What a statement produced.
#[derive(Debug)]
pub enum Output {
    /// A command with its tag (`CREATE SOURCE`, `SET`).
    Command(String),
    /// Rows.
    Rows {
        /// Their schema.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
    },
    /// Nothing (only comments).
    Empty,
    /// A message for the user (a NOTICE), then the output.
    Notice(String, Box<Output>),
}

/// The engine: catalog, planner and runtime behind one `execute`.
pub struct Engine {
    data_dir: PathBuf,
    catalog: Arc<Catalog>,
    runtime: Arc<Runtime>,
    sessions: Arc<Sessions>,
    system: Arc<SystemSchema>,
    history: Arc<History>,
    ctx: SessionContext,
    /// Where file sources and sinks may read and write.
    paths: AllowedPaths,
}

impl Engine {
    /// Opens the engine over a data directory (created when absent).
    pub async fn open(data_dir: &Path) -> Result<Arc<Self>> {
        let catalog = Arc::new(Catalog::open(data_dir)?);
        catalog.events().record(
            "engine_start",
            "engine",
            "tributary",
            format!(
                "Tributary {} opened {}",
                env!("CARGO_PKG_VERSION"),
                data_dir.display()
            ),
        );
        let runtime = Arc::new(Runtime::new(data_dir.to_path_buf(), catalog.clone()));
        let sessions = Arc::new(Sessions::default());
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public")
            .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
            .set_str("datafusion.sql_parser.dialect", "PostgreSQL")
            // Errors point at the place in the statement (an unknown column, a bad argument).
            .set_bool("datafusion.sql_parser.collect_spans", true);
        // Sinks grow while they are queried: DataFusion's list-files cache (on by default, kept
        // forever) would pin a Parquet sink's query to the files of its first listing.
        let runtime_env = RuntimeEnvBuilder::new()
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
            .build_arc()?;
        let ctx = SessionContext::new_with_config_rt(config, runtime_env);
        ctx.register_udf(crate::sql::fast_to_char::fast_to_char(
            datafusion::functions::datetime::to_char(),
        ));
        let df_catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| Error::Internal("DataFusion default catalog missing".into()))?;
        df_catalog.register_schema("public", Arc::new(CatalogSchema::new(catalog.clone())))?;
        // DataFusion looks table functions up by the name as written, unfolded.
        for name in ["tumble", "TUMBLE", "Tumble"] {
            ctx.register_udtf(name, Arc::new(Tumble::new(catalog.clone())));
        }
        for name in ["hop", "HOP", "Hop"] {
            ctx.register_udtf(name, Arc::new(Hop::new(catalog.clone())));
        }
        for name in SESSION_NAMES {
            ctx.register_udtf(name, Arc::new(Session::new(catalog.clone())));
        }
        let history = Arc::new(History::default());
        let system = Arc::new(SystemSchema::new(
            catalog.clone(),
            runtime.clone(),
            sessions.clone(),
            history.clone(),
        ));
        df_catalog.register_schema("tributary", system.clone())?;
        crate::sampler::spawn(Arc::downgrade(&system), history.clone());
        crate::pg_catalog::register(&ctx, catalog.clone())?;
        let runs: Vec<_> = catalog
            .pipelines()
            .into_iter()
            .map(|p| {
                (
                    p.name,
                    p.id,
                    p.options.get("mode").cloned().unwrap_or_default(),
                    p.state,
                    p.error,
                )
            })
            .collect();
        runtime.load_history(&runs).await?;
        Ok(Arc::new(Engine {
            data_dir: data_dir.to_path_buf(),
            catalog,
            runtime,
            sessions,
            system,
            history,
            ctx,
            paths: AllowedPaths::new(data_dir),
        }))
    }

    /// File sources and sinks may use the data directory and `roots` (`--allow-path`), no
    /// longer the working directory.
    pub fn allow_paths(&self, roots: &[PathBuf]) -> Result<()> {
        self.paths.set(&self.data_dir, roots)
    }

    /// The system tables (`tributary.*`).
    pub fn system(&self) -> &Arc<SystemSchema> {
        &self.system
    }

    /// The pipelines' figures sampled over the last minutes.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// The DataFusion session statements are planned in (for the fuzz targets, which plan
    /// without running).
    #[doc(hidden)]
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The client sessions of the server.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts every pipeline the catalog says was running (after a restart or crash).
    pub async fn resume_pipelines(&self) -> Result<()> {
        for p in self.catalog.pipelines() {
            if p.state == PipelineState::Running {
                tracing::info!(pipeline = %p.name, "Resuming pipeline.");
                let resumed = self.start_pipeline(&p.name).await;
                if resumed.is_ok() {
                    self.catalog.events().record(
                        "recovery",
                        "pipeline",
                        &p.name,
                        "resumed from its last checkpoint after the engine restarted",
                    );
                }
                if let Err(e) = resumed {
                    tracing::error!(pipeline = %p.name, error = %e, "Could not resume pipeline.");
                    self.catalog
                        .set_pipeline_state(&p.name, PipelineState::Failed, Some(e.to_string()))
                        .await?;
                    self.runtime
                        .status(&p.name, "", PipelineState::Failed, None)
                        .set_state(PipelineState::Failed, Some(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Stops all pipelines after a final checkpoint; they resume at the next start.
    pub async fn shutdown(&self) {
        self.runtime.shutdown().await;
        self.catalog.events().record(
            "engine_stop",
            "engine",
            "tributary",
            "shut down; running pipelines stopped after a final checkpoint and resume at the next start",
        );
    }

    /// Parses and executes every statement of `sql`, stopping at the first error.
    pub async fn execute_sql(&self, sql: &str) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        for stmt in parse_sql(sql)? {
            out.push(self.execute(&stmt).await?);
        }
        Ok(out)
    }

    /// Executes one parsed statement.
    pub async fn execute(&self, stmt: &ParsedStatement) -> Result<Output> {
        self.execute_statement(&stmt.statement, None)
            .await
            .map_err(|e| e.located_in(&stmt.text))
    }

    /// Executes one statement, binding `$n` parameters when given.
    pub async fn execute_statement(
        &self,
        statement: &Statement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        let tag = statement.tag();
        match statement {
            Statement::Empty => Ok(Output::Empty),
            Statement::CreateSource {
                name,
                if_not_exists,
                columns,
                primary_key,
                watermark,
                options,
            } => {
                if self.exists_as_table(name) {
                    return self.exists(*if_not_exists, "source", name, tag);
                }
                let declared = match columns {
                    Some(cols) => Some(Arc::new(schema_from_columns(cols)?)),
                    None => None,
                };
                for k in primary_key {
                    if let Some(s) = &declared {
                        if s.field_with_name(k).is_err() {
                            return Err(Error::Plan(format!(
                                "PRIMARY KEY column \"{k}\" is not a declared column"
                            )));
                        }
                    }
                }
                let connector = tributary_connectors::source_connector(options)?;
                // Its options named right, and its paths allowed, before it reads anything.
                check_option_names(connector.name(), connector.options(), options)?;
                self.paths.check(options)?;
                // The connector sees the primary key as a run does: in the schema's metadata.
                let with_key = declared.clone().map(|s| match primary_key.is_empty() {
                    true => s,
                    false => Arc::new(
                        s.as_ref().clone().with_metadata(
                            [(
                                tributary_connectors::PRIMARY_KEY_METADATA.to_string(),
                                primary_key.join(","),
                            )]
                            .into(),
                        ),
                    ),
                });
                let spec = SourceSpec {
                    name: name.clone(),
                    schema: with_key,
                    options: self.catalog.resolve_options(options)?,
                };
                let schema = connector.validate(&spec).await?;
                if let Some((column, expression)) = watermark {
                    event_time(&self.ctx.state(), &schema, column, expression)?;
                }
                let mut primary_key = primary_key.clone();
                if primary_key.is_empty() {
                    if let Some(k) = schema
                        .metadata()
                        .get(tributary_connectors::PRIMARY_KEY_METADATA)
                    {
                        primary_key = k.split(',').map(str::to_string).collect();
                    }
                }
                self.catalog
                    .add_source(SourceEntry {
                        added_columns: Vec::new(),
                        name: name.clone(),
                        columns: columns_of(&schema),
                        declared: declared.is_some(),
                        primary_key,
                        watermark: watermark.clone(),
                        options: options.clone(),
                        created_at: Utc::now(),
                    })
                    .await
                    .or_else(|e| if_not_exists_race(e, *if_not_exists))?;
                Ok(Output::Command(tag))
            }
            Statement::CreateSink {
                name,
                if_not_exists,
                options,
            } => {
                if self.exists_as_table(name) {
                    return self.exists(*if_not_exists, "sink", name, tag);
                }
                let connector = tributary_connectors::sink_connector(options)?;
                check_option_names(connector.name(), connector.options(), options)?;
                self.paths.check(options)?;
                connector
                    .validate(&SinkSpec {
                        name: name.clone(),
                        options: self.catalog.resolve_options(options)?,
                    })
                    .await?;
                self.catalog
                    .add_sink(SinkEntry {
                        name: name.clone(),
                        options: options.clone(),
                        created_at: Utc::now(),
                    })
                    .await
                    .or_else(|e| if_not_exists_race(e, *if_not_exists))?;
                Ok(Output::Command(tag))
            }
            Statement::CreatePipeline {
                name,
                if_not_exists,
                options,
                sink,
                query,
            } => {
                if self.catalog.pipeline(name).is_some() {
                    return self.exists(*if_not_exists, "pipeline", name, tag);
                }
                check_pipeline_options(options)?;
                let Some(sink_entry) = self.catalog.sink(sink) else {
                    return Err(Error::NotFound {
                        kind: "sink",
                        name: sink.clone(),
                    });
                };
                // Its connector reads its options: secrets as their values.
                let sink_entry = SinkEntry {
                    options: self.catalog.resolve_options(&sink_entry.options)?,
                    ..sink_entry
                };
                let by_key = applies_by_key(&sink_entry)?;
                let target = Target {
                    applies_by_key: by_key,
                    groups_expire: options.contains_key("state_ttl"),
                };
                let mut plan = compile(&self.ctx.state(), query, target).await?;
                if plan.joins_changes() {
                    crate::jobs::check_change_join_sink(&sink_entry)?;
                }
                if let Some(key) = &plan.output_key {
                    check_updates_sink(&sink_entry, key, plan.ranks())
                        .map_err(|e| e.at_place(crate::sql::places::Places::of(query).group_by))?;
                } else if options.contains_key("state_ttl") && !plan.keeps_unbounded_rows() {
                    return Err(Error::Plan(
                        "state_ttl bounds the groups of a GROUP BY without a window and the rows of a join without bounds on event time, and this pipeline has neither (windows and sessions leave the state when they close)".into(),
                    ));
                }
                let rewritten = match plan.output_key {
                    Some(_) => None,
                    // One source: its change kinds pass to a sink that applies them by key.
                    None => match plan.inputs.as_slice() {
                        [only] => self.upsert_query(&sink_entry, &only.source.clone(), query)?,
                        _ => None,
                    },
                };
                if let Some(q) = &rewritten {
                    plan = compile(&self.ctx.state(), q, target).await?;
                }
                self.check_changes_reach_sink(&plan, &sink_entry, by_key)?;
                let query = rewritten.as_ref().unwrap_or(query);
                let mut options = options.clone();
                // A batch pipeline when every source it reads ends.
                let mut source_bounded = true;
                let mut single_readers = Vec::new();
                for name in plan.sources() {
                    let entry = self.catalog.source(&name).ok_or_else(|| Error::NotFound {
                        kind: "source",
                        name: name.clone(),
                    })?;
                    let c = tributary_connectors::source_connector(&entry.options)?;
                    source_bounded &= c.is_bounded(&SourceSpec {
                        name: entry.name.clone(),
                        schema: None,
                        options: entry.options.clone(),
                    });
                    if c.single_reader() {
                        single_readers.push(name);
                    }
                }
                let mode = options.get("mode").cloned().unwrap_or_else(|| {
                    if source_bounded {
                        "batch".into()
                    } else {
                        "streaming".into()
                    }
                });
                if mode == "streaming"
                    && plan.keeps_unbounded_rows()
                    && !options.contains_key("state_ttl")
                {
                    return Err(Error::Plan(
                        "this streaming join keeps every row of a side that no bound on event time expires, for ever: set state_ttl (WITH (state_ttl = '1 hour')) to drop rows kept longer, or bound the sides' event times both ways (ON a.k = b.k AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' HOUR)".into(),
                    ));
                }
                options.insert("mode".into(), mode);
                let entry = PipelineEntry {
                    name: name.clone(),
                    id: uuid::Uuid::new_v4().simple().to_string(),
                    sink: sink.clone(),
                    // Sources looked up by key are not read, but the pipeline needs them.
                    sources: [plan.sources(), plan.lookups()].concat(),
                    query: crate::sql::as_of::query_text(query),
                    options,
                    state: PipelineState::Running,
                    error: None,
                    created_at: Utc::now(),
                };
                match self.catalog.add_pipeline(entry, &single_readers).await {
                    // A concurrent CREATE of the same name got there first.
                    Err(Error::AlreadyExists { .. }) if *if_not_exists => {
                        return Ok(Output::Command(tag))
                    }
                    r => r?,
                }
                if let Err(e) = self.start_pipeline(name).await {
                    self.catalog
                        .set_pipeline_state(name, PipelineState::Failed, Some(e.to_string()))
                        .await?;
                    return Err(e);
                }
                Ok(Output::Command(tag))
            }
            Statement::StartPipeline { name } => {
                if self.catalog.pipeline(name).is_none() {
                    return Err(Error::NotFound {
                        kind: "pipeline",
                        name: name.clone(),
                    });
                }
                if self.runtime.is_running(name) {
                    return Err(crate::runtime::already_running(name));
                }
                self.catalog
                    .set_pipeline_state(name, PipelineState::Running, None)
                    .await?;
                match self.start_pipeline(name).await {
                    Ok(()) => {}
                    // A concurrent START won: the pipeline runs, this one is refused.
                    Err(e @ Error::InvalidState(_)) if self.runtime.is_running(name) => {
                        return Err(e)
                    }
                    Err(e) => {
                        self.catalog
                            .set_pipeline_state(name, PipelineState::Failed, Some(e.to_string()))
                            .await?;
                        return Err(e);
                    }
                }
                Ok(Output::Command(tag))
            }
            Statement::StopPipeline { name } => {
                if self.catalog.pipeline(name).is_none() {
                    return Err(Error::NotFound {
                        kind: "pipeline",
                        name: name.clone(),
                    });
                }
                self.runtime.stop(name).await?;
                Ok(Output::Command(tag))
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
                keep_slot,
            } => {
                self.drop_object(*kind, name, *if_exists, *keep_slot, tag)
                    .await
            }
            Statement::CreateUser {
                name,
                if_not_exists,
                password,
                admin,
            } => {
                let role = if *admin { Role::Admin } else { Role::Reader };
                if let Err(e) = self.catalog.add_user(name, &password.0, role).await {
                    if_not_exists_race(e, *if_not_exists)?;
                }
                Ok(Output::Command(tag))
            }
            Statement::AlterUser { name, password } => {
                self.catalog.set_password(name, &password.0).await?;
                Ok(Output::Command(tag))
            }
            Statement::CreateSecret {
                name,
                if_not_exists,
                value,
            } => {
                if let Err(e) = self.catalog.add_secret(name, &value.0).await {
                    if_not_exists_race(e, *if_not_exists)?;
                }
                Ok(Output::Command(tag))
            }
            Statement::AlterSecret { name, value } => {
                self.catalog.set_secret(name, &value.0).await?;
                Ok(Output::Command(tag))
            }
            Statement::DropSecret { name, if_exists } => {
                if !self.catalog.drop_secret(name).await? && !*if_exists {
                    return Err(Error::NotFound {
                        kind: "secret",
                        name: name.clone(),
                    });
                }
                Ok(Output::Command(tag))
            }
            Statement::DropUser { name, if_exists } => {
                if !self.catalog.drop_user(name).await? && !*if_exists {
                    return Err(Error::NotFound {
                        kind: "user",
                        name: name.clone(),
                    });
                }
                Ok(Output::Command(tag))
            }
            Statement::Show { kind } => self.show(*kind).await,
            Statement::ShowCreate { kind, name } => self.show_create(*kind, name),
            Statement::Sql(stmt) => self.execute_sql_statement(stmt, params).await,
        }
    }

    fn exists_as_table(&self, name: &str) -> bool {
        self.catalog.source(name).is_some() || self.catalog.sink(name).is_some()
    }

    fn exists(
        &self,
        if_not_exists: bool,
        kind: &'static str,
        name: &str,
        tag: String,
    ) -> Result<Output> {
        if if_not_exists {
            Ok(Output::Command(tag))
        } else {
            let kind = if self.catalog.source(name).is_some() {
                "source"
            } else if self.catalog.sink(name).is_some() {
                "sink"
            } else {
                kind
            };
            Err(Error::AlreadyExists {
                kind,
                name: name.to_string(),
            })
        }
    }

    /// Builds a job for a catalog pipeline and starts it.
    async fn start_pipeline(&self, name: &str) -> Result<()> {
        // The paths are checked again: the allowed ones may have changed since CREATE.
        if let Some(p) = self.catalog.pipeline(name) {
            for source in p.sources.iter().filter_map(|s| self.catalog.source(s)) {
                self.paths.check(&source.options)?;
            }
            if let Some(sink) = self.catalog.sink(&p.sink) {
                self.paths.check(&sink.options)?;
            }
        }
        let job = build_job(self.catalog.clone(), self.ctx.state(), name.to_string()).await?;
        self.runtime.start(job)
    }

    /// For a sink that applies changes by key: checks that a key is known, and makes sure the
    /// query carries the source's `_op` column: returns the query with `_op` added to the SELECT
    /// list when it was left out, `None` when the query stays as it is.
    fn upsert_query(
        &self,
        sink: &SinkEntry,
        source: &str,
        query: &ast::Query,
    ) -> Result<Option<ast::Query>> {
        let connector = tributary_connectors::sink_connector(&sink.options)?;
        let Some(key) = connector.upsert_key(&SinkSpec {
            name: sink.name.clone(),
            options: self.catalog.resolve_options(&sink.options)?,
        })?
        else {
            return Ok(None);
        };
        let Some(src) = self.catalog.source(source) else {
            return Ok(None);
        };
        let has_op = src.columns.iter().any(|c| c.name == "_op");
        if key.is_empty() && src.primary_key.is_empty() {
            let upstream = src.options.get("table").cloned().unwrap_or_default();
            return Err(Error::Plan(format!(
                "sink \"{}\" applies changes by key (mode = 'upsert'), but source \"{}\"{} has no primary key: \
                 give the sink a key = '...' option, or use mode = 'append'",
                sink.name,
                src.name,
                if upstream.is_empty() { String::new() } else { format!(" (table {upstream})") }
            )));
        }
        if !has_op {
            return Ok(None);
        }
        let mut query = query.clone();
        let ast::SetExpr::Select(select) = query.body.as_mut() else {
            return Ok(None);
        };
        let selects_op = select.projection.iter().any(|item| match item {
            ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..) => true,
            ast::SelectItem::UnnamedExpr(ast::Expr::Identifier(i)) => i.value == "_op",
            ast::SelectItem::ExprWithAlias { alias, .. } => alias.value == "_op",
            _ => false,
        });
        if selects_op {
            return Ok(None);
        }
        select
            .projection
            .push(ast::SelectItem::UnnamedExpr(ast::Expr::Identifier(
                ast::Ident::new("_op"),
            )));
        Ok(Some(query))
    }

    /// Refuses a pipeline over several sources whose change stream rows reach a sink that
    /// applies rows by key without their `_op`: its deletes would be written as rows.
    fn check_changes_reach_sink(
        &self,
        plan: &crate::sql::plan::PipelinePlan,
        sink: &SinkEntry,
        by_key: bool,
    ) -> Result<()> {
        if !by_key || plan.output_key.is_some() || plan.inputs.len() < 2 {
            return Ok(());
        }
        if plan.output_schema.field_with_name("_op").is_ok() {
            return Ok(());
        }
        let tables = plan.table_inputs();
        for (i, input) in plan.inputs.iter().enumerate() {
            let changes = self
                .catalog
                .source(&input.source)
                .is_some_and(|s| s.columns.iter().any(|c| c.name == "_op"));
            if changes && !tables.contains(&i) {
                return Err(Error::Unsupported(format!(
                    "source \"{}\" is a change stream and sink \"{}\" applies rows by key: with several sources its deletes reach the sink only with their _op, so select _op in each branch (SELECT ..., _op FROM {} UNION ALL ...)",
                    input.source, sink.name, input.source
                )));
            }
        }
        Ok(())
    }

    /// Waits until a pipeline's current run ends; returns its state.
    pub async fn wait_pipeline(&self, name: &str) -> Option<PipelineState> {
        self.runtime.wait(name).await;
        self.catalog.pipeline(name).map(|p| p.state)
    }

    async fn drop_object(
        &self,
        kind: ObjectKind,
        name: &str,
        if_exists: bool,
        keep_slot: bool,
        tag: String,
    ) -> Result<Output> {
        let exists = match kind {
            ObjectKind::Source => self.catalog.source(name).is_some(),
            ObjectKind::Sink => self.catalog.sink(name).is_some(),
            ObjectKind::Pipeline => self.catalog.pipeline(name).is_some(),
        };
        if !exists {
            return if if_exists {
                Ok(Output::Command(tag))
            } else {
                Err(Error::NotFound {
                    kind: kind.name(),
                    name: name.to_string(),
                })
            };
        }
        match kind {
            ObjectKind::Source | ObjectKind::Sink => {
                let users: Vec<String> = self
                    .catalog
                    .pipelines()
                    .into_iter()
                    .filter(|p| {
                        if kind == ObjectKind::Sink {
                            p.sink == name
                        } else {
                            p.sources.iter().any(|s| s == name)
                        }
                    })
                    .map(|p| p.name)
                    .collect();
                if !users.is_empty() {
                    return Err(Error::DependentObjects(format!(
                        "cannot drop {} \"{name}\": pipeline {} uses it; drop the pipeline first",
                        kind.name(),
                        users
                            .iter()
                            .map(|u| format!("\"{u}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            ObjectKind::Pipeline => {
                self.runtime.stop(name).await?;
                if let Some(p) = self.catalog.pipeline(name) {
                    self.runtime.checkpoints(&p.id)?.clear().await?;
                    let _ = std::fs::remove_dir_all(self.runtime.state_dir(&p.id));
                }
                self.runtime.forget(name);
            }
        }
        let mut notice = None;
        if kind == ObjectKind::Source {
            if let Some(entry) = self.catalog.source(name) {
                let connector = tributary_connectors::source_connector(&entry.options)?;
                let spec = SourceSpec {
                    name: entry.name.clone(),
                    schema: None,
                    options: self.catalog.resolve_options(&entry.options)?,
                };
                notice = connector.on_drop(&spec, keep_slot).await?;
            }
        }
        self.catalog.remove(kind, name).await?;
        Ok(match notice {
            Some(n) => Output::Notice(n, Box::new(Output::Command(tag))),
            None => Output::Command(tag),
        })
    }

    async fn show(&self, kind: ObjectKind) -> Result<Output> {
        let sql = match kind {
            ObjectKind::Source => "SELECT name, connector, options, schema FROM tributary.sources ORDER BY name",
            ObjectKind::Sink => "SELECT name, connector, options FROM tributary.sinks ORDER BY name",
            ObjectKind::Pipeline => {
                "SELECT name, source, sink, mode, state, rows_in, rows_out, rows_errored, error FROM tributary.pipelines ORDER BY name"
            }
        };
        let df = self.ctx.sql(sql).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        Ok(Output::Rows {
            schema,
            batches: df.collect().await?,
        })
    }

    fn show_create(&self, kind: ObjectKind, name: &str) -> Result<Output> {
        let not_found = || Error::NotFound {
            kind: kind.name(),
            name: name.to_string(),
        };
        let text = match kind {
            ObjectKind::Source => {
                let s = self.catalog.source(name).ok_or_else(not_found)?;
                let mut cols = columns_text(&s.columns);
                if !s.primary_key.is_empty() {
                    cols.push_str(&format!(", PRIMARY KEY ({})", s.primary_key.join(", ")));
                }
                if let Some((c, e)) = &s.watermark {
                    cols.push_str(&format!(", WATERMARK FOR {c} AS {e}"));
                }
                format!(
                    "CREATE SOURCE {} ({cols}) WITH ({})",
                    s.name,
                    options_text(&s.options)
                )
            }
            ObjectKind::Sink => {
                let s = self.catalog.sink(name).ok_or_else(not_found)?;
                format!("CREATE SINK {} WITH ({})", s.name, options_text(&s.options))
            }
            ObjectKind::Pipeline => {
                let p = self.catalog.pipeline(name).ok_or_else(not_found)?;
                format!(
                    "CREATE PIPELINE {} WITH ({}) AS INSERT INTO {} {}",
                    p.name,
                    options_text(&p.options),
                    p.sink,
                    p.query
                )
            }
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("create_statement", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![name.to_string()])),
                Arc::new(StringArray::from(vec![text])),
            ],
        )?;
        Ok(Output::Rows {
            schema,
            batches: vec![batch],
        })
    }

    /// Plans a generic SQL statement (SELECT, EXPLAIN) without running it.
    pub async fn plan_query(&self, stmt: &ast::Statement) -> Result<LogicalPlan> {
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(stmt.clone())))
            .await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|_| {
                Error::Unsupported(
                    "Tributary runs queries, CREATE SOURCE/SINK/PIPELINE and lifecycle statements; tables are sources and sinks".into(),
                )
            })?;
        Ok(plan)
    }

    /// Plans and starts query `stmt`: its result columns (named as PostgreSQL names them) and
    /// its rows as they come, so that a large result is never held whole.
    pub async fn query_stream(
        &self,
        stmt: &ast::Statement,
        params: Option<ParamValues>,
    ) -> Result<(SchemaRef, SendableRecordBatchStream)> {
        let mut plan = self.plan_query(stmt).await?;
        if let Some(p) = params {
            plan = plan.with_param_values(p)?;
        }
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema = postgres_names(stmt, &Arc::new(df.schema().as_arrow().clone()));
        let stream = df.execute_stream().await?;
        Ok((schema, stream))
    }

    async fn execute_sql_statement(
        &self,
        stmt: &ast::Statement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        if let Some(out) = session_statement(stmt) {
            return Ok(out);
        }
        let (schema, stream) = self.query_stream(stmt, params).await?;
        let batches = futures::TryStreamExt::try_collect(stream).await?;
        Ok(Output::Rows { schema, batches })
    }
}

/// Refuses options the connector does not have (`properties.*` pass through to the client
/// libraries), before any of them is used.
#[doc(hidden)]
pub fn check_option_names(
    connector: &str,
    specs: &[tributary_connectors::OptionSpec],
    options: &BTreeMap<String, String>,
) -> Result<()> {
    let named: BTreeMap<String, String> = options
        .iter()
        .filter(|(k, _)| !k.starts_with("properties."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tributary_connectors::Options::validate(connector, specs, &named)?;
    Ok(())
}

/// A concurrent CREATE of the same name took it between our check and our insert: with
/// IF NOT EXISTS that is success, as if we had seen it at the check.
fn if_not_exists_race(e: Error, if_not_exists: bool) -> Result<()> {
    match e {
        Error::AlreadyExists { .. } if if_not_exists => Ok(()),
        e => Err(e),
    }
}

/// Statements about the session (SET, BEGIN, SHOW var) that clients send and we accept.
pub fn session_statement(stmt: &ast::Statement) -> Option<Output> {
    use ast::Statement as S;
    let tag = |t: &str| Some(Output::Command(t.to_string()));
    match stmt {
        S::Set(_) => tag("SET"),
        S::StartTransaction { .. } => tag("BEGIN"),
        S::Commit { .. } => tag("COMMIT"),
        S::Rollback { .. } => tag("ROLLBACK"),
        // Clients (psycopg's nested transactions, SQLAlchemy) wrap statements in savepoints.
        S::Savepoint { .. } => tag("SAVEPOINT"),
        S::ReleaseSavepoint { .. } => tag("RELEASE"),
        S::Discard { .. } => tag("DISCARD ALL"),
        S::Deallocate { .. } => tag("DEALLOCATE"),
        S::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
            let value = match name.as_str() {
                "server_version" => crate::pg_functions::SERVER_VERSION,
                "server_encoding" | "client_encoding" => "UTF8",
                "standard_conforming_strings" => "on",
                "transaction isolation level" | "transaction_isolation" => "read committed",
                "timezone" | "time zone" => "UTC",
                "datestyle" => "ISO, YMD",
                "search_path" => "public",
                "max_identifier_length" => "63",
                // The session's own values are answered by the server (server/session.rs).
                "statement_timeout" => "0",
                "application_name" => "",
                _ => return None,
            };
            setting_row(&name, value)
        }
        _ => None,
    }
}

/// The answer to `SHOW name`: one row, one text column named after the setting.
pub fn setting_row(name: &str, value: &str) -> Option<Output> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        name.replace(' ', "_"),
        DataType::Utf8,
        false,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec![value]))],
    )
    .ok()?;
    Some(Output::Rows {
        schema,
        batches: vec![batch],
    })
}
