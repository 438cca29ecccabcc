//! Which statements a session's role may run: an admin anything, a reader queries and session
//! statements only (and a new password for itself).

use datafusion::sql::sqlparser::ast;

use crate::catalog::users::Role;
use crate::engine::session_statement;
use crate::error::{Error, Result};
use crate::sql::parse::Statement;

/// Refuses with SQLSTATE 42501 a statement `user`, of `role`, may not run.
pub fn check(statement: &Statement, role: Role, user: &str) -> Result<()> {
    if role == Role::Admin || reads_only(statement, user) {
        return Ok(());
    }
    Err(Error::InsufficientPrivilege(format!(
        "permission denied: {} needs an admin user, and \"{user}\" is a reader",
        statement.tag()
    )))
}

/// Whether a reader may run `statement`: it reads (a query, SHOW, EXPLAIN of a query) or only
/// touches the session (SET, BEGIN...), or it changes the reader's own password.
fn reads_only(statement: &Statement, user: &str) -> bool {
    match statement {
        Statement::Empty | Statement::Show { .. } | Statement::ShowCreate { .. } => true,
        Statement::AlterUser { name, .. } => name == user,
        Statement::Sql(stmt) => match stmt.as_ref() {
            ast::Statement::Query(_) => true,
            ast::Statement::Explain { statement, .. } => {
                matches!(statement.as_ref(), ast::Statement::Query(_))
            }
            other => session_statement(other).is_some() || matches!(other, ast::Statement::Set(_)),
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parse::parse_statement;

    fn allowed(sql: &str, role: Role) -> bool {
        check(&parse_statement(sql).unwrap(), role, "ann").is_ok()
    }

    #[test]
    fn readers_query_and_admins_do_everything() {
        for sql in [
            "SELECT * FROM tributary.pipelines",
            "EXPLAIN SELECT 1",
            "SHOW SOURCES",
            "SHOW CREATE SINK s",
            "SET application_name = 'x'",
            "BEGIN",
            "SHOW statement_timeout",
            "ALTER USER ann PASSWORD 'a new password'",
        ] {
            assert!(allowed(sql, Role::Reader), "{sql}");
            assert!(allowed(sql, Role::Admin), "{sql}");
        }
        for sql in [
            "CREATE SINK s WITH (connector = 'blackhole')",
            "DROP SOURCE s",
            "START PIPELINE p",
            "STOP PIPELINE p",
            "CREATE USER bob PASSWORD 'a password'",
            "ALTER USER bob PASSWORD 'a password'",
            "DROP USER bob",
            "CREATE TABLE t (a INT)",
            "INSERT INTO t VALUES (1)",
            "EXPLAIN INSERT INTO t VALUES (1)",
        ] {
            assert!(!allowed(sql, Role::Reader), "{sql}");
            assert!(allowed(sql, Role::Admin), "{sql}");
        }
        let e = check(
            &parse_statement("DROP SOURCE s").unwrap(),
            Role::Reader,
            "ann",
        )
        .unwrap_err();
        assert_eq!(e.sqlstate(), "42501");
        assert!(e.to_string().contains("\"ann\" is a reader"), "{e}");
    }
}
