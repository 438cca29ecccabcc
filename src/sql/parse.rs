//! Parses Tributary's statements (CREATE SOURCE/SINK/PIPELINE, START/STOP, DROP, SHOW) on top of
//! sqlparser, and hands every other statement (SELECT, SET, EXPLAIN...) through as sqlparser AST.

use std::collections::BTreeMap;

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, ColumnDef, Expr, Ident, Query, Value, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

use crate::error::{Error, Result};

mod users;
pub use users::Password;

/// Kinds of catalog objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// CREATE SOURCE.
    Source,
    /// CREATE SINK.
    Sink,
    /// CREATE PIPELINE.
    Pipeline,
}

impl ObjectKind {
    /// Lowercase name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Source => "source",
            ObjectKind::Sink => "sink",
            ObjectKind::Pipeline => "pipeline",
        }
    }
}

/// A parsed statement.
#[derive(Debug, Clone)]
pub enum Statement {
    /// `CREATE SOURCE [IF NOT EXISTS] name [(cols)] WITH (...)`.
    CreateSource {
        /// Source name (lowercased unless quoted).
        name: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
        /// Declared columns, when any.
        columns: Option<Vec<ColumnDef>>,
        /// PRIMARY KEY columns.
        primary_key: Vec<String>,
        /// `WATERMARK FOR col AS expr`, as written.
        watermark: Option<(String, String)>,
        /// WITH options.
        options: BTreeMap<String, String>,
    },
    /// `CREATE SINK [IF NOT EXISTS] name WITH (...)`.
    CreateSink {
        /// Sink name.
        name: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
        /// WITH options.
        options: BTreeMap<String, String>,
    },
    /// `CREATE PIPELINE [IF NOT EXISTS] name [WITH (...)] AS INSERT INTO sink SELECT ...`.
    CreatePipeline {
        /// Pipeline name.
        name: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
        /// WITH options (mode, checkpoint_interval, on_error).
        options: BTreeMap<String, String>,
        /// Target sink.
        sink: String,
        /// The SELECT.
        query: Box<Query>,
    },
    /// `START PIPELINE name`.
    StartPipeline {
        /// Pipeline name.
        name: String,
    },
    /// `STOP PIPELINE name`.
    StopPipeline {
        /// Pipeline name.
        name: String,
    },
    /// `DROP SOURCE|SINK|PIPELINE [IF EXISTS] name`.
    Drop {
        /// What to drop.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// IF EXISTS given.
        if_exists: bool,
        /// `DROP SOURCE ... KEEP SLOT`: leave the upstream replication slot in place.
        keep_slot: bool,
    },
    /// `SHOW SOURCES|SINKS|PIPELINES`.
    Show {
        /// What to list.
        kind: ObjectKind,
    },
    /// `SHOW CREATE SOURCE|SINK|PIPELINE name`.
    ShowCreate {
        /// What to show.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },
    /// `CREATE USER [IF NOT EXISTS] name [WITH] PASSWORD '...' [ADMIN | READER]`.
    CreateUser {
        /// Login name.
        name: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
        /// The password (only its verifier is kept).
        password: Password,
        /// ADMIN given (otherwise a reader).
        admin: bool,
    },
    /// `ALTER USER name [WITH] PASSWORD '...'`.
    AlterUser {
        /// Login name.
        name: String,
        /// The new password.
        password: Password,
    },
    /// `DROP USER [IF EXISTS] name`.
    DropUser {
        /// Login name.
        name: String,
        /// IF EXISTS given.
        if_exists: bool,
    },
    /// `CREATE SECRET [IF NOT EXISTS] name AS '...'`.
    CreateSecret {
        /// Its name.
        name: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
        /// The value (kept encrypted).
        value: Password,
    },
    /// `ALTER SECRET name AS '...'`.
    AlterSecret {
        /// Its name.
        name: String,
        /// The new value.
        value: Password,
    },
    /// `DROP SECRET [IF EXISTS] name`.
    DropSecret {
        /// Its name.
        name: String,
        /// IF EXISTS given.
        if_exists: bool,
    },
    /// Any other SQL statement, for DataFusion or the session.
    Sql(Box<ast::Statement>),
    /// Only comments or whitespace.
    Empty,
}

impl Statement {
    /// The command tag a client sees on success.
    pub fn tag(&self) -> String {
        match self {
            Statement::CreateSource { .. } => "CREATE SOURCE".into(),
            Statement::CreateSink { .. } => "CREATE SINK".into(),
            Statement::CreatePipeline { .. } => "CREATE PIPELINE".into(),
            Statement::StartPipeline { .. } => "START PIPELINE".into(),
            Statement::StopPipeline { .. } => "STOP PIPELINE".into(),
            Statement::Drop { kind, .. } => format!("DROP {}", kind.name().to_ascii_uppercase()),
            Statement::Show { .. } | Statement::ShowCreate { .. } => "SHOW".into(),
            // PostgreSQL's tags: a user is a role that can log in.
            Statement::CreateUser { .. } => "CREATE ROLE".into(),
            Statement::AlterUser { .. } => "ALTER ROLE".into(),
            Statement::DropUser { .. } => "DROP ROLE".into(),
            Statement::CreateSecret { .. } => "CREATE SECRET".into(),
            Statement::AlterSecret { .. } => "ALTER SECRET".into(),
            Statement::DropSecret { .. } => "DROP SECRET".into(),
            Statement::Sql(_) | Statement::Empty => "SELECT".into(),
        }
    }
}

/// A statement and where it sits in the text it came from.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    /// The statement.
    pub statement: Statement,
    /// Its text.
    pub text: String,
    /// Character offset of its first character in the whole input.
    pub offset: usize,
}

