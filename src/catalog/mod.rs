//! The catalog: every declared source, sink and pipeline, persisted in the data directory so a
//! restart finds them all again. It knows names, options and schemas, not how anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sql::parse::ObjectKind;

pub mod events;
pub mod secrets;
pub mod users;
use events::EventLog;
use secrets::{SecretEntry, SecretKey};
use users::{Role, UserEntry, Verifier};

/// A column as stored in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnEntry {
    /// Column name.
    pub name: String,
    /// Arrow type, in Arrow's own notation (`Int64`, `Timestamp(ns)`).
    pub data_type: String,
    /// Whether NULLs are allowed.
    pub nullable: bool,
}

/// Converts an Arrow schema to catalog columns.
pub fn columns_of(schema: &Schema) -> Vec<ColumnEntry> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnEntry {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// Converts catalog columns back to an Arrow schema.
pub fn schema_of(columns: &[ColumnEntry]) -> Result<SchemaRef> {
    let fields = columns
        .iter()
        .map(|c| {
            DataType::from_str(&c.data_type)
                .map(|t| Field::new(&c.name, t, c.nullable))
                .map_err(|e| {
                    Error::Internal(format!(
                        "catalog column {} has unreadable type {}: {e}",
                        c.name, c.data_type
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// A declared source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceEntry {
    /// Name.
    pub name: String,
    /// Resolved columns (declared or inferred at CREATE time).
    pub columns: Vec<ColumnEntry>,
    /// Whether the user declared the columns.
    pub declared: bool,
    /// PRIMARY KEY columns.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// WATERMARK FOR column AS expression.
    #[serde(default)]
    pub watermark: Option<(String, String)>,
    /// Columns added after CREATE because the upstream table grew (schema drift).
    #[serde(default)]
    pub added_columns: Vec<String>,
    /// WITH options, `connector` included (secrets in clear: the catalog file is private).
    pub options: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A declared sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkEntry {
    /// Name.
    pub name: String,
    /// WITH options, `connector` included.
    pub options: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Lifecycle of a pipeline.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Declared, never started.
    Created,
    /// Running (or to be resumed at startup).
    Running,
    /// A batch run reached the end of its input.
    Completed,
    /// Stopped by STOP PIPELINE.
    Stopped,
    /// Stopped by an error.
    Failed,
}

impl PipelineState {
    /// Lowercase name as shown in `tributary.pipelines`.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Created => "created",
            PipelineState::Running => "running",
            PipelineState::Completed => "completed",
            PipelineState::Stopped => "stopped",
            PipelineState::Failed => "failed",
        }
    }
}

/// A declared pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineEntry {
    /// Name.
    pub name: String,
    /// Unique id: survives restarts, differs if the pipeline is dropped and created again.
    pub id: String,
    /// Target sink.
    pub sink: String,
    /// Sources read by the query.
    pub sources: Vec<String>,
    /// The SELECT, as SQL text.
    pub query: String,
    /// WITH options (mode, checkpoint_interval, on_error).
    pub options: BTreeMap<String, String>,
    /// Last known lifecycle state.
    pub state: PipelineState,
    /// The error that failed it, if any.
    pub error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct CatalogData {
    sources: BTreeMap<String, SourceEntry>,
    sinks: BTreeMap<String, SinkEntry>,
    pipelines: BTreeMap<String, PipelineEntry>,
    /// Users who may connect; none: connections on loopback are trusted.
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
    /// Secrets, sealed with the data directory's key.
    #[serde(default)]
    secrets: BTreeMap<String, SecretEntry>,
}

impl CatalogData {
    /// The sources and sinks whose options name secret `name`.
    fn secret_users(&self, name: &str) -> Vec<(ObjectKind, String)> {
        let names = |options: &BTreeMap<String, String>| {
            secrets::referenced(options).iter().any(|(_, n)| n == name)
        };
        let sources = self.sources.values().filter(|s| names(&s.options));
        let sinks = self.sinks.values().filter(|s| names(&s.options));
        sources
            .map(|s| (ObjectKind::Source, s.name.clone()))
            .chain(sinks.map(|s| (ObjectKind::Sink, s.name.clone())))
            .collect()
    }

    /// Fails when a source or sink already has this name (they share one namespace).
    fn check_table_name(&self, name: &str) -> Result<()> {
        let kind = if self.sources.contains_key(name) {
            ObjectKind::Source
        } else if self.sinks.contains_key(name) {
            ObjectKind::Sink
        } else {
            return Ok(());
        };
        Err(Error::AlreadyExists {
            kind: kind.name(),
            name: name.to_string(),
        })
    }
}

/// `connector = '...'` of some options, for messages.
fn connector_of(options: &BTreeMap<String, String>) -> String {
    match options.get("connector") {
        Some(c) => format!("connector {c}"),
        None => "no connector".to_string(),
    }
}

/// The persisted catalog. Cheap to clone-share behind an `Arc`.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    data: RwLock<CatalogData>,
    write_lock: tokio::sync::Mutex<()>,
    events: EventLog,
    secret_key: SecretKey,
}

impl Catalog {
    /// Opens (or creates) the catalog stored in `data_dir/catalog.json`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        if !data_dir.exists() {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                Error::io(format!("creating data directory {}", data_dir.display()), e)
            })?;
            // Private: checkpoints, staged rows and the catalog are the engine's alone.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| {
                        Error::io(
                            format!("restricting data directory {}", data_dir.display()),
                            e,
                        )
                    })?;
            }
        }
        let path = data_dir.join("catalog.json");
        let data = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Internal(format!(
                    "catalog file {} is unreadable: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogData::default(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        Ok(Catalog {
            path,
            data: RwLock::new(data),
            write_lock: tokio::sync::Mutex::new(()),
            events: EventLog::open(data_dir)?,
            secret_key: SecretKey::load(data_dir)?,
        })
    }

    /// What happened to the objects: DDL and lifecycle changes, recorded by the methods that
    /// make them, and what the engine adds (recoveries, server start and stop).
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    async fn persist(&self) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let bytes = serde_json::to_vec_pretty(&*self.data.read())
            .map_err(|e| Error::Internal(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            // Only the engine's own user reads the catalog: it holds connector credentials
            // and users' verifiers.
            // A leftover from a crash may have other permissions: start afresh.
            let _ = std::fs::remove_file(&tmp);
            let mut open = std::fs::OpenOptions::new();
            open.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
            let mut f = open.open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    /// Adds a source. Sources and sinks share one namespace: both are tables to SELECT from.
    /// The name is checked and taken under one lock, so of two concurrent CREATEs one fails.
    pub async fn add_source(&self, entry: SourceEntry) -> Result<()> {
        {
            let mut d = self.data.write();
            d.check_table_name(&entry.name)?;
            d.sources.insert(entry.name.clone(), entry.clone());
        }
        self.persist().await?;
        self.events.record(
            "create",
            "source",
            &entry.name,
            format!(
                "CREATE SOURCE {} ({})",
                entry.name,
                connector_of(&entry.options)
            ),
        );
        Ok(())
    }

    /// Adds a user with a verifier of `password`.
    pub async fn add_user(&self, name: &str, password: &str, role: Role) -> Result<()> {
        users::check_name(name)?;
        users::check_password(password)?;
        let now = Utc::now();
        let entry = UserEntry {
            name: name.to_string(),
            role,
            verifier: Verifier::new(password).to_text(),
            created_at: now,
            password_changed_at: now,
        };
        {
            let mut d = self.data.write();
            if d.users.contains_key(name) {
                return Err(Error::AlreadyExists {
                    kind: "user",
                    name: name.to_string(),
                });
            }
            d.users.insert(name.to_string(), entry);
        }
        self.persist().await?;
        self.events.record(
            "create",
            "user",
            name,
            format!("CREATE USER {name} ({})", role.as_str()),
        );
        Ok(())
    }

    /// Replaces a user's verifier with one of `password`.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        users::check_password(password)?;
        let verifier = Verifier::new(password).to_text();
        {
            let mut d = self.data.write();
            let user = d.users.get_mut(name).ok_or_else(|| Error::NotFound {
                kind: "user",
                name: name.to_string(),
            })?;
            user.verifier = verifier;
            user.password_changed_at = Utc::now();
        }
        self.persist().await?;
        self.events
            .record("alter", "user", name, "password changed".to_string());
        Ok(())
    }

    /// Removes a user; the last admin stays, so that someone can still manage the engine.
    pub async fn drop_user(&self, name: &str) -> Result<bool> {
        {
            let mut d = self.data.write();
            let Some(user) = d.users.get(name) else {
                return Ok(false);
            };
            let admins = d.users.values().filter(|u| u.role == Role::Admin).count();
            if user.role == Role::Admin && admins == 1 {
                return Err(Error::InvalidState(format!(
                    "\"{name}\" is the last admin user: create another admin before dropping it"
                )));
            }
            d.users.remove(name);
        }
        self.persist().await?;
        self.events
            .record("drop", "user", name, format!("DROP USER {name}"));
        Ok(true)
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<UserEntry> {
        self.data.read().users.get(name).cloned()
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserEntry> {
        self.data.read().users.values().cloned().collect()
    }

    /// Whether connections must authenticate: once any user exists.
    pub fn requires_authentication(&self) -> bool {
        !self.data.read().users.is_empty()
    }

    /// Adds a secret, sealed.
    pub async fn add_secret(&self, name: &str, value: &str) -> Result<()> {
        let now = Utc::now();
        let entry = SecretEntry {
            name: name.to_string(),
            sealed: self.secret_key.seal(name, value)?,
            created_at: now,
            updated_at: now,
        };
        {
            let mut d = self.data.write();
            if d.secrets.contains_key(name) {
                return Err(Error::AlreadyExists {
                    kind: "secret",
                    name: name.to_string(),
                });
            }
            d.secrets.insert(name.to_string(), entry);
        }
        self.persist().await?;
        self.events
            .record("create", "secret", name, format!("CREATE SECRET {name}"));
        Ok(())
    }

    /// Gives a secret a new value: sources and sinks naming it use it from their next start.
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<()> {
        let sealed = self.secret_key.seal(name, value)?;
        {
            let mut d = self.data.write();
            let secret = d.secrets.get_mut(name).ok_or_else(|| Error::NotFound {
                kind: "secret",
                name: name.to_string(),
            })?;
            secret.sealed = sealed;
            secret.updated_at = Utc::now();
        }
        self.persist().await?;
        self.events
            .record("alter", "secret", name, "value changed".to_string());
        Ok(())
    }

    /// Removes a secret no source or sink names; returns whether it existed.
    pub async fn drop_secret(&self, name: &str) -> Result<bool> {
        {
            let mut d = self.data.write();
            if !d.secrets.contains_key(name) {
                return Ok(false);
            }
            let users: Vec<String> = d
                .secret_users(name)
                .into_iter()
                .map(|(kind, object)| format!("{} \"{object}\"", kind.name()))
                .collect();
            if !users.is_empty() {
                return Err(Error::DependentObjects(format!(
                    "cannot drop secret \"{name}\": {} use it",
                    users.join(", ")
                )));
            }
            d.secrets.remove(name);
        }
        self.persist().await?;
        self.events
            .record("drop", "secret", name, format!("DROP SECRET {name}"));
        Ok(true)
    }

    /// The sources and sinks whose options name secret `name`.
    pub fn secret_users(&self, name: &str) -> Vec<(ObjectKind, String)> {
        self.data.read().secret_users(name)
    }

    /// Every secret (sealed), by name.
    pub fn secrets(&self) -> Vec<SecretEntry> {
        self.data.read().secrets.values().cloned().collect()
    }

    /// `options` with each `SECRET name` replaced by the secret's value: what a connector is
    /// given. A secret that does not exist is an error naming the option.
    pub fn resolve_options(
        &self,
        options: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        let references = secrets::referenced(options);
        if references.is_empty() {
            return Ok(options.clone());
        }
        let mut out = options.clone();
        let d = self.data.read();
        for (option, name) in references {
            let entry = d.secrets.get(&name).ok_or_else(|| Error::NotFound {
                kind: "secret",
                name: name.clone(),
            })?;
            out.insert(option, self.secret_key.open(&name, &entry.sealed)?);
        }
        Ok(out)
    }

    /// Adds a sink.
    pub async fn add_sink(&self, entry: SinkEntry) -> Result<()> {
        {
            let mut d = self.data.write();
            d.check_table_name(&entry.name)?;
            d.sinks.insert(entry.name.clone(), entry.clone());
        }
        self.persist().await?;
        self.events.record(
            "create",
            "sink",
            &entry.name,
            format!(
                "CREATE SINK {} ({})",
                entry.name,
                connector_of(&entry.options)
            ),
        );
        Ok(())
    }

    /// Adds a pipeline. `single_readers` names its sources whose upstream allows one reader
    /// (such as a replication slot): a second pipeline over one of them is refused. Both checks
    /// and the insert happen under one lock.
    pub async fn add_pipeline(
        &self,
        entry: PipelineEntry,
        single_readers: &[String],
    ) -> Result<()> {
        {
            let mut d = self.data.write();
            if d.pipelines.contains_key(&entry.name) {
                return Err(Error::AlreadyExists {
                    kind: "pipeline",
                    name: entry.name,
                });
            }
            for source in single_readers {
                if let Some(holder) = d
                    .pipelines
                    .values()
                    .find(|p| p.sources.iter().any(|s| s == source))
                {
                    return Err(Error::InvalidState(format!(
                        "source \"{source}\" is already read by pipeline \"{}\", and its upstream \
                         (a replication slot) allows one reader: declare a second source over the \
                         same table for a second pipeline, or drop pipeline \"{}\" first",
                        holder.name, holder.name
                    )));
                }
            }
            d.pipelines.insert(entry.name.clone(), entry.clone());
        }
        self.persist().await?;
        self.events.record(
            "create",
            "pipeline",
            &entry.name,
            format!(
                "CREATE PIPELINE {} reading {} into {}",
                entry.name,
                entry.sources.join(", "),
                entry.sink
            ),
        );
        if entry.state == PipelineState::Running {
            self.events
                .record("start", "pipeline", &entry.name, "started");
        }
        Ok(())
    }

    /// Removes an object; returns whether it existed.
    pub async fn remove(&self, kind: ObjectKind, name: &str) -> Result<bool> {
        let existed = {
            let mut d = self.data.write();
            match kind {
                ObjectKind::Source => d.sources.remove(name).is_some(),
                ObjectKind::Sink => d.sinks.remove(name).is_some(),
                ObjectKind::Pipeline => d.pipelines.remove(name).is_some(),
            }
        };
        if existed {
            self.persist().await?;
            let kind = kind.name();
            self.events.record(
                "drop",
                kind,
                name,
                format!("DROP {} {name}", kind.to_ascii_uppercase()),
            );
        }
        Ok(existed)
    }

    /// Records a pipeline's lifecycle state and error.
    pub async fn set_pipeline_state(
        &self,
        name: &str,
        state: PipelineState,
        error: Option<String>,
    ) -> Result<()> {
        {
            let mut d = self.data.write();
            let Some(p) = d.pipelines.get_mut(name) else {
                return Ok(());
            };
            if p.state == state && p.error == error {
                return Ok(());
            }
            p.state = state;
            p.error = error.clone();
        }
        self.persist().await?;
        let (kind, message) = match state {
            PipelineState::Running => ("start", "started".to_string()),
            PipelineState::Stopped => ("stop", "stopped after a final checkpoint".to_string()),
            PipelineState::Completed => {
                ("complete", "read all its input and completed".to_string())
            }
            PipelineState::Failed => (
                "failure",
                tributary_connectors::options::redact_url_password(&error.unwrap_or_default()),
            ),
            PipelineState::Created => ("create", "created".to_string()),
        };
        self.events.record(kind, "pipeline", name, message);
        Ok(())
    }

    /// Takes a source's grown column list (an upstream ADD COLUMN); the new names are recorded
    /// as added, so rows from before the change may lack them.
    pub async fn evolve_source(&self, name: &str, columns: Vec<ColumnEntry>) -> Result<()> {
        {
            let mut d = self.data.write();
            let Some(s) = d.sources.get_mut(name) else {
                return Err(Error::NotFound {
                    kind: "source",
                    name: name.to_string(),
                });
            };
            for c in &columns {
                if !s.columns.iter().any(|o| o.name == c.name) && !s.added_columns.contains(&c.name)
                {
                    s.added_columns.push(c.name.clone());
                }
            }
            s.columns = columns.clone();
        }
        self.persist().await?;
        self.events.record(
            "schema_change",
            "source",
            name,
            format!(
                "the upstream table changed; columns now {}",
                columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.data_type))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        Ok(())
    }

    /// A source by name.
    pub fn source(&self, name: &str) -> Option<SourceEntry> {
        self.data.read().sources.get(name).cloned()
    }
    /// A sink by name.
    pub fn sink(&self, name: &str) -> Option<SinkEntry> {
        self.data.read().sinks.get(name).cloned()
    }
    /// A pipeline by name.
    pub fn pipeline(&self, name: &str) -> Option<PipelineEntry> {
        self.data.read().pipelines.get(name).cloned()
    }
    /// All sources, by name.
    pub fn sources(&self) -> Vec<SourceEntry> {
        self.data.read().sources.values().cloned().collect()
    }
    /// All sinks, by name.
    pub fn sinks(&self) -> Vec<SinkEntry> {
        self.data.read().sinks.values().cloned().collect()
    }
    /// All pipelines, by name.
    pub fn pipelines(&self) -> Vec<PipelineEntry> {
        self.data.read().pipelines.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let schema = Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
            true,
        )]);
        cat.add_source(SourceEntry {
            added_columns: Vec::new(),
            name: "s".into(),
            columns: columns_of(&schema),
            declared: true,
            primary_key: vec![],
            watermark: None,
            options: BTreeMap::new(),
            created_at: Utc::now(),
        })
        .await
        .unwrap();
        let again = Catalog::open(dir.path()).unwrap();
        let s = again.source("s").unwrap();
        assert_eq!(schema_of(&s.columns).unwrap().as_ref(), &schema);
        assert!(matches!(
            again
                .add_sink(SinkEntry {
                    name: "s".into(),
                    options: BTreeMap::new(),
                    created_at: Utc::now()
                })
                .await,
            Err(Error::AlreadyExists { kind: "source", .. })
        ));
    }

    fn pipeline(name: &str, source: &str) -> PipelineEntry {
        PipelineEntry {
            name: name.into(),
            id: name.into(),
            sink: "k".into(),
            sources: vec![source.into()],
            query: String::new(),
            options: BTreeMap::new(),
            state: PipelineState::Running,
            error: None,
            created_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_single_reader_source_takes_one_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        cat.add_pipeline(pipeline("p1", "cdc"), &["cdc".to_string()])
            .await
            .unwrap();
        let e = cat
            .add_pipeline(pipeline("p2", "cdc"), &["cdc".to_string()])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("pipeline \"p1\""), "{e}");
        assert!(cat.pipeline("p2").is_none());
        // Sources that allow several readers take several pipelines.
        cat.add_pipeline(pipeline("p3", "files"), &[])
            .await
            .unwrap();
        cat.add_pipeline(pipeline("p4", "files"), &[])
            .await
            .unwrap();
        assert!(matches!(
            cat.add_pipeline(pipeline("p4", "files"), &[]).await,
            Err(Error::AlreadyExists { .. })
        ));
    }
}
