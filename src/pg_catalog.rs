//! PostgreSQL's catalog (`pg_catalog`, `version()`, `current_schema()`...) over Tributary's, so
//! that psql's `\d` commands, SQLAlchemy and JDBC tools see sources, sinks and system tables as
//! relations, and pipelines as views (their SELECT as the view's definition). The tables and
//! most functions are the `datafusion-pg-catalog` crate's (the rest are in `pg_functions`);
//! this module says what the relations are.
//!
//! The crate's sibling `arrow-pg` pins pgwire 0.41 while the server is on 0.42: the catalog
//! crate uses it only to name column types, never on the wire, so the two stay isolated (two
//! pgwire versions in the build) rather than holding the server back a version.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::CatalogProviderList;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    setup_pg_catalog, PgCatalogSchemaProvider, PgCatalogStaticTables,
};
use pgwire::api::Type;

use crate::catalog::{schema_of, Catalog};
use crate::error::{Error, Result};

/// The catalog DataFusion plans in.
const CATALOG: &str = "datafusion";
/// The schema of sources and sinks.
const PUBLIC: &str = "public";
/// The schema of the system tables.
const SYSTEM: &str = "tributary";

/// Registers `pg_catalog`, its functions and `version()` in `ctx`, over `catalog`.
pub fn register(ctx: &SessionContext, catalog: Arc<Catalog>) -> Result<()> {
    setup_pg_catalog(ctx, CATALOG, EmptyContextProvider).map_err(|e| Error::from(*e))?;
    // The crate's pg_catalog reads relations through their table providers, which for a sink
    // open its files (and for a blackhole fail); this one names them from the catalog.
    let relations = Relations {
        list: ctx.state().catalog_list().clone(),
        catalog: catalog.clone(),
        planning: ctx.state_weak_ref(),
    };
    let pg_catalog = PgCatalogSchemaProvider::try_new(
        relations,
        Arc::new(PgCatalogStaticTables::try_new()?),
        EmptyContextProvider,
    )?;
    ctx.catalog(CATALOG)
        .ok_or_else(|| Error::Internal("DataFusion default catalog missing".into()))?
        .register_schema("pg_catalog", Arc::new(pg_catalog))?;
    for f in crate::pg_functions::functions() {
        ctx.register_udf(f);
    }
    ctx.register_udf(crate::pg_functions::pipeline_definition(catalog));
    Ok(())
}

/// The relations clients see: sources and sinks in `public`, pipelines there as views (whose
/// columns are their SELECT's), system tables in `tributary` (off the search path, so `\dt`
/// lists them only when asked: `\dt tributary.*`), and DataFusion's own schemas.
#[derive(Clone)]
struct Relations {
    list: Arc<dyn CatalogProviderList>,
    catalog: Arc<Catalog>,
    /// The session pipelines' queries are planned in (weak: the session holds this).
    planning: Weak<parking_lot::RwLock<SessionState>>,
}

impl Relations {
    /// The pipeline named `name`, unless a source or sink has its name (then that is the
    /// relation of the name).
    fn pipeline(&self, name: &str) -> Option<crate::catalog::PipelineEntry> {
        if self.catalog.source(name).is_some() || self.catalog.sink(name).is_some() {
            return None;
        }
        self.catalog.pipeline(name)
    }

    /// The columns of `pipeline`'s SELECT, as DataFusion plans it; `None` when it cannot be
    /// planned now (a source it reads was dropped).
    async fn pipeline_schema(&self, pipeline: &crate::catalog::PipelineEntry) -> Option<SchemaRef> {
        let state = self.planning.upgrade()?.read().clone();
        match state.create_logical_plan(&pipeline.query).await {
            Ok(plan) => Some(Arc::new(plan.schema().as_arrow().clone())),
            Err(e) => {
                tracing::debug!(pipeline = %pipeline.name, error = %e, "Pipeline left out of pg_catalog.");
                None
            }
        }
    }
}

impl std::fmt::Debug for Relations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relations")
    }
}

#[async_trait]
impl CatalogInfo for Relations {
    async fn catalog_names(&self) -> Result<Vec<String>, DataFusionError> {
        Ok(CatalogProviderList::catalog_names(self.list.as_ref()))
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self.list.catalog(catalog).map(|c| c.schema_names()))
    }

    async fn table_names(
        &self,
        catalog: &str,
        schema: &str,
    ) -> Result<Option<Vec<String>>, DataFusionError> {
        let Some(mut names) = self
            .list
            .catalog(catalog)
            .and_then(|c| c.schema(schema))
            .map(|s| s.table_names())
        else {
            return Ok(None);
        };
        if (catalog, schema) == (CATALOG, PUBLIC) {
            for p in self.catalog.pipelines() {
                if !names.contains(&p.name) {
                    names.push(p.name);
                }
            }
        }
        Ok(Some(names))
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>, DataFusionError> {
        if (catalog, schema) == (CATALOG, PUBLIC) {
            if let Some(source) = self.catalog.source(table) {
                return schema_of(&source.columns)
                    .map(Some)
                    .map_err(|e| DataFusionError::External(Box::new(e)));
            }
            if let Some(pipeline) = self.pipeline(table) {
                return Ok(self.pipeline_schema(&pipeline).await);
            }
        }
        let Some(provider) = self.list.catalog(catalog).and_then(|c| c.schema(schema)) else {
            return Ok(None);
        };
        // A relation that cannot be opened (a blackhole sink, a sink whose files are gone) is
        // left out rather than failing every catalog query.
        match provider.table(table).await {
            Ok(t) => Ok(t.map(|t| t.schema())),
            Err(e) => {
                tracing::debug!(schema, table, error = %e, "Relation left out of pg_catalog.");
                Ok(None)
            }
        }
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>, DataFusionError> {
        if catalog != CATALOG {
            return Ok(None);
        }
        Ok(match schema {
            PUBLIC if self.pipeline(table).is_some() => Some(TableType::View),
            PUBLIC | SYSTEM => Some(TableType::Base),
            _ => match self.list.catalog(catalog).and_then(|c| c.schema(schema)) {
                Some(s) => s.table_type(table).await?,
                None => None,
            },
        })
    }
}

/// The PostgreSQL type a column of Arrow type `t` is to clients: announced on the wire, and named
/// in `information_schema`.
pub fn wire_type(t: &DataType) -> Type {
    match t {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        // Past BIGINT's range: sent whole, never clamped.
        DataType::UInt64 => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::Decimal128(_, _) => Type::NUMERIC,
        _ => Type::TEXT,
    }
}
