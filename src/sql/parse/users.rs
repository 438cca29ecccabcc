//! Parses the statements about users and secrets: `CREATE|ALTER|DROP USER` and
//! `CREATE|ALTER|DROP SECRET`.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::{Statement, StatementParser};

/// A password or a secret's value as written in a statement. It never prints: not in `Debug`
/// output, logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(********)")
    }
}

impl StatementParser<'_> {
    /// After `CREATE USER`: `[IF NOT EXISTS] name [WITH] PASSWORD '...' [ADMIN | READER]`.
    pub(super) fn create_user(&mut self) -> Result<Statement, ParserError> {
        let if_not_exists =
            self.parser
                .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = self.name()?;
        let password = self.password()?;
        let admin = if self.word("ADMIN") {
            true
        } else {
            self.word("READER");
            false
        };
        Ok(Statement::CreateUser {
            name,
            if_not_exists,
            password,
            admin,
        })
    }

    /// After `ALTER USER`: `name [WITH] PASSWORD '...'`.
    pub(super) fn alter_user(&mut self) -> Result<Statement, ParserError> {
        let name = self.name()?;
        let password = self.password()?;
        Ok(Statement::AlterUser { name, password })
    }

    /// After `DROP USER`: `[IF EXISTS] name`.
    pub(super) fn drop_user(&mut self) -> Result<Statement, ParserError> {
        let if_exists = self.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = self.name()?;
        Ok(Statement::DropUser { name, if_exists })
    }

    /// After `CREATE SECRET`: `[IF NOT EXISTS] name AS '...'`.
    pub(super) fn create_secret(&mut self) -> Result<Statement, ParserError> {
        let if_not_exists =
            self.parser
                .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = self.name()?;
        self.parser.expect_keyword(Keyword::AS)?;
        let value = self.quoted_secret()?;
        Ok(Statement::CreateSecret {
            name,
            if_not_exists,
            value,
        })
    }

    /// After `ALTER SECRET`: `name AS '...'`.
    pub(super) fn alter_secret(&mut self) -> Result<Statement, ParserError> {
        let name = self.name()?;
        self.parser.expect_keyword(Keyword::AS)?;
        let value = self.quoted_secret()?;
        Ok(Statement::AlterSecret { name, value })
    }

    /// After `DROP SECRET`: `[IF EXISTS] name`.
    pub(super) fn drop_secret(&mut self) -> Result<Statement, ParserError> {
        let if_exists = self.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = self.name()?;
        Ok(Statement::DropSecret { name, if_exists })
    }

    fn password(&mut self) -> Result<Password, ParserError> {
        self.word("WITH");
        self.expect_word("PASSWORD")?;
        self.quoted_secret()
    }

    fn quoted_secret(&mut self) -> Result<Password, ParserError> {
        let t = self.parser.next_token();
        match t.token {
            Token::SingleQuotedString(s) => Ok(Password(s)),
            // Not the parser's usual "found: <token>": the token may be the password.
            _ => Err(ParserError::ParserError(format!(
                "Expected: a value in single quotes at Line: {}, Column: {}",
                t.span.start.line, t.span.start.column
            ))),
        }
    }
}
