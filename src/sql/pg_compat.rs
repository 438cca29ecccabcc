//! Catalog queries of PostgreSQL clients (psql's `\d` commands, SQLAlchemy's and JDBC's
//! reflection) rewritten into queries DataFusion plans, by `datafusion-pg-catalog`'s rules.

use std::sync::LazyLock;

use datafusion::sql::sqlparser::ast;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

static PARSER: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// The query `sql` rewritten for DataFusion when it reads PostgreSQL's catalog, else `None`.
/// Only such queries are rewritten: some rules trade exactness for an answer (a subquery in a
/// select list the planner refuses becomes NULL), which clients' catalog queries tolerate and a
/// user's query must not meet.
pub fn client_catalog_query(sql: &str) -> Option<ast::Statement> {
    if !reads_pg_catalog(sql) {
        return None;
    }
    let mut statements = PARSER.parse(sql).ok()?;
    match (statements.pop(), statements.is_empty()) {
        (Some(s @ ast::Statement::Query(_)), true) => Some(s),
        _ => None,
    }
}

/// Whether `sql` names a `pg_` relation or function (`pg_catalog.pg_class`, `pg_get_userbyid`).
fn reads_pg_catalog(sql: &str) -> bool {
    sql.as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"pg_"))
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
}
