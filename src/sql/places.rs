//! Where in a pipeline's SELECT the errors of our own planning point: the window function in
//! its FROM, its GROUP BY, the SELECT itself. (DataFusion's errors carry their own places.)

use datafusion::sql::sqlparser::ast::{self, Spanned};
use datafusion::sql::sqlparser::tokenizer::{Location, Span};

/// Places in the outermost SELECT of a query.
#[derive(Debug, Clone, Copy, Default)]
pub struct Places {
    /// The SELECT keyword.
    pub select: Option<Location>,
    /// The first table function (TUMBLE, HOP, SESSION...) in its FROM.
    pub window_function: Option<Location>,
    /// The first GROUP BY expression.
    pub group_by: Option<Location>,
}

impl Places {
    /// The places of `query`'s outermost SELECT (none when it is not a plain SELECT).
    pub fn of(query: &ast::Query) -> Self {
        let ast::SetExpr::Select(select) = query.body.as_ref() else {
            return Places::default();
        };
        let start = |span: Span| (span != Span::empty()).then_some(span.start);
        let window_function = select.from.iter().find_map(|t| match &t.relation {
            table @ ast::TableFactor::Table { args: Some(_), .. } => start(table.span()),
            table @ ast::TableFactor::Function { .. } => start(table.span()),
            _ => None,
        });
        let group_by = match &select.group_by {
            ast::GroupByExpr::Expressions(exprs, _) => exprs.first().and_then(|e| start(e.span())),
            ast::GroupByExpr::All(_) => None,
        };
        Places {
            select: start(select.select_token.0.span),
            window_function,
            group_by,
        }
    }
}
