//! Statement text with its secrets masked, for what shows a statement (`tributary.sessions`,
//! logs): the string after `PASSWORD`, the value of a secret option (`password = '...'`), and
//! the password inside a URL.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use tributary_connectors::options::{is_secret_key, redact_url_password};

const MASK: &str = "********";

/// `sql` with every secret it holds replaced by asterisks.
pub fn redact_statement(sql: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        // Not SQL a client could run; shown only when nothing in it looks like a secret.
        let lower = sql.to_ascii_lowercase();
        return if ["password", "secret", "token", "key"]
            .iter()
            .any(|w| lower.contains(w))
        {
            "(a statement that does not parse, not shown: it may hold a secret)".into()
        } else {
            redact_url_password(sql)
        };
    };
    let words: Vec<String> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(2)
        .map(|t| t.to_string().to_ascii_uppercase())
        .collect();
    // CREATE SECRET and ALTER SECRET: every string is the value.
    let all_secret = matches!(words.get(1).map(String::as_str), Some("SECRET"))
        && matches!(words.first().map(String::as_str), Some("CREATE" | "ALTER"));
    let mut out = String::with_capacity(sql.len());
    // The last two tokens that were not whitespace: `PASSWORD`, or a secret key and `=`.
    let mut before: [Option<&Token>; 2] = [None, None];
    for token in &tokens {
        match token {
            Token::SingleQuotedString(s) => {
                let secret = all_secret
                    || match before {
                        [_, Some(Token::Word(w))] => w.value.eq_ignore_ascii_case("password"),
                        [Some(key), Some(Token::Eq)] => match key {
                            Token::Word(w) => is_secret_key(&w.value),
                            Token::SingleQuotedString(k) => is_secret_key(k),
                            _ => false,
                        },
                        _ => false,
                    };
                let shown = if secret {
                    MASK.to_string()
                } else {
                    redact_url_password(s)
                };
                out.push_str(&Token::SingleQuotedString(shown).to_string());
            }
            other => out.push_str(&other.to_string()),
        }
        if !matches!(token, Token::Whitespace(_)) {
            before = [before[1], Some(token)];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_the_rest_kept() {
        assert_eq!(
            redact_statement("CREATE USER ann WITH PASSWORD 'hunter2!' ADMIN"),
            "CREATE USER ann WITH PASSWORD '********' ADMIN"
        );
        assert_eq!(
            redact_statement("ALTER USER ann PASSWORD 'it''s me'"),
            "ALTER USER ann PASSWORD '********'"
        );
        let create = redact_statement(
            "CREATE SINK s WITH (connector = 'postgres', url = 'postgres://u:pw1@h/db', password = 'pw2', \"schema_registry_password\" = 'pw3', table = 't')",
        );
        assert!(
            !create.contains("pw1") && !create.contains("pw2") && !create.contains("pw3"),
            "{create}"
        );
        assert!(create.contains("table = 't'"), "{create}");
        assert_eq!(redact_statement("SELECT 'password'"), "SELECT 'password'");
        assert_eq!(
            redact_statement("create secret pg as 'postgres://u:pw@h/db'"),
            "create secret pg as '********'"
        );
        let broken = redact_statement("CREATE USER x PASSWORD 'unterminated");
        assert!(!broken.contains("unterminated"), "{broken}");
    }
}