/// Splits `sql` into statements at top-level semicolons. Each piece keeps its offset so errors
/// can point into the original text.
pub fn split_statements(sql: &str) -> Result<Vec<(String, usize)>> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Syntax {
            message: strip_location(&e.message),
            position: Some(char_position(sql, e.location)),
        })?;
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let chars: Vec<char> = sql.chars().collect();
    // Character offset of each line's start, so each token's offset is found in constant time.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            chars
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == '\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    let mut significant = false;
    for t in &tokens {
        let loc = t.span.start;
        let pos = match (loc.line as usize).checked_sub(1) {
            Some(line) => line_starts
                .get(line)
                .map_or(chars.len(), |l| l + (loc.column as usize).max(1) - 1),
            None => chars.len(),
        };
        match &t.token {
            Token::SemiColon => {
                if let (Some(s), true) = (start, significant) {
                    out.push((
                        chars[s..pos]
                            .iter()
                            .collect::<String>()
                            .trim_end()
                            .to_string(),
                        s,
                    ));
                }
                start = None;
                significant = false;
            }
            Token::Whitespace(_) => {}
            _ => {
                if start.is_none() {
                    start = Some(pos);
                }
                significant = true;
            }
        }
    }
    if let (Some(s), true) = (start, significant) {
        out.push((
            chars[s..].iter().collect::<String>().trim_end().to_string(),
            s,
        ));
    }
    Ok(out)
}

/// Parses a whole script or query string into statements.
pub fn parse_sql(sql: &str) -> Result<Vec<ParsedStatement>> {
    let mut out = Vec::new();
    for (text, offset) in split_statements(sql)? {
        let statement = parse_statement(&text).map_err(|e| shift(e, offset))?;
        out.push(ParsedStatement {
            statement,
            text,
            offset,
        });
    }
    Ok(out)
}

fn shift(e: Error, offset: usize) -> Error {
    match e {
        Error::Syntax { message, position } => Error::Syntax {
            message,
            position: position.map(|p| p + offset),
        },
        other => other,
    }
}

