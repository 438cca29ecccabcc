//! A source seen as a DataFusion table: the planner resolves pipeline queries against it, and
//! `SELECT ... FROM source LIMIT n` previews it by reading from the start, committing nothing.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use tributary_connectors::{Lookup, ReadOptions, SourceConnector, SourceSpec};

/// A declared source as a table.
#[derive(Clone)]
pub struct SourceTable {
    spec: SourceSpec,
    schema: SchemaRef,
    connector: Arc<dyn SourceConnector>,
    watermark: Option<(String, String)>,
    primary_key: Vec<String>,
}

impl std::fmt::Debug for SourceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceTable")
            .field("name", &self.spec.name)
            .finish()
    }
}

impl SourceTable {
    /// A table over `spec` with its resolved `schema`.
    pub fn new(spec: SourceSpec, schema: SchemaRef, connector: Arc<dyn SourceConnector>) -> Self {
        SourceTable {
            spec,
            schema,
            connector,
            watermark: None,
            primary_key: Vec::new(),
        }
    }

    /// The table of a source that declares `WATERMARK FOR column AS expression`.
    pub fn with_watermark(mut self, watermark: Option<(String, String)>) -> Self {
        self.watermark = watermark;
        self
    }

    /// The table of a source whose rows are keyed by `primary_key`.
    pub fn with_primary_key(mut self, primary_key: Vec<String>) -> Self {
        self.primary_key = primary_key;
        self
    }

    /// The columns that key the source's rows (empty when it declares none).
    pub fn primary_key(&self) -> &[String] {
        &self.primary_key
    }

    /// The source's watermark declaration: (column, expression).
    pub fn watermark(&self) -> Option<&(String, String)> {
        self.watermark.as_ref()
    }
    /// The source's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether a join may look the source's rows up by key.
    pub fn looks_up(&self) -> bool {
        self.connector.looks_up()
    }

    /// A lookup of the source's rows by the `key` columns (it connects when first used).
    pub fn lookup(&self, key: &[String]) -> crate::error::Result<Box<dyn Lookup>> {
        self.connector
            .lookup(&self.spec, self.schema.clone(), key)?
            .ok_or_else(|| {
                crate::error::Error::Plan(format!(
                    "source \"{}\" cannot be looked up by key",
                    self.spec.name
                ))
            })
    }
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let part: Arc<dyn PartitionStream> = Arc::new(self.clone());
        Ok(Arc::new(StreamingTableExec::try_new(
            self.schema.clone(),
            vec![part],
            projection,
            Vec::new(),
            !self.connector.is_bounded(&self.spec),
            limit,
        )?))
    }
}

impl PartitionStream for SourceTable {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let this = self.clone();
        let stream = futures::stream::once(async move {
            let source = this
                .connector
                .open(
                    &this.spec,
                    this.schema.clone(),
                    None,
                    ReadOptions {
                        bounded: true,
                        preview: true,
                        state_dir: None,
                    },
                )
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let batches = futures::stream::unfold(source, |mut source| async move {
                match source.next_batch().await {
                    Ok(Some(b)) => Some((Ok(b.batch), source)),
                    Ok(None) => None,
                    Err(e) => Some((Err(DataFusionError::External(Box::new(e))), source)),
                }
            });
            Ok::<_, DataFusionError>(batches)
        })
        .map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
