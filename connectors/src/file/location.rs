//! Turns a file source's `path` (directory, glob or URL) into an object store and the files it matches.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

use crate::error::{ConnectorError, Result};

/// Where a file source reads: one store, a prefix to list under, and an optional glob.
#[derive(Debug, Clone)]
pub struct FileLocation {
    /// The store holding the files.
    pub store: Arc<dyn ObjectStore>,
    /// The directory (or single file) to list.
    pub prefix: Path,
    /// Glob over full object paths, when the user gave one.
    pub pattern: Option<glob::Pattern>,
    /// The URL the user meant, for messages.
    pub display: String,
    /// What goes before an object path to name the file for a user (`/` locally, `s3://bucket/`).
    pub root: String,
}

/// Resolves a user path: `/abs/dir`, `rel/dir/*.csv`, `file:///...`, `s3://bucket/prefix/`.
pub fn resolve_url(path: &str) -> Result<Url> {
    let bad = |reason: String| ConnectorError::InvalidOption {
        option: "path".into(),
        value: path.into(),
        reason,
    };
    if path.contains("://") {
        return Url::parse(path).map_err(|e| bad(format!("not a valid URL: {e}")));
    }
    let p = std::path::Path::new(path);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| bad(e.to_string()))?
            .join(p)
    };
    let mut s = abs.to_string_lossy().to_string();
    // Keep a trailing slash: it tells a directory from a file.
    if path.ends_with('/') && !s.ends_with('/') {
        s.push('/');
    }
    Url::from_file_path(&s)
        .or_else(|_| Url::parse(&format!("file://{s}")))
        .map_err(|_| bad("not a valid path".into()))
}

impl FileLocation {
    /// Parses `path` into a store, listing prefix and glob.
    pub fn parse(path: &str) -> Result<Self> {
        let url = resolve_url(path)?;
        let raw_path = percent_decode(url.path());
        // The listing prefix is everything before the first path segment holding a glob character.
        let segments: Vec<&str> = raw_path.split('/').collect();
        let first_glob = segments
            .iter()
            .position(|s| s.contains(['*', '?', '[', '{']));
        let (prefix_str, pattern) = match first_glob {
            Some(i) => {
                let pat = glob::Pattern::new(raw_path.trim_start_matches('/')).map_err(|e| {
                    ConnectorError::InvalidOption {
                        option: "path".into(),
                        value: path.into(),
                        reason: format!("bad glob: {e}"),
                    }
                })?;
                (segments[..i].join("/"), Some(pat))
            }
            None => (raw_path.clone(), None),
        };
        let mut base = url.clone();
        base.set_path("/");
        let root = if url.scheme() == "file" {
            "/".to_string()
        } else {
            base.to_string()
        };
        let (store, _) =
            object_store::parse_url(&base).map_err(|e| ConnectorError::InvalidOption {
                option: "path".into(),
                value: path.into(),
                reason: e.to_string(),
            })?;
        Ok(FileLocation {
            store: Arc::from(store),
            prefix: Path::from(prefix_str.trim_matches('/')),
            pattern,
            display: path.to_string(),
            root,
        })
    }

    /// How a user names an object of this store: `/data/in/a.csv`, `s3://bucket/in/a.csv`.
    pub fn user_path(&self, location: &Path) -> String {
        format!("{}{}", self.root, location)
    }

    /// Every matching file, sorted by path. Hidden files (`.x`, `_x`) and temporary files are skipped.
    pub async fn list(&self) -> Result<Vec<ObjectMeta>> {
        let listed: Vec<ObjectMeta> = match self.store.list(Some(&self.prefix)).try_collect().await
        {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(ConnectorError::io(format!("listing {}", self.display), e)),
        };
        let mut files: Vec<ObjectMeta> = if listed.is_empty() && self.pattern.is_none() {
            // Maybe the path is a single file.
            match self.store.head(&self.prefix).await {
                Ok(meta) => vec![meta],
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(ConnectorError::io(format!("reading {}", self.display), e)),
            }
        } else {
            listed
        };
        files.retain(|m| {
            let rel = m
                .location
                .prefix_match(&self.prefix)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>());
            let hidden = rel
                .unwrap_or_default()
                .iter()
                .any(|seg| seg.starts_with('.') || seg.starts_with('_') || seg.ends_with(".tmp"));
            let opts = glob::MatchOptions {
                case_sensitive: true,
                require_literal_separator: true,
                require_literal_leading_dot: true,
            };
            let matches = self
                .pattern
                .as_ref()
                .map(|p| p.matches_with(m.location.as_ref(), opts))
                .unwrap_or(true);
            !hidden && matches
        });
        files.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        Ok(files)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_globs_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.csv", "b.csv", "c.json", ".hidden.csv", "sub/d.csv"] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x\n").unwrap();
        }
        let glob = FileLocation::parse(&format!("{}/*.csv", dir.path().display())).unwrap();
        let names: Vec<String> = glob
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.filename().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["a.csv", "b.csv"]);
        let all = FileLocation::parse(&dir.path().display().to_string()).unwrap();
        assert_eq!(all.list().await.unwrap().len(), 4);
        let one = FileLocation::parse(&format!("{}/c.json", dir.path().display())).unwrap();
        assert_eq!(one.list().await.unwrap().len(), 1);
        let none = FileLocation::parse(&format!("{}/nope/", dir.path().display())).unwrap();
        assert!(none.list().await.unwrap().is_empty());
    }
}
