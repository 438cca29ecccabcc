//! The SQL front end: our statements' parser, type mapping, and the pipeline query compiler.

pub mod as_of;
pub mod change_join;
pub mod changes;
pub mod clock;
pub mod column_names;
pub mod dialect;
pub mod fast_to_char;
pub mod joins;
pub mod lineage;
pub mod lookup_join;
pub mod parse;
pub mod pg_compat;
pub mod placeholders;
pub mod places;
pub mod plan;
pub mod redact;
pub mod session_window;
pub mod shared_scans;
pub mod split_distinct;
pub mod stream_join;
pub mod top_n;
pub mod types;
pub mod updates;
pub mod versioned_join;
pub mod windows;
