//! Catalog queries of PostgreSQL clients (psql's `\d` commands, SQLAlchemy's and JDBC's
//! reflection) rewritten into queries DataFusion plans, by `datafusion-pg-catalog`'s rules.

use std::sync::LazyLock;

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

static PARSER: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// The query `sql` rewritten for DataFusion when it reads PostgreSQL's catalog, else `None`.
/// Only such queries are rewritten: some rules trade exactness for an answer (a subquery in a
/// select list the planner refuses becomes NULL), which clients' catalog queries tolerate and a
/// user's query must not meet.
pub fn client_catalog_query(sql: &str) -> Option<ast::Statement> {
    let columns = contains_ignoring_case(sql, "information_schema.columns");
    if !reads_pg_catalog(sql) && !columns {
        return None;
    }
    let mut statements = PARSER.parse(sql).ok()?;
    match (statements.pop(), statements.is_empty()) {
        (Some(mut s @ ast::Statement::Query(_)), true) => {
            drop_subqueries_in_case(&mut s);
            drop_array_subqueries(&mut s);
            visible_by_search_path(&mut s);
            view_definitions(&mut s);
            aggregate_scalar_subqueries(&mut s);
            if columns {
                postgres_type_names(&mut s);
            }
            Some(s)
        }
        _ => None,
    }
}

