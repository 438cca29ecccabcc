//! Typed access to a connector's `WITH (...)` options: required and unknown keys, values, secrets.

use std::collections::BTreeMap;

use crate::error::{ConnectorError, Result};

/// One option a connector accepts.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// The key as written in `WITH (...)`.
    pub name: &'static str,
    /// Whether CREATE fails without it.
    pub required: bool,
    /// One line for error messages and the docs.
    pub description: &'static str,
}

impl OptionSpec {
    /// A required option.
    pub const fn required(name: &'static str, description: &'static str) -> Self {
        OptionSpec {
            name,
            required: true,
            description,
        }
    }
    /// An optional option.
    pub const fn optional(name: &'static str, description: &'static str) -> Self {
        OptionSpec {
            name,
            required: false,
            description,
        }
    }
}

/// Keys that are always accepted: the connector name itself and pipeline-level error policy.
const COMMON: &[&str] = &["connector"];

/// The options of one source or sink, checked against the connector's [`OptionSpec`]s.
#[derive(Debug, Clone)]
pub struct Options {
    connector: String,
    values: BTreeMap<String, String>,
}

impl Options {
    /// Checks `values` against `specs`: every required key present, no unknown key.
    pub fn validate(
        connector: &str,
        specs: &[OptionSpec],
        values: &BTreeMap<String, String>,
    ) -> Result<Self> {
        for key in values.keys() {
            if !COMMON.contains(&key.as_str()) && !specs.iter().any(|s| s.name == key) {
                return Err(ConnectorError::UnknownOption {
                    connector: connector.to_string(),
                    option: key.clone(),
                    accepted: specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
                });
            }
        }
        for spec in specs.iter().filter(|s| s.required) {
            if !values.contains_key(spec.name) {
                return Err(ConnectorError::MissingOption {
                    connector: connector.to_string(),
                    option: spec.name.to_string(),
                    description: spec.description.to_string(),
                });
            }
        }
        Ok(Options {
            connector: connector.to_string(),
            values: values.clone(),
        })
    }

    /// The connector these options belong to.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// A string option, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// A string option that validation made sure is present.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| ConnectorError::MissingOption {
            connector: self.connector.clone(),
            option: key.to_string(),
            description: String::new(),
        })
    }

    /// A comma-separated list of column names, trimmed and lower-cased; empty when unset.
    pub fn get_list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_ascii_lowercase())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A boolean option (`true`/`false`, `yes`/`no`, `1`/`0`).
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                _ => Err(invalid(key, v, "expected true or false")),
            },
        }
    }

    /// An unsigned integer option.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .replace('_', "")
                .parse::<u64>()
                .map(Some)
                .map_err(|_| invalid(key, v, "expected a non-negative integer")),
        }
    }

    /// One of a fixed set of values (case-insensitive); returns the accepted spelling.
    pub fn get_choice(
        &self,
        key: &str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => choices
                .iter()
                .find(|c| c.eq_ignore_ascii_case(v.trim()))
                .copied()
                .ok_or_else(|| invalid(key, v, &format!("expected one of {}", choices.join(", ")))),
        }
    }

    /// A single-byte option such as a CSV delimiter.
    pub fn get_byte(&self, key: &str, default: u8) -> Result<u8> {
        match self.get(key) {
            None => Ok(default),
            Some("\\t") => Ok(b'\t'),
            Some(v) if v.len() == 1 => Ok(v.as_bytes()[0]),
            Some(v) => Err(invalid(key, v, "expected a single character")),
        }
    }
    /// A duration option: `500ms`, `10s`, `1m`, `2h`, `7 days` or plain seconds.
    pub fn get_duration(&self, key: &str) -> Result<Option<std::time::Duration>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_duration(v)
                .map(Some)
                .ok_or_else(|| invalid(key, v, "expected a duration such as 500ms, 10s, 5m or 1h")),
        }
    }
}

fn invalid(key: &str, value: &str, reason: &str) -> ConnectorError {
    ConnectorError::InvalidOption {
        option: key.to_string(),
        value: redact(key, value),
        reason: reason.to_string(),
    }
}

/// How an option value names a secret (`password = SECRET name`) rather than holding a value:
/// this prefix, which no value a statement can write starts with (statements refuse control
/// characters in option values), then the secret's name. The engine replaces it with the
/// secret's value only where a connector is given its options.
const SECRET_REFERENCE: &str = "\u{1}secret:";

