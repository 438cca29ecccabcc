//! Integration tests: whole scenarios against the real `tributary` binary, the real `psql`,
//! Python client drivers and the independent `deltalake` reader. One binary, a module per area.

mod aggregates;
mod cdc;
mod cdc_joins;
mod cdc_tables;
mod clients;
mod concurrency;
mod console;
mod files;
mod harness;
mod http;
mod inputs;
mod kafka;
mod kafka_exactly_once;
mod kafka_formats;
mod kafka_registry;
mod kafka_security;
mod limits;
mod lookups;
mod nexmark;
mod postgres_tls;
mod recovery;
mod run_cmd;
mod security;
mod semantics;
mod streaming;
mod windows;
mod wire_abuse;