/// How deep expressions and subqueries may nest in a statement. Deeper statements are refused
/// with SQLSTATE 54001 (PostgreSQL's `stack depth limit exceeded`), so that planning, optimising
/// and evaluating them, all recursive, stay well inside a thread's stack.
pub const MAX_NESTING_DEPTH: usize = 1_000;
/// Statements of more tokens are refused with 54000 before they are parsed.
const MAX_STATEMENT_TOKENS: usize = 1_000_000;
/// Statements of up to this many tokens are parsed on the caller's thread: their syntax tree
/// cannot be deeper than their token count, which any thread's stack holds.
const INLINE_PARSE_TOKENS: usize = 2_000;
/// Stack bytes per token for the parse thread of a long statement: a left-deep chain such as
/// `1+1+...+1` is as deep as it has operators, and building, checking and dropping its syntax
/// tree recurses once per level.
const STACK_BYTES_PER_TOKEN: usize = 1_024;

/// Parses one statement (no trailing semicolon needed). A statement nested deeper than
/// [`MAX_NESTING_DEPTH`] is an error, whatever its size: a long one is parsed on a thread whose
/// stack fits its syntax tree, and that tree is dropped there when it is refused.
pub fn parse_statement(sql: &str) -> Result<Statement> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Syntax {
            message: format!("syntax error: {}", strip_location(&e.message)),
            position: Some(char_position(sql, e.location)),
        })?;
    let significant = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .count();
    if significant > MAX_STATEMENT_TOKENS {
        return Err(Error::ProgramLimit(format!(
            "statement too long: {significant} tokens, at most {MAX_STATEMENT_TOKENS} are accepted"
        )));
    }
    // Table versions are parsed only where a statement asks for them (see VersionedDialect).
    let versioned = super::dialect::reads_versions(&tokens);
    let parse = move || {
        let versions = super::dialect::VersionedDialect::default();
        let dialect: &dyn datafusion::sql::sqlparser::dialect::Dialect = match versioned {
            true => &versions,
            false => &dialect,
        };
        let parser = Parser::new(dialect).with_tokens_with_locations(tokens);
        let mut p = StatementParser { parser, sql };
        let statement = p.parse().map_err(|e| syntax(sql, e))?;
        check_depth(&statement)?;
        Ok(statement)
    };
    if significant <= INLINE_PARSE_TOKENS {
        return match parse()? {
            // A client's catalog query (short ones only: the rules recurse on this thread).
            Statement::Sql(query) if matches!(*query, ast::Statement::Query(_)) => {
                match super::pg_compat::client_catalog_query(sql) {
                    Some(rewritten) => {
                        let statement = Statement::Sql(Box::new(rewritten));
                        check_depth(&statement)?;
                        Ok(statement)
                    }
                    None => Ok(Statement::Sql(query)),
                }
            }
            other => Ok(other),
        };
    }
    let stack = 16 * 1024 * 1024 + significant * STACK_BYTES_PER_TOKEN;
    std::thread::scope(|scope| {
        let parser = std::thread::Builder::new()
            .name("sql-parse".into())
            .stack_size(stack)
            .spawn_scoped(scope, parse)
            .map_err(|e| Error::io("starting a thread to parse a long statement", e))?;
        parser
            .join()
            .map_err(|_| Error::Internal("the SQL parser panicked".into()))?
    })
}

/// Refuses a statement whose expressions or subqueries nest deeper than [`MAX_NESTING_DEPTH`].
/// The walk stops at the limit, so it never recurses deeper than that itself.
fn check_depth(statement: &Statement) -> Result<()> {
    let mut depth = NestingDepth::default();
    let flow = match statement {
        Statement::Sql(stmt) => stmt.visit(&mut depth),
        Statement::CreatePipeline { query, .. } => query.visit(&mut depth),
        Statement::CreateSource {
            columns: Some(columns),
            ..
        } => columns.visit(&mut depth),
        _ => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(too_deep()),
    }
}

fn too_deep() -> Error {
    Error::StackDepth(format!(
        "statement nested too deeply: expressions and subqueries may nest at most {MAX_NESTING_DEPTH} levels deep"
    ))
}

/// Counts how deep expressions nest, set operations (`UNION` chains, which the parser builds
/// left-deep) included, and stops the walk past the limit. Subqueries and parentheses are also
/// bounded by the parser's own recursion limit.
#[derive(Default)]
struct NestingDepth {
    depth: usize,
    /// What each query being visited added to `depth`.
    query_levels: Vec<usize>,
}