/// The option value that names secret `name`.
pub fn secret_reference_to(name: &str) -> String {
    format!("{SECRET_REFERENCE}{name}")
}

/// The secret an option value names, if it names one.
pub fn secret_reference(value: &str) -> Option<&str> {
    value.strip_prefix(SECRET_REFERENCE)
}

/// Whether an option holds a secret by its name.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "private_key",
        "access_key",
        "sasl",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The value to show for an option in SHOW output, system tables and logs.
///
/// Secret keys are replaced wholesale; URLs keep everything but their password.
pub fn redact(key: &str, value: &str) -> String {
    if let Some(name) = secret_reference(value) {
        return format!("SECRET {name}");
    }
    if is_secret_key(key) {
        return "********".to_string();
    }
    redact_url_password(value)
}

/// Replaces the password in `scheme://user:password@host` (and in `password=...` pairs) with asterisks.
pub fn redact_url_password(value: &str) -> String {
    let mut out = value.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find('/')
            .map(|i| rest_start + i)
            .unwrap_or(out.len());
        if let Some(at) = out[rest_start..authority_end]
            .rfind('@')
            .map(|i| rest_start + i)
        {
            if let Some(colon) = out[rest_start..at].find(':').map(|i| rest_start + i) {
                out.replace_range(colon + 1..at, "********");
            }
        }
    }
    // key=value connection strings: password=...
    let lower = out.to_ascii_lowercase();
    if let Some(p) = lower.find("password=") {
        let start = p + "password=".len();
        let end = out[start..]
            .find([' ', '&', ';'])
            .map(|i| start + i)
            .unwrap_or(out.len());
        out.replace_range(start..end, "********");
    }
    out
}

/// Parses `500ms`, `10s`, `1m`, `2h`, `7 days` or plain seconds.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let (n, unit) = number_and_unit(s)?;
    let secs = match unit.as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "ms" | "millis" | "milliseconds" => n / 1000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86_400.0,
        _ => return None,
    };
    // Past a century is no interval anyone means, and would overflow the clocks it is added to.
    (secs > 0.0 && secs <= MAX_DURATION_SECS).then(|| std::time::Duration::from_secs_f64(secs))
}

/// The longest duration an option takes: a hundred years.
pub const MAX_DURATION_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// A size such as `512 MB`, `2GB`, `64 kB` or `1048576` (bytes); `None` when not one.
pub fn parse_size(s: &str) -> Option<usize> {
    let (n, unit) = number_and_unit(s)?;
    let scale = match unit.as_str() {
        "" | "b" | "bytes" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = n * scale;
    (bytes >= 1.0 && bytes < usize::MAX as f64).then_some(bytes as usize)
}

/// A number and the unit after it, lower-cased (`"2 GB"` is 2 and `gb`).
fn number_and_unit(s: &str) -> Option<(f64, String)> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_passwords_and_secret_keys() {
        assert_eq!(
            redact("url", "postgres://bob:hunter2@db:5432/x"),
            "postgres://bob:********@db:5432/x"
        );
        assert_eq!(redact("url", "postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(redact("password", "hunter2"), "********");
        assert_eq!(
            redact("dsn", "host=a password=hunter2 user=b"),
            "host=a password=******** user=b"
        );
        assert_eq!(redact("path", "/data/in/*.csv"), "/data/in/*.csv");
    }

    #[test]
    fn rejects_unknown_and_missing_options() {
        let specs = [
            OptionSpec::required("path", "where"),
            OptionSpec::optional("format", "fmt"),
        ];
        let mut v = BTreeMap::new();
        v.insert("formatt".to_string(), "csv".to_string());
        let e = Options::validate("file", &specs, &v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no option 'formatt'") && e.contains("path, format"),
            "{e}"
        );
        v.clear();
        let e = Options::validate("file", &specs, &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("requires option 'path'"), "{e}");
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("512 MB"), Some(512 << 20));
        assert_eq!(parse_size("2GB"), Some(2 << 30));
        assert_eq!(parse_size("1.5 kB"), Some(1536));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("0 MB"), None);
        assert_eq!(parse_size("-1 MB"), None);
    }

    #[test]
    fn parses_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2 m"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("7 days"),
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("0s"), None);
        // Too long for a clock: refused, where it once panicked.
        assert_eq!(parse_duration("99999999999999999999999"), None);
        assert_eq!(
            parse_duration("36500 days"),
            Some(Duration::from_secs(36500 * 86_400))
        );
    }
}