/// Replaces the subqueries inside CASE expressions with NULL, as `datafusion-pg-catalog` does
/// for those of a select list: DataFusion cannot run a correlated subquery evaluated only for
/// some rows. What clients look up that way (a column's default expression, identity options,
/// collation) Tributary's relations do not have, so NULL is also the answer.
fn drop_subqueries_in_case(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if matches!(expr, ast::Expr::Case { .. }) {
            let _ = ast::visit_expressions_mut(expr, |inner| {
                if matches!(inner, ast::Expr::Subquery(_)) {
                    if let Some(null) = parse_expr("NULL") {
                        *inner = null;
                    }
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Replaces `ARRAY(subquery)` and `reloptions` columns with an empty text array: DataFusion has
/// no such constructor, pg_catalog no such column, and what psql's `\d+` collects with them (a
/// relation's storage options and its TOAST table's) Tributary's relations do not have.
fn drop_array_subqueries(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        let replace = match expr {
            ast::Expr::Function(f) => {
                calls(f, "array") && matches!(f.args, ast::FunctionArguments::Subquery(_))
            }
            ast::Expr::CompoundIdentifier(parts) => parts
                .last()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("reloptions")),
            _ => false,
        };
        if replace {
            if let Some(none) = parse_expr("CAST(NULL AS TEXT[])") {
                *expr = none;
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Whether `f` calls the function `name` (in any schema).
fn calls(f: &ast::Function, name: &str) -> bool {
    f.name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .is_some_and(|i| i.value.eq_ignore_ascii_case(name))
}

/// The arguments of `f` when it calls `name` with a list of them.
fn call_args<'a>(f: &'a ast::Function, name: &str) -> Option<&'a [ast::FunctionArg]> {
    match &f.args {
        ast::FunctionArguments::List(list) if calls(f, name) => Some(&list.args),
        _ => None,
    }
}

/// The schemas a relation's unqualified name finds (`search_path`, with pg_catalog).
const SEARCH_PATH: &str = "'public', 'pg_catalog'";

/// Replaces `pg_table_is_visible(c.oid)` with a test of `c`'s schema against the search path:
/// `datafusion-pg-catalog`'s answers true for every relation, so psql's `\dt` and SQLAlchemy's
/// table names would list the system tables of schema `tributary` beside the sources and sinks.
fn visible_by_search_path(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Function(f) = expr {
            let arg = match call_args(f, "pg_table_is_visible") {
                Some(
                    [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
                        ast::Expr::CompoundIdentifier(parts),
                    ))],
                ) => Some(parts.clone()),
                _ => None,
            };
            if let Some(parts) = arg {
                let oid = parts
                    .last()
                    .is_some_and(|p| p.value.eq_ignore_ascii_case("oid"));
                if oid && parts.len() > 1 {
                    let relation = parts[..parts.len() - 1]
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(".");
                    if let Some(test) = parse_expr(&format!(
                        "({relation}.relnamespace IN (SELECT __ns.oid FROM pg_catalog.pg_namespace __ns WHERE __ns.nspname IN ({SEARCH_PATH})))"
                    )) {
                        *expr = test;
                    }
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Replaces `pg_get_viewdef(oid [, pretty])` with the SELECT of the pipeline whose relation has
/// that oid (pipelines are the views): psql's `\d+ pipeline` prints it as the definition.
fn view_definitions(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Function(f) = expr {
            let oid = match call_args(f, "pg_get_viewdef") {
                Some([ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)), ..]) => {
                    Some(e.clone())
                }
                _ => None,
            };
            if let Some(oid) = oid {
                if let Some(definition) = parse_expr(&format!(
                    "(SELECT pipeline_definition(__c.relname) FROM pg_catalog.pg_class __c JOIN pg_catalog.pg_namespace __n ON __n.oid = __c.relnamespace WHERE __c.oid = {oid} AND __c.relkind = 'v' AND __n.nspname = 'public')"
                )) {
                    *expr = definition;
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Reads `information_schema.columns.data_type` as PostgreSQL names types (`bigint`,
/// `timestamp with time zone`) rather than as DataFusion does (`Int64`, `Timestamp(µs, "UTC")`):
/// Grafana's query builder and dbt read it to pick time and numeric columns. Every reference to
/// a `data_type` column goes through `pg_type_name`, and one to `udt_name` (`int8`,
/// `timestamptz`; DataFusion has no such column) reads `pg_udt_name(data_type)`; a bare one in
/// the select list keeps its name.
fn postgres_type_names(statement: &mut ast::Statement) {
    let column_named = |e: &ast::Expr, name: &str| match e {
        ast::Expr::Identifier(i) => i.value.eq_ignore_ascii_case(name),
        ast::Expr::CompoundIdentifier(parts) => parts
            .last()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(name)),
        _ => false,
    };
    let _ = ast::visit_expressions_mut(statement, |expr| {
        let rewritten = if column_named(expr, "data_type") {
            parse_expr(&format!("pg_type_name({expr})"))
        } else if column_named(expr, "udt_name") {
            // DataFusion's information_schema has no udt_name: it is the type's short name.
            let data_type = match expr {
                ast::Expr::CompoundIdentifier(parts) => {
                    let mut parts = parts.clone();
                    if let Some(last) = parts.last_mut() {
                        *last = ast::Ident::new("data_type");
                    }
                    ast::Expr::CompoundIdentifier(parts)
                }
                _ => ast::Expr::Identifier(ast::Ident::new("data_type")),
            };
            parse_expr(&format!("pg_udt_name({data_type})"))
        } else {
            None
        };
        if let Some(rewritten) = rewritten {
            *expr = rewritten;
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    if let ast::Statement::Query(query) = statement {
        if let ast::SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                if let ast::SelectItem::UnnamedExpr(e) = item {
                    let text = e.to_string();
                    let alias = if text.starts_with("pg_type_name(") {
                        "data_type"
                    } else if text.starts_with("pg_udt_name(") {
                        "udt_name"
                    } else {
                        continue;
                    };
                    *item = ast::SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: ast::Ident::new(alias),
                    };
                }
            }
        }
    }
}

fn contains_ignoring_case(text: &str, word: &str) -> bool {
    text.as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
}

/// Aggregates that a scalar subquery's select list may already hold.
const AGGREGATES: &[&str] = &[
    "max",
    "min",
    "count",
    "sum",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
];

/// Wraps the value of each scalar subquery in `max(...)`: DataFusion plans a correlated scalar
/// subquery only when it is aggregated, and a catalog lookup by OID (`(SELECT typcollation FROM
/// pg_type WHERE oid = atttypid)`) finds at most one row, whose value `max` is.
fn aggregate_scalar_subqueries(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Subquery(query) = expr {
            if let ast::SetExpr::Select(select) = query.body.as_mut() {
                let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
                if let ([item], false) = (select.projection.as_mut_slice(), grouped) {
                    let value = match item {
                        ast::SelectItem::UnnamedExpr(e) => Some(e),
                        ast::SelectItem::ExprWithAlias { expr, .. } => Some(expr),
                        _ => None,
                    };
                    if let Some(value) = value {
                        let aggregated = matches!(value, ast::Expr::Function(f)
                            if AGGREGATES.iter().any(|a| f.name.to_string().eq_ignore_ascii_case(a)));
                        if !aggregated {
                            if let Some(wrapped) = parse_expr(&format!("max({value})")) {
                                *value = wrapped;
                            }
                        }
                    }
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

fn parse_expr(sql: &str) -> Option<ast::Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_expr()
        .ok()
}

/// Whether `sql` names a `pg_` relation or function (`pg_catalog.pg_class`, `pg_get_userbyid`).
fn reads_pg_catalog(sql: &str) -> bool {
    contains_ignoring_case(sql, "pg_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_catalog_queries_are_rewritten() {
        assert!(client_catalog_query("SELECT 1").is_none());
        assert!(client_catalog_query("SELECT relname FROM pg_catalog.pg_class").is_some());
        // psql's footer query for policies is answered by an empty one.
        let q = client_catalog_query(
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname ~ '^(x)$' AND pg_catalog.pg_table_is_visible(c.oid)",
        );
        assert!(q.is_some());
    }

    #[test]
    fn scalar_subqueries_of_catalog_queries_are_aggregated() {
        let q = client_catalog_query(
            "SELECT a.attname FROM pg_catalog.pg_attribute a \
             WHERE (SELECT t.typname FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) = 'text' \
             AND (SELECT count(*) FROM pg_catalog.pg_type) > 0 \
             AND CASE WHEN a.atthasdef THEN (SELECT true FROM pg_catalog.pg_attrdef) ELSE true END",
        )
        .unwrap()
        .to_string();
        assert!(q.contains("(SELECT max(t.typname) FROM"), "{q}");
        assert!(q.contains("(SELECT count(*) FROM"), "{q}");
        assert!(q.contains("THEN NULL ELSE true END"), "{q}");
    }

    #[test]
    fn information_schema_types_read_as_postgres_names_them() {
        let q = client_catalog_query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE data_type = 'bigint'",
        )
        .unwrap()
        .to_string();
        assert_eq!(
            q,
            "SELECT column_name, pg_type_name(data_type) AS data_type FROM information_schema.columns WHERE pg_type_name(data_type) = 'bigint'"
        );
        assert!(client_catalog_query("SELECT data_type FROM t").is_none());
    }

    #[test]
    fn table_visibility_follows_the_search_path() {
        let q = client_catalog_query(
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE pg_catalog.pg_table_is_visible(c.oid)",
        )
        .unwrap()
        .to_string();
        assert!(
            q.contains("c.relnamespace IN (SELECT __ns.oid FROM pg_catalog.pg_namespace __ns WHERE __ns.nspname IN ('public', 'pg_catalog'))"),
            "{q}"
        );
    }
}
