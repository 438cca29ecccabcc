//! SQL type names ↔ Arrow types: for column declarations in CREATE SOURCE and for SHOW output.

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    self, ColumnDef, ColumnOption, ExactNumberInfo, TimezoneInfo,
};

use crate::error::{Error, Result};
use crate::sql::parse::normalize;

/// The Arrow type a declared SQL type maps to.
pub fn arrow_type(t: &ast::DataType) -> Result<DataType> {
    use ast::DataType as S;
    Ok(match t {
        S::Boolean | S::Bool => DataType::Boolean,
        S::TinyInt(_) => DataType::Int8,
        S::SmallInt(_) | S::Int2(_) => DataType::Int16,
        S::Int(_) | S::Integer(_) | S::Int4(_) => DataType::Int32,
        S::BigInt(_) | S::Int8(_) => DataType::Int64,
        S::Real | S::Float4 => DataType::Float32,
        S::Float(ExactNumberInfo::Precision(p)) if *p <= 24 => DataType::Float32,
        S::Float(_) | S::Double(_) | S::DoublePrecision | S::Float8 | S::Float64 => DataType::Float64,
        S::Text | S::String(_) | S::Varchar(_) | S::CharacterVarying(_) | S::CharVarying(_) | S::Char(_) | S::Character(_) => {
            DataType::Utf8
        }
        S::Uuid | S::JSON | S::JSONB => DataType::Utf8,
        S::Bytea | S::Binary(_) | S::Varbinary(_) | S::Blob(_) => DataType::Binary,
        S::Date => DataType::Date32,
        S::Time(_, _) => DataType::Time64(TimeUnit::Microsecond),
        S::Timestamp(p, tz) => {
            let unit = match p {
                Some(0) => TimeUnit::Second,
                Some(1..=3) => TimeUnit::Millisecond,
                Some(4..=6) => TimeUnit::Microsecond,
                Some(_) => TimeUnit::Nanosecond,
                None => TimeUnit::Microsecond,
            };
            match tz {
                TimezoneInfo::WithTimeZone | TimezoneInfo::Tz => DataType::Timestamp(unit, Some("UTC".into())),
                _ => DataType::Timestamp(unit, None),
            }
        }
        S::Numeric(info) | S::Decimal(info) => match info {
            ExactNumberInfo::PrecisionAndScale(p, s) => DataType::Decimal128(*p as u8, *s as i8),
            ExactNumberInfo::Precision(p) => DataType::Decimal128(*p as u8, 0),
            ExactNumberInfo::None => DataType::Decimal128(38, 10),
        },
        S::Interval { .. } => DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
        other => return Err(Error::Unsupported(format!("column type {other} is not supported (use BIGINT, DOUBLE, TEXT, BOOLEAN, DATE, TIMESTAMP, DECIMAL(p,s), ...)"))),
    })
}

/// The Arrow schema of declared columns.
pub fn schema_from_columns(cols: &[ColumnDef]) -> Result<Schema> {
    let mut fields = Vec::with_capacity(cols.len());
    for c in cols {
        let not_null = c
            .options
            .iter()
            .any(|o| matches!(o.option, ColumnOption::NotNull));
        let name = normalize(&c.name);
        if fields.iter().any(|f: &Field| f.name() == &name) {
            return Err(Error::Plan(format!("column \"{name}\" is declared twice")));
        }
        fields.push(Field::new(name, arrow_type(&c.data_type)?, !not_null));
    }
    Ok(Schema::new(fields))
}

/// The SQL spelling of an Arrow type, for SHOW CREATE and system tables.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "SMALLINT".into(),
        DataType::Int32 | DataType::UInt16 => "INTEGER".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "BIGINT".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(unit, tz) => {
            let p = match unit {
                TimeUnit::Second => "(0)",
                TimeUnit::Millisecond => "(3)",
                TimeUnit::Microsecond => "",
                TimeUnit::Nanosecond => "(9)",
            };
            if tz.is_some() {
                format!("TIMESTAMP{p} WITH TIME ZONE")
            } else {
                format!("TIMESTAMP{p}")
            }
        }
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Interval(_) => "INTERVAL".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parse::{parse_statement, Statement};

    #[test]
    fn maps_declared_columns() {
        let Statement::CreateSource { columns, .. } = parse_statement(
            "CREATE SOURCE s (id BIGINT NOT NULL, name TEXT, ts TIMESTAMP, price DOUBLE PRECISION, d DATE, amount DECIMAL(10,2)) WITH (connector='file')",
        )
        .unwrap() else {
            panic!()
        };
        let schema = schema_from_columns(&columns.unwrap()).unwrap();
        let types: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| sql_type_name(f.data_type()))
            .collect();
        assert_eq!(
            types,
            vec![
                "BIGINT",
                "TEXT",
                "TIMESTAMP",
                "DOUBLE",
                "DATE",
                "DECIMAL(10,2)"
            ]
        );
        assert!(!schema.field(0).is_nullable());
    }
}
