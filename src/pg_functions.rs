//! PostgreSQL functions that clients call on connecting or reflecting and that neither DataFusion
//! nor `datafusion-pg-catalog` provide: `version()`, `to_regtype`, `json_build_object`,
//! `pg_collation_is_visible` and its kind, `pg_get_serial_sequence` and `pg_get_function_result`
//! and theirs, `pg_type_name` (for `information_schema.columns`) and `pipeline_definition` (for
//! `pg_get_viewdef`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use pgwire::api::Type;

use crate::catalog::Catalog;
use crate::pg_catalog::wire_type;

/// The PostgreSQL version clients are told (as `server_version` says).
pub const SERVER_VERSION: &str = "16.6";

/// The functions, to register in a session.
pub fn functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(Version::default()),
        ScalarUDF::new_from_impl(ToRegtype::default()),
        // No column is backed by a sequence (SQLAlchemy asks when it reflects columns).
        ScalarUDF::new_from_impl(NullText::new("pg_get_serial_sequence", 2)),
        // pg_proc lists PostgreSQL's built-in functions, not DataFusion's: none has a definition
        // here (psql's \df plans with these, and lists no function outside pg_catalog).
        ScalarUDF::new_from_impl(NullText::new("pg_get_function_result", 1)),
        ScalarUDF::new_from_impl(NullText::new("pg_get_function_arguments", 1)),
        ScalarUDF::new_from_impl(NullText::new("pg_get_function_identity_arguments", 1)),
        ScalarUDF::new_from_impl(SizePretty {
            signature: Signature::uniform(
                1,
                vec![DataType::Int64, DataType::Int32],
                Volatility::Immutable,
            ),
        }),
        // Relations have no size on disk of their own here (psql's \dt+ shows it).
        ScalarUDF::new_from_impl(NullText::bigint("pg_table_size", 1)),
        // Nothing has a comment (psql's \d+ and \dt+ show them).
        ScalarUDF::new_from_impl(NullText::new("col_description", 2)),
        ScalarUDF::new_from_impl(NullText::new("obj_description", 2)),
        ScalarUDF::new_from_impl(NullText::new("shobj_description", 2)),
        // Every object is on the search path (as pg_catalog's pg_table_is_visible answers).
        ScalarUDF::new_from_impl(Visible::new("pg_collation_is_visible")),
        ScalarUDF::new_from_impl(Visible::new("pg_type_is_visible")),
        ScalarUDF::new_from_impl(Visible::new("pg_function_is_visible")),
        ScalarUDF::new_from_impl(TypeName {
            short: false,
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(TypeName {
            short: true,
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(JsonBuildObject {
            signature: Signature::variadic_any(Volatility::Immutable),
        }),
    ]
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

/// The built-in types clients ask about: each with the name `information_schema` gives it and
/// the other names PostgreSQL accepts for it.
const BUILTIN_TYPES: &[(Type, &str, &[&str])] = &[
    (Type::BOOL, "boolean", &["bool"]),
    (Type::INT2, "smallint", &["int2"]),
    (Type::INT4, "integer", &["int4", "int"]),
    (Type::INT8, "bigint", &["int8"]),
    (Type::FLOAT4, "real", &["float4"]),
    (Type::FLOAT8, "double precision", &["float8"]),
    (Type::NUMERIC, "numeric", &["decimal"]),
    (Type::TEXT, "text", &[]),
    (Type::VARCHAR, "character varying", &["varchar"]),
    (Type::BYTEA, "bytea", &[]),
    (Type::DATE, "date", &[]),
    (Type::TIME, "time without time zone", &["time"]),
    (
        Type::TIMESTAMP,
        "timestamp without time zone",
        &["timestamp"],
    ),
    (
        Type::TIMESTAMPTZ,
        "timestamp with time zone",
        &["timestamptz"],
    ),
    (Type::INTERVAL, "interval", &[]),
    (Type::JSON, "json", &[]),
    (Type::JSONB, "jsonb", &[]),
    (Type::UUID, "uuid", &[]),
];

/// The OID of the built-in type named `name`.
fn builtin_type_oid(name: &str) -> Option<i64> {
    let name = name.trim().to_ascii_lowercase();
    BUILTIN_TYPES
        .iter()
        .find(|(_, standard, others)| *standard == name || others.contains(&name.as_str()))
        .map(|(t, _, _)| i64::from(t.oid()))
}

/// `f` applied to each value of a function's one text argument, NULL to NULL.
fn map_text<T, A>(
    function: &str,
    args: ScalarFunctionArgs,
    f: impl Fn(&str) -> Option<T>,
) -> datafusion::error::Result<ColumnarValue>
where
    A: Array + FromIterator<Option<T>> + 'static,
{
    let [values] = args.args.as_slice() else {
        return datafusion::common::exec_err!("{function} takes one argument");
    };
    let values = values.to_array(args.number_rows)?;
    let values = datafusion::common::cast::as_string_array(&values)?;
    let out: A = values.iter().map(|v| v.and_then(&f)).collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
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
        map_text::<_, Int64Array>("to_regtype", args, builtin_type_oid)
    }
}

/// A catalog function whose answer is NULL for every object Tributary has.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullText {
    name: &'static str,
    signature: Signature,
    /// Its type: text unless said.
    returns: DataType,
}

impl NullText {
    fn new(name: &'static str, args: usize) -> Self {
        NullText {
            name,
            signature: Signature::any(args, Volatility::Stable),
            returns: DataType::Utf8,
        }
    }

    /// The same, of type bigint.
    fn bigint(name: &'static str, args: usize) -> Self {
        NullText {
            returns: DataType::Int64,
            ..Self::new(name, args)
        }
    }
}

impl ScalarUDFImpl for NullText {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from(&self.returns)?))
    }
}

