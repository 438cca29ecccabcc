//! `COPY (query) TO STDOUT` and `COPY relation TO STDOUT`, which psql's `\copy ... to` sends: a
//! query's rows to the client in PostgreSQL's text format or as CSV, one message a row.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use datafusion::sql::sqlparser::ast;
use pgwire::messages::copy::CopyData;

use super::encode::{timestamp_at, timestamp_text};
use crate::error::{Error, Result};
use crate::sql::parse::Statement;

/// How rows are written.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFormat {
    csv: bool,
    header: bool,
    delimiter: char,
    null: String,
}

/// A `COPY ... TO STDOUT`: the query whose rows it writes, and how.
#[derive(Debug)]
pub struct CopyOut {
    pub query: Statement,
    pub format: CopyFormat,
}

/// The `COPY ... TO STDOUT` that `statement` is; `None` when it is no COPY, an error for a
/// COPY Tributary does not run (FROM, to a server file, binary).
pub fn copy_out(statement: &Statement) -> Option<Result<CopyOut>> {
    let Statement::Sql(s) = statement else {
        return None;
    };
    let ast::Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = s.as_ref()
    else {
        return None;
    };
    Some(plan(source, *to, target, options, legacy_options))
}

fn plan(
    source: &ast::CopySource,
    to: bool,
    target: &ast::CopyTarget,
    options: &[ast::CopyOption],
    legacy_options: &[ast::CopyLegacyOption],
) -> Result<CopyOut> {
    if !to {
        return Err(Error::Unsupported(
            "COPY FROM is not supported: declare the data as a source (CREATE SOURCE)".into(),
        ));
    }
    if !matches!(target, ast::CopyTarget::Stdout) {
        return Err(Error::Unsupported(
            "COPY TO writes to the client only (COPY ... TO STDOUT, or psql's \\copy); write files with a sink".into(),
        ));
    }
    let mut format = CopyFormat {
        csv: false,
        header: false,
        delimiter: '\t',
        null: "\\N".into(),
    };
    let mut delimiter = None;
    let mut null = None;
    for option in options {
        match option {
            ast::CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "csv" => format.csv = true,
                "text" => format.csv = false,
                other => {
                    return Err(Error::Unsupported(format!(
                        "COPY format {other}: text and csv are supported"
                    )))
                }
            },
            ast::CopyOption::Header(h) => format.header = *h,
            ast::CopyOption::Delimiter(d) => delimiter = Some(*d),
            ast::CopyOption::Null(n) => null = Some(n.clone()),
            other => {
                return Err(Error::Unsupported(format!(
                    "COPY option {other} is not supported"
                )))
            }
        }
    }
    for option in legacy_options {
        match option {
            ast::CopyLegacyOption::Csv(csv) => {
                format.csv = true;
                if csv
                    .iter()
                    .any(|o| matches!(o, ast::CopyLegacyCsvOption::Header))
                {
                    format.header = true;
                }
            }
            ast::CopyLegacyOption::Header => format.header = true,
            ast::CopyLegacyOption::Delimiter(d) => delimiter = Some(*d),
            ast::CopyLegacyOption::Null(n) => null = Some(n.clone()),
            other => {
                return Err(Error::Unsupported(format!(
                    "COPY option {other} is not supported"
                )))
            }
        }
    }
    if format.csv {
        format.delimiter = ',';
        format.null = String::new();
    }
    if let Some(d) = delimiter {
        format.delimiter = d;
    }
    if let Some(n) = null {
        format.null = n;
    }
    if format.header && !format.csv {
        return Err(Error::Unsupported(
            "COPY HEADER is available only in CSV mode".into(),
        ));
    }
    let query = match source {
        ast::CopySource::Query(q) => ast::Statement::Query(q.clone()),
        ast::CopySource::Table {
            table_name,
            columns,
        } => {
            let list = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match crate::sql::parse::parse_statement(&format!("SELECT {list} FROM {table_name}"))? {
                Statement::Sql(q) => *q,
                _ => return Err(Error::Internal("COPY's query did not parse as one".into())),
            }
        }
    };
    Ok(CopyOut {
        query: Statement::Sql(Box::new(query)),
        format,
    })
}

