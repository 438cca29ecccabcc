//! The `blackhole` sink: counts rows and discards them (for benchmarks and dry runs).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;

use crate::error::Result;
use crate::options::{OptionSpec, Options};
use crate::{PreparedCommit, Sink, SinkConnector, SinkContext, SinkSpec};

const OPTIONS: &[OptionSpec] = &[OptionSpec::optional(
    "delay_ms",
    "milliseconds to stall on every batch: a deliberately slow sink, to watch backpressure",
)];

/// `connector = 'blackhole'`.
pub struct BlackholeSinkConnector;

#[async_trait]
impl SinkConnector for BlackholeSinkConnector {
    fn name(&self) -> &'static str {
        "blackhole"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    async fn validate(&self, spec: &SinkSpec) -> Result<()> {
        Options::validate("blackhole", OPTIONS, &spec.options)?
            .get_u64("delay_ms")
            .map(|_| ())
    }
    async fn create(&self, spec: &SinkSpec) -> Result<Box<dyn Sink>> {
        let delay = Options::validate("blackhole", OPTIONS, &spec.options)?
            .get_u64("delay_ms")?
            .unwrap_or(0);
        Ok(Box::new(BlackholeSink {
            delay: std::time::Duration::from_millis(delay),
        }))
    }
    async fn table(&self, _spec: &SinkSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(None)
    }
}

struct BlackholeSink {
    delay: std::time::Duration,
}

#[async_trait]
impl Sink for BlackholeSink {
    async fn open(&mut self, _ctx: &SinkContext, _schema: SchemaRef) -> Result<()> {
        Ok(())
    }
    async fn write(&mut self, _batch: RecordBatch) -> Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
    async fn prepare(&mut self, _epoch: u64) -> Result<PreparedCommit> {
        Ok(PreparedCommit::default())
    }
    async fn commit(&mut self, _epoch: u64, _prepared: PreparedCommit) -> Result<()> {
        Ok(())
    }
}
