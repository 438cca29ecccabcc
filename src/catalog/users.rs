//! Users and their roles, as the catalog keeps them: a SCRAM-SHA-256 verifier per user (the
//! salted keys PostgreSQL stores), never a password.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// PBKDF2 iterations of new verifiers: PostgreSQL's default (`scram_iterations`).
pub const SCRAM_ITERATIONS: usize = 4096;

/// What a user may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: DDL, START and STOP, users.
    Admin,
    /// Queries: SELECT from sources, sinks and system tables, SHOW, previews.
    Reader,
}

impl Role {
    /// Lowercase name, as `tributary.users` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }
}

/// A user as stored in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserEntry {
    /// Login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key>`, base64, as PostgreSQL's
    /// `pg_authid.rolpassword`.
    pub verifier: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its password last changed.
    pub password_changed_at: DateTime<Utc>,
}

/// A SCRAM-SHA-256 verifier: what the server needs to check a client's proof, and nothing from
/// which the password can be read back short of guessing it.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    salt: Vec<u8>,
    iterations: usize,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(********)")
    }
}

impl Verifier {
    /// A verifier of `password` with a fresh random salt.
    pub fn new(password: &str) -> Verifier {
        Verifier::derive(password, random_bytes::<16>().to_vec(), SCRAM_ITERATIONS)
    }

    /// RFC 5802's keys: `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    fn derive(password: &str, salt: Vec<u8>, iterations: usize) -> Verifier {
        use ring::{digest, hmac};
        let salted = gen_salted_password(password, &salt, iterations);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        Verifier {
            salt,
            iterations,
            stored_key: digest::digest(&digest::SHA256, client_key.as_ref())
                .as_ref()
                .to_vec(),
            server_key: hmac::sign(&key, b"Server Key").as_ref().to_vec(),
        }
    }

    /// Reads a stored verifier.
    pub fn parse(text: &str) -> Result<Verifier> {
        let bad = || Error::Internal("a user's stored SCRAM verifier is unreadable".into());
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let decode = |s: &str| STANDARD.decode(s).map_err(|_| bad());
        Ok(Verifier {
            salt: decode(salt)?,
            iterations: iterations.parse().map_err(|_| bad())?,
            stored_key: decode(stored)?,
            server_key: decode(server)?,
        })
    }

    /// The stored form.
    pub fn to_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(&self.stored_key),
            STANDARD.encode(&self.server_key)
        )
    }

    /// Whether `password` is the one this verifies (for HTTP basic authentication, where the
    /// client sends the password itself), compared in constant time.
    pub fn matches(&self, password: &str) -> bool {
        let other = Verifier::derive(password, self.salt.clone(), self.iterations);
        other.stored_key.len() == self.stored_key.len()
            && other
                .stored_key
                .iter()
                .zip(&self.stored_key)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The SCRAM secret pgwire checks a client's proof against.
    pub fn scram_secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// `N` bytes from the operating system's generator (ring's `SystemRandom`).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    // getrandom(2) does not fail once the kernel's pool is ready, which it is after boot; a
    // UUID (the same source) stands in should it ever.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        for (b, u) in bytes
            .iter_mut()
            .zip(std::iter::repeat_with(uuid::Uuid::new_v4).flat_map(|u| u.into_bytes()))
        {
            *b = u;
        }
    }
    bytes
}

/// A user name as accepted in CREATE USER: what PostgreSQL accepts as a role name, minus what
/// would be confusing here.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_control()) {
        return Err(Error::Plan(format!(
            "\"{name}\" is not a valid user name: 1 to 63 characters, none of them control characters"
        )));
    }
    Ok(())
}

/// A password as accepted in CREATE USER and ALTER USER.
pub fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < 8 {
        return Err(Error::Plan(
            "a password must be at least 8 characters long".into(),
        ));
    }
    if password.len() > 1024 {
        return Err(Error::ProgramLimit(
            "a password may be at most 1024 bytes long".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_checks_its_password_and_keeps_nothing_readable() {
        let v = Verifier::new("correct horse");
        assert!(v.matches("correct horse"));
        assert!(!v.matches("correct horsE"));
        let text = v.to_text();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert!(!text.contains("correct"));
        let back = Verifier::parse(&text).unwrap();
        assert_eq!(back, v);
        assert!(back.matches("correct horse"));
        assert_eq!(format!("{v:?}"), "Verifier(********)");
        // Two verifiers of one password differ: each has its own salt.
        assert_ne!(Verifier::new("correct horse").to_text(), text);
        assert!(Verifier::parse("md5abc").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$x:y$z").is_err());
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_name("ann").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
    }
}
