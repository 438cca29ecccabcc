//! Tributary: a SQL-first streaming ETL engine on Apache DataFusion.
//!
//! ```text
//!  psql / drivers ─► server::pgwire ─┐
//!  tributary run ────────────────────┼─► engine ─► sql::parse ─► catalog (persisted)
//!                                    │      │
//!                                    │      ▼  DataFusion logical plan (sql::plan)
//!                    control plane   │  runtime (data plane)
//!                                    ▼
//!        source task ─► bounded channel ─► plan steps per Arrow batch ─► sink
//!                   ▲                                                   │
//!                   └──── checkpoint store (positions + sink commits) ◄─┘
//! ```
//!
//! One record's walk: the file source (`connectors/src/file`) decodes a block of lines into a
//! batch and the position after it; the pipeline task (`runtime::pipeline`) runs the compiled
//! filters and projections on it and hands it to the sink; every checkpoint interval the sink
//! prepares (data files durable, invisible), the checkpoint is written, and the sink commits
//! with the pipeline's id and epoch as transaction id, so a replay after a crash lands nothing twice.

pub mod catalog;
pub mod engine;
pub mod error;
pub mod health;
pub mod jobs;
pub mod paths;
pub mod pg_catalog;
pub mod pg_functions;
pub mod runtime;
pub mod sampler;
pub mod server;
pub mod sessions;
pub mod sql;
pub mod system_tables;
pub mod telemetry;

pub use engine::{Engine, Output};
pub use error::{Error, Result};
