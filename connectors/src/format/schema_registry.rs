//! A client of a Confluent-compatible schema registry (Confluent's, Apicurio's `ccompat` API,
//! Redpanda's, Karapace): Avro schemas fetched by the ids messages carry, cached, and a sink's
//! schema registered under its subject; with the Confluent wire format those messages use
//! (magic byte 0, the schema id as 4 big-endian bytes, then the Avro datum).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema as AvroSchema;
use parking_lot::RwLock;
use serde_json::{json, Value as Json};

use crate::error::{ConnectorError, Result};

/// Requests that fail to connect or get a 5xx are retried this many times, after these pauses.
const RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Splits a message in the Confluent wire format into its schema id and Avro datum.
pub fn unframe(message: &[u8]) -> std::result::Result<(u32, &[u8]), String> {
    match message {
        [0, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [] => Err("an empty message where a schema registry's Avro message was expected".into()),
        _ => Err(format!(
            "not in the schema registry's wire format (magic byte 0 and a 4-byte schema id; \
             this message starts with byte {})",
            message[0]
        )),
    }
}

/// An Avro datum in the Confluent wire format, naming schema `id`.
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(datum.len() + 5);
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// A schema registry: its base URL (credentials taken out) and the schemas fetched so far.
pub struct SchemaRegistry {
    base: url::Url,
    auth: Option<(String, Option<String>)>,
    client: reqwest::Client,
    /// Schemas by id, as fetched; ids the registry answered "not found" for are `Err`.
    by_id: RwLock<HashMap<u32, std::result::Result<Arc<AvroSchema>, String>>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// How a registry request failed.
enum Failure {
    /// The registry answered with an error (HTTP status, its `error_code`, its message).
    Answered(u16, i64, String),
    /// The registry could not be reached or answered garbage.
    Unreachable(ConnectorError),
}

impl SchemaRegistry {
    /// A client of the registry at `url` (`http://` or `https://`); credentials come from the
    /// URL's user info or from `username`/`password` (HTTP basic authentication).
    pub fn new(url: &str, username: Option<&str>, password: Option<&str>) -> Result<Self> {
        let invalid = |reason: &str| ConnectorError::InvalidOption {
            option: "schema_registry_url".into(),
            value: crate::options::redact_url_password(url),
            reason: reason.into(),
        };
        let mut base = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(invalid("an http:// or https:// URL of the registry"));
        }
        let mut auth = username.map(|u| (u.to_string(), password.map(str::to_string)));
        if !base.username().is_empty() {
            auth = Some((decode(base.username()), base.password().map(decode)));
            let _ = base.set_username("");
            let _ = base.set_password(None);
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ConnectorError::io("creating the schema registry client", e))?;
        Ok(SchemaRegistry {
            base,
            auth,
            client,
            by_id: RwLock::new(HashMap::new()),
        })
    }

    /// The registry's URL, without credentials.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// The schema with `id`, fetched earlier by [`SchemaRegistry::fetch`]; `Err` says why a
    /// message naming it cannot be read.
    pub fn cached(&self, id: u32) -> std::result::Result<Arc<AvroSchema>, String> {
        match self.by_id.read().get(&id) {
            Some(found) => found.clone(),
            None => Err(format!("schema id {id} was not fetched (a bug)")),
        }
    }

    /// Fetches the schemas of `ids` not fetched yet. Ids the registry does not know are kept
    /// as such (their messages become bad records); an unreachable registry is an error.
    pub async fn fetch(&self, ids: impl IntoIterator<Item = u32>) -> Result<()> {
        let mut wanted: Vec<u32> = {
            let known = self.by_id.read();
            ids.into_iter()
                .filter(|id| !known.contains_key(id))
                .collect()
        };
        wanted.sort_unstable();
        wanted.dedup();
        for id in wanted {
            let found = match self.get(&format!("schemas/ids/{id}")).await {
                Ok(answer) => Ok(Arc::new(avro_schema_of(
                    &answer,
                    &format!("schema id {id}"),
                )?)),
                Err(Failure::Answered(404, _, message)) => Err(format!(
                    "schema id {id} is not in the schema registry at {}: {message}",
                    self.url()
                )),
                Err(f) => return Err(self.failed(f, &format!("fetching schema id {id}"))),
            };
            tracing::debug!(id, found = found.is_ok(), "schema registry lookup");
            self.by_id.write().insert(id, found);
        }
        Ok(())
    }

    /// The id and schema of the latest version under `subject`.
    pub async fn latest(&self, subject: &str) -> Result<(u32, AvroSchema)> {
        let path = format!("subjects/{}/versions/latest", encode(subject));
        let answer = self.get(&path).await.map_err(|f| match f {
            Failure::Answered(404, _, message) => ConnectorError::Config(format!(
                "the schema registry at {} has no subject {subject}: {message}",
                self.url()
            )),
            f => self.failed(f, &format!("reading the latest schema of {subject}")),
        })?;
        let id = answer["id"].as_u64().and_then(|i| u32::try_from(i).ok());
        let id = id.ok_or_else(|| {
            ConnectorError::Config(format!(
                "the schema registry's answer for {subject} has no schema id: {answer}"
            ))
        })?;
        Ok((id, avro_schema_of(&answer, subject)?))
    }

    /// Registers `schema` under `subject` (or finds it there) and returns its id. A schema the
    /// subject's compatibility rule refuses is an error with the registry's words.
    pub async fn register(&self, subject: &str, schema: &AvroSchema) -> Result<u32> {
        let text = serde_json::to_string(schema)
            .map_err(|e| ConnectorError::Internal(format!("an Avro schema as JSON: {e}")))?;
        let body = json!({ "schema": text });
        let path = format!("subjects/{}/versions", encode(subject));
        let answer = self.send(reqwest::Method::POST, &path, Some(&body)).await;
        let answer = answer.map_err(|f| match f {
            Failure::Answered(status, code, message) => ConnectorError::Refused {
                context: format!(
                    "registering the sink's Avro schema under {subject} at {}",
                    self.url()
                ),
                message: format!("{message} (HTTP {status}, error code {code})"),
            },
            f => self.failed(f, &format!("registering a schema under {subject}")),
        })?;
        answer["id"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                ConnectorError::Config(format!(
                    "the schema registry's answer to a registration has no id: {answer}"
                ))
            })
    }

    fn failed(&self, f: Failure, doing: &str) -> ConnectorError {
        match f {
            Failure::Unreachable(e) => e,
            Failure::Answered(status, code, message) => ConnectorError::Refused {
                context: format!("{doing} at the schema registry {}", self.url()),
                message: format!("{message} (HTTP {status}, error code {code})"),
            },
        }
    }

    async fn get(&self, path: &str) -> std::result::Result<Json, Failure> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// One request, retried while the registry is unreachable or answers 5xx.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Json>,
    ) -> std::result::Result<Json, Failure> {
        let url = self
            .base
            .join(path)
            .map_err(|e| Failure::Unreachable(ConnectorError::Internal(e.to_string())))?;
        let mut attempt = 0;
        loop {
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .header(reqwest::header::ACCEPT, CONTENT_TYPE);
            if let Some((user, password)) = &self.auth {
                request = request.basic_auth(user, password.as_ref());
            }
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(body.to_string());
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        Ok(bytes) => Ok((status, bytes)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let retry = match &outcome {
                Ok((status, _)) => *status >= 500,
                Err(_) => true,
            };
            if retry && attempt < RETRY_PAUSES.len() {
                tracing::warn!(url = %url, attempt, "schema registry request failed; retrying");
                tokio::time::sleep(RETRY_PAUSES[attempt]).await;
                attempt += 1;
                continue;
            }
            let (status, bytes) = outcome.map_err(|e| {
                Failure::Unreachable(ConnectorError::io(
                    format!("reaching the schema registry at {}", self.url()),
                    e,
                ))
            })?;
            let answer: Json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                Json::String(String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into())
            });
            if (200..300).contains(&status) {
                return Ok(answer);
            }
            let code = answer["error_code"].as_i64().unwrap_or(0);
            let message = match answer["message"].as_str() {
                Some(m) => m.to_string(),
                None => answer.to_string(),
            };
            return Err(Failure::Answered(status, code, message));
        }
    }
}

