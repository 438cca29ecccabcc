//! The control plane's network edges: the Postgres wire protocol server.

pub mod copy;
pub mod encode;
pub mod pgwire;
pub mod session;
