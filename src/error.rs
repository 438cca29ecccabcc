//! The engine's error type, and the one place errors become SQLSTATE codes.

use datafusion::error::DataFusionError;
use tributary_connectors::{ConnectorError, ErrorKind};

/// Errors of the engine: SQL front end, catalog, runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement does not parse. `position` is the 1-based character offset of the problem.
    #[error("{message}")]
    Syntax {
        /// What is wrong.
        message: String,
        /// 1-based character position in the statement, when known.
        position: Option<usize>,
    },
    /// A name that does not exist.
    #[error("{kind} \"{name}\" does not exist")]
    NotFound {
        /// source, sink, pipeline, table.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A name that already exists.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists {
        /// source, sink, pipeline.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The statement is understood but cannot be done in the current state.
    #[error("{0}")]
    InvalidState(String),
    /// Something the statement asks for that Tributary cannot do (yet).
    #[error("{0}")]
    Unsupported(String),
    /// A semantic problem with the statement (types, columns, options).
    #[error("{0}")]
    Plan(String),
    /// A source or sink failed.
    #[error("{0}")]
    Connector(#[from] ConnectorError),
    /// DataFusion failed planning or running a query.
    #[error("{}", datafusion_message(.0))]
    DataFusion(#[from] DataFusionError),
    /// Reading or writing the data directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Other objects depend on the one to drop.
    #[error("{0}")]
    DependentObjects(String),
    /// The latest checkpoint of a pipeline cannot be read: the pipeline cannot resume safely.
    #[error("checkpoint {file} is unreadable ({reason}); the pipeline will not resume from an older checkpoint, whose epochs are already committed downstream: restore the file, or drop and recreate the pipeline")]
    CheckpointUnreadable {
        /// The checkpoint file.
        file: String,
        /// What failed.
        reason: String,
    },
    /// A statement nested too deeply to plan safely (PostgreSQL's `stack depth limit exceeded`).
    #[error("{0}")]
    StackDepth(String),
    /// A statement beyond a size limit.
    #[error("{0}")]
    ProgramLimit(String),
    /// A source's schema changed upstream while a pipeline read it.
    #[error("source \"{input}\": {description}")]
    SchemaEvolved {
        /// The source.
        input: String,
        /// What changed.
        description: String,
        /// The source's new schema.
        schema: arrow::datatypes::SchemaRef,
    },
    /// The session's user may not do this (a reader's DDL).
    #[error("{0}")]
    InsufficientPrivilege(String),
    /// A pipeline's operator state does not fit its memory budget and cannot spill.
    #[error("{0}")]
    StateMemoryExhausted(String),
    /// A bug.
    #[error("internal error: {0} (this is a bug in Tributary, please report it)")]
    Internal(String),
    /// An error found at a place in the statement.
    #[error("{error}")]
    At {
        /// The error.
        error: Box<Error>,
        /// 1-based character position in the statement.
        position: usize,
    },
    /// An error found at a place in the statement's source text, not yet counted in characters.
    #[error("{error}")]
    Located {
        /// The error.
        error: Box<Error>,
        /// Line and column (1-based) in the text the statement was parsed from.
        line: u64,
        /// Column.
        column: u64,
    },
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// This error with the position DataFusion found for it in `statement` (the place a
    /// diagnostic points at: an unknown column, a window's bad argument), when it has one.
    pub fn located_in(self, statement: &str) -> Self {
        let (error, line, column) = match self {
            Error::DataFusion(e) => match e.diagnostic().and_then(|d| d.span) {
                Some(span) => (Error::DataFusion(e), span.start.line, span.start.column),
                None => return Error::DataFusion(e),
            },
            Error::Located {
                error,
                line,
                column,
            } => (*error, line, column),
            other => return other,
        };
        Error::At {
            position: crate::sql::parse::char_position(
                statement,
                datafusion::sql::sqlparser::tokenizer::Location { line, column },
            ),
            error: Box::new(error),
        }
    }

    /// This error at `place` of the statement's text (unchanged when `None`).
    pub fn at_place(self, place: Option<datafusion::sql::sqlparser::tokenizer::Location>) -> Self {
        match place {
            Some(at) => Error::Located {
                error: Box::new(self),
                line: at.line,
                column: at.column,
            },
            None => self,
        }
    }

    /// Wraps an I/O failure with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The PostgreSQL SQLSTATE code for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::Syntax { .. } => "42601",
            Error::NotFound { kind: "table", .. } => "42P01",
            Error::NotFound { .. } => "42704",
            Error::AlreadyExists { .. } => "42710",
            Error::InvalidState(_) => "55000",
            Error::Unsupported(_) => "0A000",
            Error::Plan(_) => "42000",
            Error::Connector(e) => match e {
                ConnectorError::UnknownConnector { .. }
                | ConnectorError::MissingOption { .. }
                | ConnectorError::UnknownOption { .. }
                | ConnectorError::InvalidOption { .. } => "22023",
                ConnectorError::BadRecord { .. } => "22P02",
                _ => match e.kind() {
                    ErrorKind::User => "42000",
                    ErrorKind::External => "58000",
                    ErrorKind::Internal => "XX000",
                },
            },
            Error::DataFusion(e) => datafusion_sqlstate(e),
            Error::Io { .. } => "58030",
            Error::DependentObjects(_) => "2BP01",
            Error::CheckpointUnreadable { .. } => "XX001",
            Error::StackDepth(_) => "54001",
            Error::ProgramLimit(_) => "54000",
            Error::StateMemoryExhausted(_) => "53200",
            Error::InsufficientPrivilege(_) => "42501",
            Error::SchemaEvolved { .. } => "42000",
            Error::Internal(_) => "XX000",
            Error::At { error, .. } | Error::Located { error, .. } => error.sqlstate(),
        }
    }

    /// Whether the error is about resources (memory, disk) rather than the data: retrying the
    /// rows one by one cannot help.
    pub fn is_resource_error(&self) -> bool {
        match self {
            Error::StateMemoryExhausted(_) | Error::Io { .. } => true,
            // Inside a pipeline's operators only a lookup join reaches a connector, and a
            // lookup that failed after its retries is no row's fault.
            Error::Connector(_) => true,
            Error::DataFusion(e) => match e.find_root() {
                DataFusionError::ResourcesExhausted(_) | DataFusionError::IoError(_) => true,
                DataFusionError::ArrowError(a, _) => {
                    matches!(**a, arrow::error::ArrowError::IoError(..))
                }
                _ => false,
            },
            Error::At { error, .. } | Error::Located { error, .. } => error.is_resource_error(),
            _ => false,
        }
    }

    /// The 1-based character position of the problem in the statement, when known.
    pub fn position(&self) -> Option<usize> {
        match self {
            Error::Syntax { position, .. } => *position,
            Error::At { position, .. } => Some(*position),
            _ => None,
        }
    }
}