impl NestingDepth {
    fn enter(&mut self, levels: usize) -> ControlFlow<()> {
        self.depth += levels;
        if self.depth > MAX_NESTING_DEPTH {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Visitor for NestingDepth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.enter(1)
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        // The chain's length, walked without recursion.
        let mut levels = 0;
        let mut body = query.body.as_ref();
        while let ast::SetExpr::SetOperation { left, .. } = body {
            levels += 1;
            body = left.as_ref();
        }
        self.query_levels.push(levels);
        self.enter(levels)
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.depth -= self.query_levels.pop().unwrap_or(0);
        ControlFlow::Continue(())
    }
}

struct StatementParser<'a> {
    parser: Parser<'a>,
    sql: &'a str,
}

impl<'a> StatementParser<'a> {
    fn peek_word(&self, n: usize) -> Option<String> {
        match self.parser.peek_nth_token(n).token {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn word(&mut self, w: &str) -> bool {
        if self.peek_word(0).as_deref() == Some(w) {
            self.parser.next_token();
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, w: &str) -> std::result::Result<(), ParserError> {
        if self.word(w) {
            Ok(())
        } else {
            self.parser.expected(w, self.parser.peek_token())
        }
    }

    fn kind(&mut self, plural: bool) -> std::result::Result<ObjectKind, ParserError> {
        let (s, k, p) = if plural {
            ("SOURCES", "SINKS", "PIPELINES")
        } else {
            ("SOURCE", "SINK", "PIPELINE")
        };
        if self.word(s) {
            Ok(ObjectKind::Source)
        } else if self.word(k) {
            Ok(ObjectKind::Sink)
        } else if self.word(p) {
            Ok(ObjectKind::Pipeline)
        } else {
            self.parser
                .expected(&format!("{s}, {k} or {p}"), self.parser.peek_token())
        }
    }

    fn name(&mut self) -> std::result::Result<String, ParserError> {
        let ident = self.parser.parse_identifier()?;
        Ok(normalize(&ident))
    }

    fn is_ours(&self) -> bool {
        let w0 = self.peek_word(0);
        let w1 = self.peek_word(1);
        let w2 = self.peek_word(2);
        let kinds = ["SOURCE", "SINK", "PIPELINE"];
        let plural = ["SOURCES", "SINKS", "PIPELINES"];
        match (w0.as_deref(), w1.as_deref()) {
            (Some("CREATE" | "ALTER" | "DROP"), Some("USER" | "SECRET")) => true,
            (Some("CREATE"), Some(k)) | (Some("DROP"), Some(k)) => kinds.contains(&k),
            (Some("START"), Some("PIPELINE")) | (Some("STOP"), Some("PIPELINE")) => true,
            (Some("SHOW"), Some(k)) if plural.contains(&k) => true,
            (Some("SHOW"), Some("CREATE")) => {
                w2.map(|w| kinds.contains(&w.as_str())).unwrap_or(false)
            }
            _ => false,
        }
    }

    fn parse(&mut self) -> std::result::Result<Statement, ParserError> {
        if self.parser.peek_token().token == Token::EOF {
            return Ok(Statement::Empty);
        }
        if !self.is_ours() {
            let stmt = self.parser.parse_statement()?;
            self.end()?;
            return Ok(Statement::Sql(Box::new(stmt)));
        }
        let object = self.peek_word(1);
        let stmt = if matches!(object.as_deref(), Some("USER" | "SECRET")) {
            let verb = self.peek_word(0);
            self.parser.next_token();
            self.parser.next_token();
            match (verb.as_deref(), object.as_deref()) {
                (Some("CREATE"), Some("USER")) => self.create_user()?,
                (Some("ALTER"), Some("USER")) => self.alter_user()?,
                (_, Some("USER")) => self.drop_user()?,
                (Some("CREATE"), _) => self.create_secret()?,
                (Some("ALTER"), _) => self.alter_secret()?,
                _ => self.drop_secret()?,
            }
        } else if self.word("CREATE") {
            let kind = self.kind(false)?;
            let if_not_exists =
                self.parser
                    .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = self.name()?;
            match kind {
                ObjectKind::Source => self.create_source(name, if_not_exists)?,
                ObjectKind::Sink => {
                    let options = self.with_options(true)?;
                    Statement::CreateSink {
                        name,
                        if_not_exists,
                        options,
                    }
                }
                ObjectKind::Pipeline => self.create_pipeline(name, if_not_exists)?,
            }
        } else if self.word("DROP") {
            let kind = self.kind(false)?;
            let if_exists = self.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = self.name()?;
            let keep_slot = kind == ObjectKind::Source && self.word("KEEP");
            if keep_slot {
                self.expect_word("SLOT")?;
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
                keep_slot,
            }
        } else if self.word("START") {
            self.expect_word("PIPELINE")?;
            Statement::StartPipeline { name: self.name()? }
        } else if self.word("STOP") {
            self.expect_word("PIPELINE")?;
            Statement::StopPipeline { name: self.name()? }
        } else {
            self.expect_word("SHOW")?;
            if self.word("CREATE") {
                let kind = self.kind(false)?;
                Statement::ShowCreate {
                    kind,
                    name: self.name()?,
                }
            } else {
                Statement::Show {
                    kind: self.kind(true)?,
                }
            }
        };
        self.end()?;
        Ok(stmt)
    }

    fn end(&mut self) -> std::result::Result<(), ParserError> {
        while self.parser.consume_token(&Token::SemiColon) {}
        let t = self.parser.peek_token();
        if t.token != Token::EOF {
            return self.parser.expected("end of statement", t);
        }
        Ok(())
    }

    fn create_source(
        &mut self,
        name: String,
        if_not_exists: bool,
    ) -> std::result::Result<Statement, ParserError> {
        let mut columns = None;
        let mut primary_key = Vec::new();
        let mut watermark = None;
        if self.parser.consume_token(&Token::LParen) {
            let mut cols = Vec::new();
            loop {
                if self
                    .parser
                    .parse_keywords(&[Keyword::PRIMARY, Keyword::KEY])
                {
                    self.parser.expect_token(&Token::LParen)?;
                    primary_key = self
                        .parser
                        .parse_comma_separated(|p| p.parse_identifier())?
                        .iter()
                        .map(normalize)
                        .collect();
                    self.parser.expect_token(&Token::RParen)?;
                } else if self.peek_word(0).as_deref() == Some("WATERMARK") {
                    self.parser.next_token();
                    self.parser.expect_keyword(Keyword::FOR)?;
                    let col = self.name()?;
                    self.parser.expect_keyword(Keyword::AS)?;
                    let expr = self.parser.parse_expr()?;
                    if expr.visit(&mut NestingDepth::default()).is_break() {
                        return Err(ParserError::RecursionLimitExceeded);
                    }
                    watermark = Some((col, expr.to_string()));
                } else {
                    cols.push(self.parser.parse_column_def()?);
                }
                if !self.parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            self.parser.expect_token(&Token::RParen)?;
            if !cols.is_empty() {
                columns = Some(cols);
            }
        }
        let options = self.with_options(true)?;
        Ok(Statement::CreateSource {
            name,
            if_not_exists,
            columns,
            primary_key,
            watermark,
            options,
        })
    }

    fn create_pipeline(
        &mut self,
        name: String,
        if_not_exists: bool,
    ) -> std::result::Result<Statement, ParserError> {
        let options = self.with_options(false)?;
        self.parser.expect_keyword(Keyword::AS)?;
        let start = self.parser.peek_token();
        let stmt = self.parser.parse_statement()?;
        let ast::Statement::Insert(insert) = stmt else {
            return self.parser.expected("INSERT INTO <sink> SELECT ...", start);
        };
        let sink = match &insert.table {
            ast::TableObject::TableName(n) => {
                n.0.last()
                    .and_then(|p| p.as_ident())
                    .map(normalize)
                    .unwrap_or_default()
            }
            other => {
                return Err(ParserError::ParserError(format!(
                    "expected a sink name after INSERT INTO, found {other}"
                )))
            }
        };
        if !insert.columns.is_empty() {
            return Err(ParserError::ParserError(
                "a pipeline writes the SELECT's columns by name; drop the column list after the sink name".into(),
            ));
        }
        let query = insert.source.ok_or_else(|| {
            ParserError::ParserError("expected SELECT after INSERT INTO <sink>".into())
        })?;
        Ok(Statement::CreatePipeline {
            name,
            if_not_exists,
            options,
            sink,
            query,
        })
    }

    fn with_options(
        &mut self,
        required: bool,
    ) -> std::result::Result<BTreeMap<String, String>, ParserError> {
        if self.peek_word(0).as_deref() != Some("WITH") {
            if required {
                return self
                    .parser
                    .expected("WITH (connector = '...', ...)", self.parser.peek_token());
            }
            return Ok(BTreeMap::new());
        }
        self.parser.expect_keyword(Keyword::WITH)?;
        self.parser.expect_token(&Token::LParen)?;
        let mut out = BTreeMap::new();
        if self.parser.consume_token(&Token::RParen) {
            return Ok(out);
        }
        loop {
            let key = self.parser.parse_identifier()?.value.to_ascii_lowercase();
            self.parser.expect_token(&Token::Eq)?;
            let value = if self.peek_word(0).as_deref() == Some("SECRET")
                && matches!(self.parser.peek_nth_token(1).token, Token::Word(_))
            {
                // `password = SECRET name`: the secret's value, put in where the connector
                // is given its options.
                self.parser.next_token();
                tributary_connectors::options::secret_reference_to(&self.name()?)
            } else {
                let value = self.parser.parse_expr()?;
                let v = option_value(&value).ok_or_else(|| {
                    ParserError::ParserError(format!(
                        "option '{key}' needs a literal value, found {value}"
                    ))
                })?;
                if v.chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
                {
                    return Err(ParserError::ParserError(format!(
                        "option '{key}' holds a control character"
                    )));
                }
                v
            };
            out.insert(key, value);
            if self.parser.consume_token(&Token::RParen) {
                break;
            }
            self.parser.expect_token(&Token::Comma)?;
        }
        let _ = self.sql;
        Ok(out)
    }
}

fn option_value(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.to_string()),
            Value::Boolean(b) => Some(b.to_string()),
            other => Some(other.to_string()),
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => option_value(expr).map(|v| format!("-{v}")),
        _ => None,
    }
}

/// Unquoted identifiers are case-insensitive (lowercased), quoted ones keep their case.
pub fn normalize(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn syntax(sql: &str, e: ParserError) -> Error {
    let msg = match &e {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => return too_deep(),
    };
    let position = parse_location(&msg).map(|loc| char_position(sql, loc));
    let message = strip_location(&msg);
    let message = match message.strip_prefix("Expected: ") {
        Some(rest) => format!("syntax error: expected {rest}"),
        None => format!("syntax error: {message}"),
    };
    Error::Syntax { message, position }
}

/// Extracts `Line: L, Column: C` from a sqlparser message.
fn parse_location(msg: &str) -> Option<Location> {
    let i = msg.rfind("Line: ")?;
    let rest = &msg[i + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let col: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some(Location {
        line: line.trim().parse().ok()?,
        column: col.parse().ok()?,
    })
}

fn strip_location(msg: &str) -> String {
    match msg.rfind(" at Line: ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// 1-based character offset of a 1-based line/column location.
pub fn char_position(sql: &str, loc: Location) -> usize {
    if loc.line == 0 {
        return sql.chars().count() + 1;
    }
    let mut pos = 0usize;
    for (i, line) in sql.split('\n').enumerate() {
        if i + 1 == loc.line as usize {
            return pos + (loc.column as usize).max(1);
        }
        pos += line.chars().count() + 1;
    }
    pos.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_statements() {
        let s = parse_statement(
            "CREATE SOURCE IF NOT EXISTS Bids (id BIGINT NOT NULL, name TEXT, PRIMARY KEY (id)) WITH (connector = 'file', path = '/x/*.csv', header = true)",
        )
        .unwrap();
        let Statement::CreateSource {
            name,
            if_not_exists,
            columns,
            primary_key,
            options,
            ..
        } = s
        else {
            panic!()
        };
        assert_eq!(name, "bids");
        assert!(if_not_exists);
        assert_eq!(columns.unwrap().len(), 2);
        assert_eq!(primary_key, vec!["id"]);
        assert_eq!(options["header"], "true");
        let s = parse_statement("create pipeline p with (on_error = 'fail') as insert into lake select a + 1 as b from bids where a > 0").unwrap();
        let Statement::CreatePipeline {
            sink,
            query,
            options,
            ..
        } = s
        else {
            panic!()
        };
        assert_eq!(sink, "lake");
        assert_eq!(options["on_error"], "fail");
        assert!(query.to_string().contains("a > 0"));
        assert!(matches!(
            parse_statement("SHOW CREATE SINK lake").unwrap(),
            Statement::ShowCreate {
                kind: ObjectKind::Sink,
                ..
            }
        ));
        assert!(matches!(
            parse_statement("drop pipeline if exists p").unwrap(),
            Statement::Drop {
                if_exists: true,
                ..
            }
        ));
        assert!(matches!(
            parse_statement("DROP SOURCE cdc KEEP SLOT").unwrap(),
            Statement::Drop {
                keep_slot: true,
                ..
            }
        ));
        assert!(matches!(
            parse_statement("SELECT 1").unwrap(),
            Statement::Sql(_)
        ));
        assert!(matches!(
            parse_statement("-- nothing").unwrap(),
            Statement::Empty
        ));
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let e = parse_statement("CREATE SOURCE s WITH (connector 'file')").unwrap_err();
        let Error::Syntax { position, message } = e else {
            panic!()
        };
        assert_eq!(position, Some(33), "{message}");
        let e = parse_sql("SELECT 1;\nSELEC 2").unwrap_err();
        assert_eq!(e.position(), Some(11));
    }

    #[test]
    fn refuses_statements_nested_too_deeply() {
        let chain = |first: &str, n: usize| format!("{first}{}", " + 1".repeat(n - 1));
        assert!(parse_statement(&format!("SELECT {}", chain("1", MAX_NESTING_DEPTH))).is_ok());
        let too_deep = [
            format!("SELECT {}", chain("1", MAX_NESTING_DEPTH + 1)),
            // Long enough to be parsed on a thread of its own.
            format!("SELECT {}", chain("1", 300_000)),
            format!(
                "CREATE PIPELINE p AS INSERT INTO s SELECT {} AS x FROM t",
                chain("a", 5_000)
            ),
            format!("SELECT a FROM t WHERE {}", chain("a", 5_000) + " > 0"),
            vec!["SELECT 1"; 3_000].join(" UNION ALL "),
            format!("SELECT {}1{}", "(".repeat(3_000), ")".repeat(3_000)),
            format!(
                "CREATE SOURCE s (a BIGINT, WATERMARK FOR a AS {}) WITH (connector = 'file')",
                chain("a", 2_000)
            ),
        ];
        for sql in &too_deep {
            let e = parse_statement(sql).unwrap_err();
            assert_eq!(e.sqlstate(), "54001", "{}: {e}", &sql[..60]);
        }
        // A subquery does not reset the count.
        let inner = format!("SELECT (SELECT {}) + 1", chain("1", 999));
        assert!(parse_statement(&inner).is_err());
        assert!(parse_statement(&format!("SELECT (SELECT {}) + 1", chain("1", 997))).is_ok());
    }

    #[test]
    fn splits_statements_outside_strings() {
        let parts = split_statements("select ';'; select 2 ;; -- c\n").unwrap();
        assert_eq!(
            parts,
            vec![
                ("select ';'".to_string(), 0),
                ("select 2 ".trim_end().to_string(), 12)
            ]
        );
    }
}
