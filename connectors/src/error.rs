//! The connector layer's one error type: what went wrong at the I/O edge, and whose fault it was.

use std::fmt;

/// Who has to act on an error: the user (bad option, bad data), an external system, or us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The statement or its options are wrong; the message says what is accepted.
    User,
    /// A remote system or the file system failed; retrying may help.
    External,
    /// A bug in Tributary.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::User => "user",
            ErrorKind::External => "external",
            ErrorKind::Internal => "internal",
        })
    }
}

/// Errors raised by sources and sinks.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// `connector = '...'` names no known connector.
    #[error("unknown {kind} connector '{name}' (accepted: {accepted})")]
    UnknownConnector {
        /// "source" or "sink".
        kind: &'static str,
        /// What the user wrote.
        name: String,
        /// Comma-separated list of valid names.
        accepted: String,
    },
    /// A required option is missing.
    #[error("connector '{connector}' requires option '{option}' ({description})")]
    MissingOption {
        /// The connector.
        connector: String,
        /// The missing option.
        option: String,
        /// What the option means.
        description: String,
    },
    /// An option the connector does not know.
    #[error("connector '{connector}' has no option '{option}' (accepted: {accepted})")]
    UnknownOption {
        /// The connector.
        connector: String,
        /// What the user wrote.
        option: String,
        /// Comma-separated list of valid options.
        accepted: String,
    },
    /// An option has a value the connector cannot use.
    #[error("invalid value '{value}' for option '{option}': {reason}")]
    InvalidOption {
        /// The option.
        option: String,
        /// What the user wrote (redacted when secret).
        value: String,
        /// What is accepted.
        reason: String,
    },
    /// Any other mistake in how a connector was declared or used.
    #[error("{0}")]
    Config(String),
    /// Reading or writing failed in the outside world (file system, object store, remote server).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A remote system refused what we sent for a reason that retrying cannot change (a
    /// constraint or type error): the pipeline fails at once with the server's own words.
    #[error("{context}: {message}")]
    Refused {
        /// What we were doing.
        context: String,
        /// The remote system's error, with its code.
        message: String,
    },
    /// A record could not be decoded and the pipeline asked to fail on bad records.
    #[error("bad record at {position}: {message}")]
    BadRecord {
        /// Where the record is (file and line, partition and offset).
        position: String,
        /// Why it could not be decoded.
        message: String,
    },
    /// The upstream table changed in a way the pipeline cannot follow (a dropped or retyped column,
    /// or an added one with `on_schema_change = 'fail'`).
    #[error("{0}")]
    SchemaChanged(String),
    /// The upstream table gained columns: the pipeline is re-planned over `schema` and resumes.
    #[error("{description}")]
    SchemaEvolved {
        /// What changed.
        description: String,
        /// The source's new schema.
        schema: arrow::datatypes::SchemaRef,
    },
    /// Arrow or Parquet failed on data we produced.
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Delta Lake failed.
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    /// A bug.
    #[error("internal error: {0} (this is a bug in Tributary, please report it)")]
    Internal(String),
}

impl ConnectorError {
    /// An option naming a column that the pipeline's output (`columns`) lacks.
    pub fn no_such_column(option: &str, value: &str, columns: &arrow::datatypes::Schema) -> Self {
        ConnectorError::InvalidOption {
            option: option.into(),
            value: value.into(),
            reason: format!(
                "the pipeline's output has no such column (it has: {})",
                columns
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Whose fault the error is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectorError::UnknownConnector { .. }
            | ConnectorError::MissingOption { .. }
            | ConnectorError::UnknownOption { .. }
            | ConnectorError::InvalidOption { .. }
            | ConnectorError::Config(_)
            | ConnectorError::BadRecord { .. }
            | ConnectorError::Refused { .. }
            | ConnectorError::SchemaChanged(_)
            | ConnectorError::SchemaEvolved { .. } => ErrorKind::User,
            ConnectorError::Io { .. } | ConnectorError::Delta(_) => ErrorKind::External,
            ConnectorError::Arrow(_) | ConnectorError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Wraps an I/O-like failure with what we were doing.
    pub fn io(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ConnectorError::Io {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

impl From<parquet::errors::ParquetError> for ConnectorError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        ConnectorError::io("parquet", e)
    }
}

/// Result alias for the connector layer.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
