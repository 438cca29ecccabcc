//! The control plane's network edges: the Postgres wire protocol server and the HTTP API.

pub mod access;
pub mod auth;
pub mod connection;
pub mod copy;
pub mod encode;
pub mod frames;
pub mod http;
pub mod pgwire;
pub mod session;
pub mod tls;