/// DataFusion's message without its kind prefix, also when a diagnostic wraps the error.
fn datafusion_message(e: &DataFusionError) -> std::borrow::Cow<'_, str> {
    let mut e = e;
    while let DataFusionError::Diagnostic(_, inner) = e {
        e = inner;
    }
    e.message()
}

fn datafusion_sqlstate(e: &DataFusionError) -> &'static str {
    use datafusion::common::SchemaError;
    match e.find_root() {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::SchemaError(se, _) => match se.as_ref() {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::AmbiguousReference { .. } => "42702",
            _ => "42701",
        },
        DataFusionError::Plan(m) if m.contains("table '") && m.contains("not found") => "42P01",
        DataFusionError::Plan(m)
            if m.contains("No function matches") || m.contains("Invalid function") =>
        {
            "42883"
        }
        DataFusionError::Plan(m) if m.contains("Cannot") || m.contains("type") => "42804",
        DataFusionError::Plan(_) => "42000",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            arrow::error::ArrowError::DivideByZero => "22012",
            arrow::error::ArrowError::CastError(_) | arrow::error::ArrowError::ParseError(_) => {
                "22P02"
            }
            _ => "XX000",
        },
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::Execution(m) if m.contains("already exists") => "42P07",
        DataFusionError::Execution(_) => "22000",
        DataFusionError::Configuration(_) => "22023",
        _ => "XX000",
    }
}
