//! The `blackhole` sink: counts rows and discards them (for benchmarks and dry runs).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;

use crate::error::Result;
use crate::options::{OptionSpec, Options};
use crate::{PreparedCommit, Sink, SinkConnector, SinkContext, SinkSpec};

/// `connector = 'blackhole'`.
pub struct BlackholeSinkConnector;

#[async_trait]
impl SinkConnector for BlackholeSinkConnector {
    fn name(&self) -> &'static str {
        "blackhole"
    }
    fn options(&self) -> &'static [OptionSpec] {
        &[]
    }
    async fn validate(&self, spec: &SinkSpec) -> Result<()> {
        Options::validate("blackhole", &[], &spec.options).map(|_| ())
    }
    async fn create(&self, _spec: &SinkSpec) -> Result<Box<dyn Sink>> {
        Ok(Box::new(BlackholeSink))
    }
    async fn table(&self, _spec: &SinkSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(None)
    }
}

struct BlackholeSink;

#[async_trait]
impl Sink for BlackholeSink {
    async fn open(&mut self, _ctx: &SinkContext, _schema: SchemaRef) -> Result<()> {
        Ok(())
    }
    async fn write(&mut self, _batch: RecordBatch) -> Result<()> {
        Ok(())
    }
    async fn prepare(&mut self, _epoch: u64) -> Result<PreparedCommit> {
        Ok(PreparedCommit::default())
    }
    async fn commit(&mut self, _epoch: u64, _prepared: PreparedCommit) -> Result<()> {
        Ok(())
    }
}
