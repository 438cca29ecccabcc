//! PostgreSQL's catalog (`pg_catalog`, `version()`, `current_schema()`...) over Tributary's, so
//! that psql's `\d` commands, SQLAlchemy and JDBC tools see sources, sinks and system tables as
//! relations. The tables and functions are the `datafusion-pg-catalog` crate's; this module says
//! what the relations are.
//!
//! The crate's sibling `arrow-pg` pins pgwire 0.41 while the server is on 0.42: the catalog
//! crate uses it only to name column types, never on the wire, so the two stay isolated (two
//! pgwire versions in the build) rather than holding the server back a version.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::CatalogProviderList;
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    setup_pg_catalog, PgCatalogSchemaProvider, PgCatalogStaticTables,
};

use crate::catalog::{schema_of, Catalog};
use crate::error::{Error, Result};

/// The catalog DataFusion plans in.
const CATALOG: &str = "datafusion";
/// The schema of sources and sinks.
const PUBLIC: &str = "public";
/// The schema of the system tables.
const SYSTEM: &str = "tributary";
/// The PostgreSQL version clients are told (as `server_version` says).
pub const SERVER_VERSION: &str = "16.6";

/// Registers `pg_catalog`, its functions and `version()` in `ctx`, over `catalog`.
pub fn register(ctx: &SessionContext, catalog: Arc<Catalog>) -> Result<()> {
    setup_pg_catalog(ctx, CATALOG, EmptyContextProvider).map_err(|e| Error::from(*e))?;
    // The crate's pg_catalog reads relations through their table providers, which for a sink
    // open its files (and for a blackhole fail); this one names them from the catalog.
    let relations = Relations {
        list: ctx.state().catalog_list().clone(),
        catalog,
    };
    let pg_catalog = PgCatalogSchemaProvider::try_new(
        relations,
        Arc::new(PgCatalogStaticTables::try_new()?),
        EmptyContextProvider,
    )?;
    ctx.catalog(CATALOG)
        .ok_or_else(|| Error::Internal("DataFusion default catalog missing".into()))?
        .register_schema("pg_catalog", Arc::new(pg_catalog))?;
    ctx.register_udf(ScalarUDF::new_from_impl(Version::default()));
    ctx.register_udf(ScalarUDF::new_from_impl(ToRegtype::default()));
    // No column is backed by a sequence.
    ctx.register_udf(ScalarUDF::new_from_impl(NoSequence {
        signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Stable),
    }));
    Ok(())
}

/// The relations clients see: sources and sinks in `public`, system tables (as views) in
/// `tributary`, and DataFusion's own schemas.
#[derive(Clone)]
struct Relations {
    list: Arc<dyn CatalogProviderList>,
    catalog: Arc<Catalog>,
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
        Ok(self
            .list
            .catalog(catalog)
            .and_then(|c| c.schema(schema))
            .map(|s| s.table_names()))
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
            PUBLIC => Some(TableType::Base),
            SYSTEM => Some(TableType::View),
            _ => match self.list.catalog(catalog).and_then(|c| c.schema(schema)) {
                Some(s) => s.table_type(table).await?,
                None => None,
            },
        })
    }
}

/// `version()`, as PostgreSQL words it: clients (SQLAlchemy) read the server's version from it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Version {
    signature: Signature,
}

impl Default for Version {
    fn default() -> Self {
        Version {
            signature: Signature::exact(vec![], Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for Version {
    fn name(&self) -> &str {
        "version"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(format!(
            "PostgreSQL {SERVER_VERSION} (Tributary {}, on Apache DataFusion {}), {}-bit",
            env!("CARGO_PKG_VERSION"),
            datafusion::DATAFUSION_VERSION,
            usize::BITS
        )))))
    }
}

/// `to_regtype(name)`: the OID of a built-in type, NULL for any other (SQLAlchemy asks for
/// `hstore` on connecting, and takes NULL as "not installed").
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToRegtype {
    signature: Signature,
}

impl Default for ToRegtype {
    fn default() -> Self {
        ToRegtype {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Stable),
        }
    }
}

/// The built-in types `to_regtype` knows, by the names PostgreSQL accepts for them.
fn builtin_type_oid(name: &str) -> Option<i64> {
    use pgwire::api::Type;
    let t = match name.trim().to_ascii_lowercase().as_str() {
        "bool" | "boolean" => Type::BOOL,
        "int2" | "smallint" => Type::INT2,
        "int4" | "int" | "integer" => Type::INT4,
        "int8" | "bigint" => Type::INT8,
        "float4" | "real" => Type::FLOAT4,
        "float8" | "double precision" => Type::FLOAT8,
        "numeric" | "decimal" => Type::NUMERIC,
        "text" => Type::TEXT,
        "varchar" | "character varying" => Type::VARCHAR,
        "bytea" => Type::BYTEA,
        "date" => Type::DATE,
        "time" => Type::TIME,
        "timestamp" | "timestamp without time zone" => Type::TIMESTAMP,
        "timestamptz" | "timestamp with time zone" => Type::TIMESTAMPTZ,
        "interval" => Type::INTERVAL,
        "json" => Type::JSON,
        "jsonb" => Type::JSONB,
        "uuid" => Type::UUID,
        _ => return None,
    };
    Some(i64::from(t.oid()))
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let [name] = args.args.as_slice() else {
            return datafusion::common::exec_err!("to_regtype takes one argument");
        };
        let names = name.to_array(args.number_rows)?;
        let names = datafusion::common::cast::as_string_array(&names)?;
        let oids: datafusion::arrow::array::Int64Array =
            names.iter().map(|n| n.and_then(builtin_type_oid)).collect();
        Ok(ColumnarValue::Array(Arc::new(oids)))
    }
}

/// `pg_get_serial_sequence(table, column)`: NULL, as for a column no sequence fills (SQLAlchemy
/// asks when it reflects columns).
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoSequence {
    signature: Signature,
}

impl ScalarUDFImpl for NoSequence {
    fn name(&self) -> &str {
        "pg_get_serial_sequence"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}
