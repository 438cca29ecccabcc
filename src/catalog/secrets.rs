//! Secrets: values (passwords, URLs with credentials) that options name with `SECRET name`
//! instead of holding them, kept in the catalog encrypted (ChaCha20-Poly1305) with a key that
//! lives in the data directory (`secret.key`, mode 0600) or in `TRIBUTARY_SECRET_KEY`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use tributary_connectors::options::secret_reference;

use super::users::random_bytes;
use crate::error::{Error, Result};

/// The environment variable that can hold the key (base64 of 32 bytes) instead of the file.
pub const KEY_ENV: &str = "TRIBUTARY_SECRET_KEY";
const KEY_FILE: &str = "secret.key";

/// A secret as stored in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretEntry {
    /// Its name.
    pub name: String,
    /// base64 of the nonce and the sealed value.
    pub sealed: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its value last changed.
    pub updated_at: DateTime<Utc>,
}

/// The key secrets are sealed with.
pub struct SecretKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(********)")
    }
}

impl SecretKey {
    /// The key from `TRIBUTARY_SECRET_KEY`, else from `data_dir/secret.key`, created (0600)
    /// when neither exists.
    pub fn load(data_dir: &Path) -> Result<SecretKey> {
        if let Ok(text) = std::env::var(KEY_ENV) {
            let bytes = STANDARD.decode(text.trim()).ok().filter(|b| b.len() == 32);
            let bytes = bytes.ok_or_else(|| {
                Error::InvalidState(format!(
                    "{KEY_ENV} must be 32 random bytes in base64 (openssl rand -base64 32)"
                ))
            })?;
            return SecretKey::from_bytes(&bytes);
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => SecretKey::from_bytes(&bytes),
            Ok(_) => Err(Error::InvalidState(format!(
                "{} is not a secret key (32 bytes): secrets cannot be read without it",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = random_bytes::<32>();
                write_private(&path, &bytes)?;
                SecretKey::from_bytes(&bytes)
            }
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Result<SecretKey> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| Error::Internal("a secret key of the wrong length".into()))?;
        Ok(SecretKey {
            key: LessSafeKey::new(key),
        })
    }

    /// `value` sealed under a fresh random nonce, as stored.
    pub fn seal(&self, name: &str, value: &str) -> Result<String> {
        let nonce = random_bytes::<NONCE_LEN>();
        let mut sealed = value.as_bytes().to_vec();
        // The name is bound in: a sealed value copied onto another secret does not open.
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| Error::Internal("sealing a secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(STANDARD.encode(out))
    }

    /// The value of secret `name`, sealed as `sealed`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<String> {
        let unreadable = || {
            Error::InvalidState(format!(
                "secret \"{name}\" cannot be opened with this data directory's key ({KEY_FILE} \
                 or {KEY_ENV}): was the key replaced?"
            ))
        };
        let bytes = STANDARD.decode(sealed).map_err(|_| unreadable())?;
        if bytes.len() < NONCE_LEN {
            return Err(unreadable());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unreadable())?;
        let mut rest = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut rest)
            .map_err(|_| unreadable())?;
        String::from_utf8(plain.to_vec()).map_err(|_| unreadable())
    }
}

/// Writes `bytes` to a new file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut f = open
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The secrets `options` name (option, secret), in option order.
pub fn referenced(options: &BTreeMap<String, String>) -> Vec<(String, String)> {
    options
        .iter()
        .filter_map(|(k, v)| secret_reference(v).map(|s| (k.clone(), s.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_seal_and_open_only_under_their_key_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let sealed = key.seal("pg", "hunter2!").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(key.seal("pg", "hunter2!").unwrap(), sealed, "fresh nonces");
        assert_eq!(key.open("pg", &sealed).unwrap(), "hunter2!");
        // Another secret's name, another key, a damaged value: refused, saying so.
        assert!(key.open("other", &sealed).is_err());
        let again = SecretKey::load(dir.path()).unwrap();
        assert_eq!(
            again.open("pg", &sealed).unwrap(),
            "hunter2!",
            "the file is reused"
        );
        let other_dir = tempfile::tempdir().unwrap();
        let other = SecretKey::load(other_dir.path()).unwrap();
        let e = other.open("pg", &sealed).unwrap_err().to_string();
        assert!(
            e.contains("cannot be opened") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(key.open("pg", "AAAA").is_err());
        assert_eq!(format!("{key:?}"), "SecretKey(********)");
    }
}
