//! `JOIN t FOR SYSTEM_TIME AS OF <time>`: the syntax of a join with a table's version valid at
//! each row's time. DataFusion does not read table versions, so before planning each one moves
//! into its join's ON as a marker, `__as_of(<time>, t._op)`, that names both sides (no
//! optimiser rule can push it into one of them); lowering takes it out again.

use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    ColumnarValue, Expr, Join, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, JoinConstraint, JoinOperator, SetExpr, TableFactor, TableVersion, TableWithJoins, Visit,
    Visitor,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result};
use crate::runtime::operator::stateless::OP;

/// The marker's name.
const AS_OF: &str = "__as_of";

/// `__as_of(time, table._op)`: true; it marks the join whose table side is read as of `time`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AsOfMarker {
    signature: Signature,
}

impl AsOfMarker {
    /// The marker, as a function to register.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(AsOfMarker {
            // Volatile: never folded away.
            signature: Signature::any(2, Volatility::Volatile),
        })
    }
}

impl ScalarUDFImpl for AsOfMarker {
    fn name(&self) -> &str {
        AS_OF
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Plan(
            "FOR SYSTEM_TIME AS OF applies to a change stream joined with a stream in a pipeline"
                .into(),
        ))
    }
}

/// The tables `query` reads FOR SYSTEM_TIME AS OF.
pub fn versioned_tables(query: &ast::Query) -> Result<Vec<ast::ObjectName>> {
    let mut found = Vec::new();
    move_versions_into_joins(&mut query.clone(), &mut |name| {
        found.push(name.clone());
        Ok(Some(OP.to_string()))
    })?;
    Ok(found)
}

/// Moves each `FOR SYSTEM_TIME AS OF <time>` of `query` into its join's ON, as the marker,
/// which names the column of the table that `column_of` gives (`None`: the table is read as it
/// is whatever the time, and the version goes without a marker).
pub fn move_versions_into_joins(
    query: &mut ast::Query,
    column_of: &mut dyn FnMut(&ast::ObjectName) -> Result<Option<String>>,
) -> Result<()> {
    if let Some(with) = &mut query.with {
        for cte in &mut with.cte_tables {
            move_versions_into_joins(&mut cte.query, column_of)?;
        }
    }
    in_set_expr(&mut query.body, column_of)
}

type ColumnOf<'a> = &'a mut dyn FnMut(&ast::ObjectName) -> Result<Option<String>>;

fn in_set_expr(body: &mut SetExpr, column_of: ColumnOf) -> Result<()> {
    match body {
        SetExpr::Select(select) => {
            for from in &mut select.from {
                in_joins(from, column_of)?;
            }
            Ok(())
        }
        SetExpr::Query(q) => move_versions_into_joins(q, column_of),
        SetExpr::SetOperation { left, right, .. } => {
            in_set_expr(left, column_of)?;
            in_set_expr(right, column_of)
        }
        _ => Ok(()),
    }
}

fn in_joins(from: &mut TableWithJoins, column_of: ColumnOf) -> Result<()> {
    in_factor(&mut from.relation, None, column_of)?;
    for join in &mut from.joins {
        in_factor(&mut join.relation, Some(&mut join.join_operator), column_of)?;
    }
    Ok(())
}

fn in_factor(
    factor: &mut TableFactor,
    join: Option<&mut JoinOperator>,
    column_of: ColumnOf,
) -> Result<()> {
    match factor {
        TableFactor::Table {
            name,
            alias,
            version,
            ..
        } => {
            let Some(version) = version.take() else {
                return Ok(());
            };
            let TableVersion::ForSystemTimeAsOf(time) = version else {
                return Err(Error::Unsupported(format!(
                    "table versions are read with FOR SYSTEM_TIME AS OF, not {version}"
                )));
            };
            let relation = match alias {
                Some(a) => a.name.to_string(),
                None => name.0.last().map(ToString::to_string).unwrap_or_default(),
            };
            let constraint = match join {
                Some(
                    JoinOperator::Join(c)
                    | JoinOperator::Inner(c)
                    | JoinOperator::Left(c)
                    | JoinOperator::LeftOuter(c)
                    | JoinOperator::Right(c)
                    | JoinOperator::RightOuter(c)
                    | JoinOperator::FullOuter(c),
                ) => c,
                _ => {
                    return Err(Error::Unsupported(format!(
                        "FOR SYSTEM_TIME AS OF reads the table on the right of a JOIN ... ON: FROM orders o JOIN {relation} FOR SYSTEM_TIME AS OF o.<time> ON ..."
                    )))
                }
            };
            let Some(column) = column_of(name)? else {
                return Ok(());
            };
            let column = ast::Ident::with_quote('"', column);
            let marker = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&format!("{AS_OF}({time}, {relation}.{column})"))
                .and_then(|mut p| p.parse_expr())
                .map_err(|e| Error::Internal(format!("marking FOR SYSTEM_TIME AS OF: {e}")))?;
            match constraint {
                JoinConstraint::On(on) => {
                    let on_before = std::mem::replace(on, ast::Expr::value(ast::Value::Null));
                    *on = ast::Expr::BinaryOp {
                        left: Box::new(ast::Expr::Nested(Box::new(on_before))),
                        op: ast::BinaryOperator::And,
                        right: Box::new(marker),
                    };
                }
                _ => {
                    return Err(Error::Unsupported(format!(
                        "a join with {relation} FOR SYSTEM_TIME AS OF needs its condition in ON"
                    )))
                }
            }
            Ok(())
        }
        TableFactor::Derived { subquery, .. } => move_versions_into_joins(subquery, column_of),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => in_joins(table_with_joins, column_of),
        _ => Ok(()),
    }
}

