//! Result column names as PostgreSQL gives them (`count`, `?column?`, `case`), rather than
//! DataFusion's expression text (`count(*)`, `Int64(1) + Int64(1)`): clients show them, and
//! tools (pandas, ORMs) key results by them.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast;

/// `schema`, a query's result, with its columns named as PostgreSQL names those of `statement`:
/// unaliased expressions of the outermost select list get PostgreSQL's name. Unchanged when
/// the statement is not a plain SELECT or its select list has a wildcard.
pub fn postgres_names(statement: &ast::Statement, schema: &SchemaRef) -> SchemaRef {
    let ast::Statement::Query(query) = statement else {
        return schema.clone();
    };
    let ast::SetExpr::Select(select) = query.body.as_ref() else {
        return schema.clone();
    };
    if select.projection.len() != schema.fields().len() {
        return schema.clone();
    }
    let mut renamed = false;
    let fields: Vec<Field> = select
        .projection
        .iter()
        .zip(schema.fields())
        .map(|(item, field)| match item {
            ast::SelectItem::UnnamedExpr(e) => {
                let name = column_name(e).unwrap_or_else(|| "?column?".into());
                renamed |= &name != field.name();
                field.as_ref().clone().with_name(name)
            }
            _ => field.as_ref().clone(),
        })
        .collect();
    if !renamed {
        return schema.clone();
    }
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// PostgreSQL's name for an unaliased select-list expression, when it has one (its
/// `FigureColname`); `None` reads `?column?`.
fn column_name(e: &ast::Expr) -> Option<String> {
    use ast::Expr as E;
    match e {
        E::Identifier(i) => Some(i.value.clone()),
        E::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
        E::Function(f) => f.name.0.last().map(|p| match p.as_ident() {
            Some(i) => i.value.clone(),
            None => p.to_string(),
        }),
        E::Cast {
            expr, data_type, ..
        } => column_name(expr).or_else(|| Some(type_name(data_type))),
        E::Nested(inner) => column_name(inner),
        E::Case { .. } => Some("case".into()),
        E::Array(_) => Some("array".into()),
        E::Exists { .. } => Some("exists".into()),
        E::Subquery(q) => match q.body.as_ref() {
            ast::SetExpr::Select(s) => match s.projection.first() {
                Some(ast::SelectItem::UnnamedExpr(e)) => column_name(e),
                Some(ast::SelectItem::ExprWithAlias { alias, .. }) => Some(alias.value.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The name PostgreSQL gives a cast to `data_type`: its type's internal name.
fn type_name(data_type: &ast::DataType) -> String {
    let written = data_type.to_string().to_ascii_lowercase();
    let base = written.split('(').next().unwrap_or(&written).trim();
    match base {
        "bigint" | "int8" => "int8",
        "integer" | "int" | "int4" => "int4",
        "smallint" | "int2" => "int2",
        "double precision" | "double" | "float8" => "float8",
        "real" | "float4" => "float4",
        "boolean" | "bool" => "bool",
        "character varying" | "varchar" => "varchar",
        "decimal" | "numeric" => "numeric",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp without time zone" | "timestamp" => "timestamp",
        other => other,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parse::{parse_statement, Statement};
    use datafusion::arrow::datatypes::DataType;

    fn names(sql: &str, n: usize) -> Vec<String> {
        let Statement::Sql(s) = parse_statement(sql).unwrap() else {
            panic!("not a query")
        };
        let schema = Arc::new(Schema::new(
            (0..n)
                .map(|i| Field::new(format!("df{i}"), DataType::Int64, true))
                .collect::<Vec<_>>(),
        ));
        postgres_names(&s, &schema)
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    #[test]
    fn columns_are_named_as_postgres_names_them() {
        assert_eq!(
            names(
                "SELECT 1, a.b, count(*), 2 * 3 AS six, x::text, 1::bigint, CASE WHEN true THEN 1 END, (SELECT max(y) FROM t), s.upper(x), (c)",
                10
            ),
            [
                "?column?", "b", "count", "df3", "x", "int8", "case", "max", "upper", "c"
            ]
        );
        // A wildcard keeps DataFusion's names.
        assert_eq!(names("SELECT *, 1 FROM t", 3), ["df0", "df1", "df2"]);
    }
}