/// `json_build_object(key, value, ...)`: a JSON object of the pairs, as text (SQLAlchemy's column
/// reflection builds identity and collation options with it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

/// A value as JSON: numbers and booleans as themselves, NULL as null, anything else as its text.
fn json_value(value: &ScalarValue) -> serde_json::Value {
    use serde_json::Value;
    if value.is_null() {
        return Value::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => Value::Bool(*b),
        ScalarValue::Int8(Some(v)) => Value::from(*v),
        ScalarValue::Int16(Some(v)) => Value::from(*v),
        ScalarValue::Int32(Some(v)) => Value::from(*v),
        ScalarValue::Int64(Some(v)) => Value::from(*v),
        ScalarValue::UInt8(Some(v)) => Value::from(*v),
        ScalarValue::UInt16(Some(v)) => Value::from(*v),
        ScalarValue::UInt32(Some(v)) => Value::from(*v),
        ScalarValue::UInt64(Some(v)) => Value::from(*v),
        ScalarValue::Float32(Some(v)) => Value::from(*v),
        ScalarValue::Float64(Some(v)) => Value::from(*v),
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => Value::String(v.clone()),
        other => Value::String(other.to_string()),
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return datafusion::common::plan_err!(
                "json_build_object takes an even number of arguments (keys and values)"
            );
        }
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut out = StringBuilder::with_capacity(rows, rows * 32);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return datafusion::common::exec_err!("json_build_object: a key is NULL");
                }
                let key = match json_value(&key) {
                    serde_json::Value::String(k) => k,
                    other => other.to_string(),
                };
                object.insert(
                    key,
                    json_value(&ScalarValue::try_from_array(&pair[1], row)?),
                );
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `pg_..._is_visible(oid)`: true, every object being in a schema on the search path.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Visible {
    name: &'static str,
    signature: Signature,
}

impl Visible {
    fn new(name: &'static str) -> Self {
        Visible {
            name,
            signature: Signature::any(1, Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for Visible {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))
    }
}

/// `pg_type_name(arrow_type)`: the name PostgreSQL's `information_schema` gives the type that an
/// Arrow type (as DataFusion's `information_schema.columns.data_type` writes it) goes out as.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TypeName {
    /// `pg_udt_name`: the short name (`int8`); else `pg_type_name`, the standard one (`bigint`).
    short: bool,
    signature: Signature,
}