/// `query` as text that parses back to it. sqlparser writes a table's version after its
/// alias, where it does not parse it: the version goes back before the alias.
pub fn query_text(query: &ast::Query) -> String {
    struct Versions(Vec<(String, String)>);
    impl Visitor for Versions {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                alias: Some(alias),
                version: Some(version),
                ..
            } = factor
            {
                self.0
                    .push((format!(" {alias} {version}"), format!(" {version} {alias}")));
            }
            ControlFlow::Continue(())
        }
    }
    let mut versions = Versions(Vec::new());
    let _ = query.visit(&mut versions);
    let mut text = query.to_string();
    for (written, parsed) in versions.0 {
        text = text.replacen(&written, &parsed, 1);
    }
    text
}

/// Whether `predicate` holds a marker: one an optimiser rule moved off its join, its time
/// naming no column of the stream joined.
pub(super) fn is_marked(predicate: &Expr) -> bool {
    split_conjunction(predicate)
        .iter()
        .any(|e| matches!(e, Expr::ScalarFunction(f) if f.func.name() == AS_OF))
}

/// A join that reads its table side as of a time: the time (an expression of the other side's
/// rows), and the join without the marker.
pub(super) struct AsOfJoin {
    pub time: Expr,
    /// The table's column the marker names: it tells which side is the table.
    pub table_column: Expr,
    pub join: Join,
}

/// The marked time of `join`, if its ON has the marker.
pub(super) fn as_of_join(join: &Join) -> Result<Option<AsOfJoin>> {
    let Some(filter) = &join.filter else {
        return Ok(None);
    };
    let mut time = None;
    let mut rest = Vec::new();
    for e in split_conjunction(filter) {
        match e {
            Expr::ScalarFunction(f) if f.func.name() == AS_OF && f.args.len() == 2 => {
                if time.is_some() {
                    return Err(Error::Unsupported(
                        "a join reads one table FOR SYSTEM_TIME AS OF".into(),
                    ));
                }
                time = Some((f.args[0].clone(), f.args[1].clone()));
            }
            other => rest.push(other.clone()),
        }
    }
    let Some((time, table_column)) = time else {
        return Ok(None);
    };
    let mut join = join.clone();
    join.filter = conjunction(rest);
    Ok(Some(AsOfJoin {
        time,
        table_column,
        join,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parse::{parse_statement, Statement};

    fn query(sql: &str) -> ast::Query {
        let Statement::Sql(stmt) = parse_statement(sql).unwrap() else {
            panic!("not a query: {sql}");
        };
        let ast::Statement::Query(q) = *stmt else {
            panic!("not a query: {sql}");
        };
        *q
    }

    #[test]
    fn a_query_with_versions_is_written_as_it_parses() {
        let q = query(
            "SELECT o.id FROM orders o LEFT JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.c = r.c JOIN fx FOR SYSTEM_TIME AS OF o.ts ON o.c = fx.c",
        );
        let text = query_text(&q);
        assert!(
            text.contains("rates FOR SYSTEM_TIME AS OF o.ts AS r"),
            "{text}"
        );
        assert_eq!(query(&text), q);
        assert_eq!(versioned_tables(&q).unwrap().len(), 2);
    }

    #[test]
    fn a_version_moves_into_its_join_as_the_marker() {
        let mut q = query(
            "SELECT o.id FROM orders o LEFT JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.c = r.c",
        );
        move_versions_into_joins(&mut q, &mut |_| Ok(Some("_op".into()))).unwrap();
        let text = q.to_string();
        assert!(
            text.contains(r#"ON (o.c = r.c) AND __as_of(o.ts, r."_op")"#),
            "{text}"
        );
        assert!(!text.contains("SYSTEM_TIME"), "{text}");
    }

    #[test]
    fn a_version_outside_a_join_is_refused() {
        let mut q = query("SELECT 1 FROM rates FOR SYSTEM_TIME AS OF now() AS r");
        let e = move_versions_into_joins(&mut q, &mut |_| Ok(Some("_op".into()))).unwrap_err();
        assert!(e.to_string().contains("on the right of a JOIN"), "{e}");
    }
}