/// Percent-decodes a URL's user or password.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A subject as one URL path segment.
fn encode(subject: &str) -> String {
    url::form_urlencoded::byte_serialize(subject.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The Avro schema in a registry answer (`{"schema": "...", "schemaType": ...}`).
fn avro_schema_of(answer: &Json, what: &str) -> Result<AvroSchema> {
    let kind = answer["schemaType"].as_str().unwrap_or("AVRO");
    if !kind.eq_ignore_ascii_case("AVRO") {
        return Err(ConnectorError::Config(format!(
            "{what} in the schema registry is a {kind} schema: format = 'avro' reads Avro schemas"
        )));
    }
    if answer["references"]
        .as_array()
        .is_some_and(|r| !r.is_empty())
    {
        return Err(ConnectorError::Config(format!(
            "{what} in the schema registry refers to other schemas (references), which are not read yet"
        )));
    }
    let text = answer["schema"].as_str().ok_or_else(|| {
        ConnectorError::Config(format!(
            "the schema registry's answer for {what} has no schema: {answer}"
        ))
    })?;
    AvroSchema::parse_str(text).map_err(|e| {
        ConnectorError::Config(format!(
            "{what} in the schema registry is not an Avro schema: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_goes_round() {
        let framed = frame(258, b"datum");
        assert_eq!(&framed[..5], &[0, 0, 0, 1, 2]);
        assert_eq!(unframe(&framed).unwrap(), (258, &b"datum"[..]));
        assert!(unframe(b"{\"id\": 1}").unwrap_err().contains("byte 123"));
        assert!(unframe(&[]).is_err());
        assert!(unframe(&[0, 0, 1]).is_err());
    }

    #[test]
    fn credentials_leave_the_url() {
        let r = SchemaRegistry::new(
            "https://ann:s%40c+ret@registry.example/apis/ccompat/v7",
            None,
            None,
        )
        .unwrap();
        assert_eq!(r.url(), "https://registry.example/apis/ccompat/v7/");
        assert_eq!(
            r.auth,
            Some(("ann".to_string(), Some("s@c+ret".to_string())))
        );
        let e = SchemaRegistry::new("ftp://ann:hunter2@x/", None, None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(encode("orders-value"), "orders-value");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn answers_other_than_plain_avro_are_refused() {
        let ok = json!({"schema": "{\"type\":\"record\",\"name\":\"r\",\"fields\":[]}"});
        assert!(avro_schema_of(&ok, "x").is_ok());
        let json_schema = json!({"schema": "{}", "schemaType": "JSON"});
        assert!(avro_schema_of(&json_schema, "x")
            .unwrap_err()
            .to_string()
            .contains("JSON"));
        let refs = json!({"schema": "\"string\"", "references": [{"name": "a"}]});
        assert!(avro_schema_of(&refs, "x")
            .unwrap_err()
            .to_string()
            .contains("references"));
    }
}