/// PostgreSQL's `information_schema` name for the type a column of `t` goes out as.
fn information_schema_type(t: &DataType) -> &'static str {
    let wire = wire_type(t);
    BUILTIN_TYPES
        .iter()
        .find(|(t, _, _)| *t == wire)
        .map_or("text", |(_, name, _)| name)
}

impl ScalarUDFImpl for TypeName {
    fn name(&self) -> &str {
        if self.short {
            "pg_udt_name"
        } else {
            "pg_type_name"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let short = self.short;
        map_text::<_, StringArray>(self.name(), args, |t| {
            Some(match t.parse::<DataType>() {
                Ok(parsed) if short => wire_type(&parsed).name().to_string(),
                Ok(parsed) => information_schema_type(&parsed).to_string(),
                Err(_) => t.to_string(),
            })
        })
    }
}

/// `pipeline_definition(relname)`: the SELECT of the pipeline of that name (NULL for any other
/// relation), which `pg_get_viewdef` of a pipeline's oid reads (see `sql::pg_compat`): psql's
/// `\d+ pipeline` prints it as the view's definition.
pub fn pipeline_definition(catalog: Arc<Catalog>) -> ScalarUDF {
    ScalarUDF::new_from_impl(PipelineDefinition {
        catalog,
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Stable),
    })
}

#[derive(Debug)]
struct PipelineDefinition {
    catalog: Arc<Catalog>,
    signature: Signature,
}

impl PartialEq for PipelineDefinition {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.catalog, &other.catalog)
    }
}

impl Eq for PipelineDefinition {}

impl std::hash::Hash for PipelineDefinition {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl ScalarUDFImpl for PipelineDefinition {
    fn name(&self) -> &str {
        "pipeline_definition"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        map_text::<_, StringArray>("pipeline_definition", args, |name| {
            self.catalog.pipeline(name).map(|p| p.query)
        })
    }
}

/// `pg_size_pretty(bytes)`, as PostgreSQL words sizes (`8192 bytes`, `22 MB`): psql's `\dt+`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SizePretty {
    signature: Signature,
}

/// `bytes` as `pg_size_pretty` words it: bytes below 10 kB, then the largest unit that keeps
/// the number below 20,480, rounded half away from zero.
fn size_pretty(bytes: i64) -> String {
    const LIMIT: i64 = 10 * 1024;
    const LIMIT2: i64 = LIMIT * 2 - 1;
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    if bytes.abs() < LIMIT {
        return format!("{bytes} bytes");
    }
    // One extra bit kept for rounding.
    let mut size = bytes >> 9;
    for unit in ["kB", "MB", "GB", "TB"] {
        if size.abs() < LIMIT2 {
            return format!("{} {unit}", half_rounded(size));
        }
        size >>= 10;
    }
    format!("{} PB", half_rounded(size))
}

impl ScalarUDFImpl for SizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let [bytes] = args.args.as_slice() else {
            return datafusion::common::exec_err!("pg_size_pretty takes one argument");
        };
        let bytes = bytes.to_array(args.number_rows)?;
        let bytes = datafusion::arrow::compute::cast(&bytes, &DataType::Int64)?;
        let bytes = datafusion::common::cast::as_int64_array(&bytes)?;
        let out: StringArray = bytes.iter().map(|b| b.map(size_pretty)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod size_tests {
    use super::size_pretty;

    #[test]
    fn sizes_read_as_postgresql_words_them() {
        // Figures from PostgreSQL 16's pg_size_pretty.
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(10_239), "10239 bytes");
        assert_eq!(size_pretty(10_240), "10 kB");
        assert_eq!(size_pretty(8_192 * 1_000), "8000 kB");
        assert_eq!(size_pretty(23_068_672), "22 MB");
        assert_eq!(size_pretty(-10_240), "-10 kB");
        assert_eq!(size_pretty(1_i64 << 50), "1024 TB");
    }
}