/// The header line, when asked for.
pub fn header(format: &CopyFormat, names: &[String]) -> Option<CopyData> {
    format.header.then(|| {
        let line: Vec<String> = names.iter().map(|n| csv_field(format, n)).collect();
        message(line.join(&format.delimiter.to_string()))
    })
}

/// The rows of `batch`, one message each.
pub fn rows(format: &CopyFormat, batch: &RecordBatch) -> Result<Vec<CopyData>> {
    let options = FormatOptions::default().with_date_format(Some("%Y-%m-%d"));
    let delimiter = format.delimiter.to_string();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // Logical nulls: a NULL literal's column has no null buffer.
    let nulls: Vec<_> = batch.columns().iter().map(|c| c.logical_nulls()).collect();
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut fields = Vec::with_capacity(formatters.len());
        for ((column, f), nulls) in batch.columns().iter().zip(&formatters).zip(&nulls) {
            if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                fields.push(format.null.clone());
                continue;
            }
            // Booleans and timestamps as PostgreSQL writes them (as query results are).
            let value = match column.data_type() {
                DataType::Boolean => if column.as_boolean().value(row) {
                    "t"
                } else {
                    "f"
                }
                .to_string(),
                DataType::Timestamp(unit, tz) => match timestamp_at(column, row, unit) {
                    Ok(at) => timestamp_text(&at, tz.is_some()),
                    Err(_) => f.value(row).to_string(),
                },
                _ => f.value(row).to_string(),
            };
            fields.push(if format.csv {
                csv_field(format, &value)
            } else {
                text_field(&value)
            });
        }
        out.push(message(fields.join(&delimiter)));
    }
    Ok(out)
}

fn message(mut line: String) -> CopyData {
    line.push('\n');
    CopyData::new(Bytes::from(line))
}

/// A CSV field: quoted when it holds the delimiter, a quote, a line break, or reads as NULL.
fn csv_field(format: &CopyFormat, value: &str) -> String {
    let needs_quotes = value == format.null
        || value
            .chars()
            .any(|c| c == format.delimiter || c == '"' || c == '\n' || c == '\r');
    if needs_quotes {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// A text-format field: backslash, tab and line breaks escaped.
fn text_field(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    tributary_connectors::postgres::sink::escape_copy(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parse::parse_statement;
    use arrow::array::{BooleanArray, Int64Array, StringArray};
    use std::sync::Arc;

    fn lines(sql: &str, batch: &RecordBatch) -> Vec<String> {
        let copy = copy_out(&parse_statement(sql).unwrap()).unwrap().unwrap();
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        header(&copy.format, &names)
            .into_iter()
            .chain(rows(&copy.format, batch).unwrap())
            .map(|d| String::from_utf8(d.data.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn rows_are_written_as_postgres_writes_them() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![Some(1), None])) as _),
            (
                "note",
                Arc::new(StringArray::from(vec![Some("a,\"b\"\tc"), Some("")])) as _,
            ),
            ("ok", Arc::new(BooleanArray::from(vec![true, false])) as _),
        ])
        .unwrap();
        assert_eq!(
            lines(
                "COPY (SELECT 1) TO STDOUT WITH (FORMAT csv, HEADER)",
                &batch
            ),
            ["id,note,ok\n", "1,\"a,\"\"b\"\"\tc\",t\n", ",\"\",f\n"]
        );
        assert_eq!(
            lines("COPY t TO STDOUT", &batch),
            ["1\ta,\"b\"\\tc\tt\n", "\\N\t\tf\n"]
        );
        // psql's \copy sends the options of old.
        assert_eq!(
            lines("COPY ( SELECT 1 ) TO STDOUT csv header", &batch).len(),
            3
        );
    }

    #[test]
    fn copies_tributary_does_not_run_are_refused() {
        for sql in [
            "COPY t FROM STDIN",
            "COPY t TO '/tmp/x.csv'",
            "COPY t TO STDOUT WITH (FORMAT binary)",
        ] {
            let e = copy_out(&parse_statement(sql).unwrap())
                .unwrap()
                .unwrap_err();
            assert_eq!(e.sqlstate(), "0A000", "{sql}: {e}");
        }
    }
}
