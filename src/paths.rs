//! Where file sources and file-based sinks may read and write on this machine: under the
//! allowed roots only (the data directory, the working directory, and `--allow-path`), checked
//! after `..` and symbolic links are resolved. Object-store URLs are not local paths and pass.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use parking_lot::RwLock;

use crate::error::{Error, Result};

/// The options that name local paths.
const PATH_OPTIONS: &[&str] = &["path"];

/// The roots local paths must lie under.
#[derive(Debug)]
pub struct AllowedPaths {
    roots: RwLock<Vec<PathBuf>>,
}

impl AllowedPaths {
    /// The data directory and the process's working directory.
    pub fn new(data_dir: &Path) -> AllowedPaths {
        let mut roots = vec![data_dir.to_path_buf()];
        roots.extend(std::env::current_dir().ok());
        AllowedPaths {
            roots: RwLock::new(canonical_roots(&roots)),
        }
    }

    /// The data directory and `roots` (which replace the working directory).
    pub fn set(&self, data_dir: &Path, roots: &[PathBuf]) -> Result<()> {
        for root in roots {
            if !root.is_dir() {
                return Err(Error::InvalidState(format!(
                    "--allow-path {}: not a directory",
                    root.display()
                )));
            }
        }
        let mut all = vec![data_dir.to_path_buf()];
        all.extend(roots.iter().cloned());
        *self.roots.write() = canonical_roots(&all);
        Ok(())
    }

    /// The roots, for messages.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.roots.read().clone()
    }

    /// Refuses (42501, naming the option) a local path in `options` outside every root.
    pub fn check(&self, options: &BTreeMap<String, String>) -> Result<()> {
        for key in PATH_OPTIONS {
            let Some(value) = options.get(*key) else {
                continue;
            };
            let Some(local) = local_path(value) else {
                continue;
            };
            let roots = self.roots.read();
            let inside = resolve(&local).is_some_and(|p| roots.iter().any(|r| p.starts_with(r)));
            if !inside {
                let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
                return Err(Error::InsufficientPrivilege(format!(
                    "option '{key}' = '{value}' is outside the directories this server may use \
                     ({}): start it with --allow-path for another",
                    shown.join(", ")
                )));
            }
        }
        Ok(())
    }
}

fn canonical_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .map(|r| resolve(r).unwrap_or_else(|| r.clone()))
        .collect()
}

/// The local path a value names: a plain path or a `file://` URL (`None` for another scheme,
/// an object store); a glob's directory part.
fn local_path(value: &str) -> Option<PathBuf> {
    let path = match value.split_once("://") {
        Some(("file", rest)) => rest,
        Some((scheme, _))
            if scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            return None
        }
        _ => value,
    };
    let mut out = PathBuf::new();
    for part in Path::new(path).components() {
        if let Component::Normal(p) = part {
            if p.to_string_lossy().contains(['*', '?', '[', '{']) {
                break;
            }
        }
        out.push(part);
    }
    Some(out)
}

/// `path` made absolute, with symbolic links and `..` resolved as the file system would: the
/// longest part that exists is canonicalised, and the rest may not climb out of it (`None`).
fn resolve(path: &Path) -> Option<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut existing = absolute;
    // The parts past what exists, last first: names (`None`: a `.`).
    let mut rest: Vec<Option<std::ffi::OsString>> = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut out = canonical;
            for part in rest.iter().rev().flatten() {
                out.push(part);
            }
            return Some(out);
        }
        rest.push(match existing.components().next_back()? {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::CurDir => None,
            // `..` past a part that does not exist yet: refused rather than guessed.
            _ => return None,
        });
        existing = existing.parent()?.to_path_buf();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(path: &str) -> BTreeMap<String, String> {
        [("path".to_string(), path.to_string())].into()
    }

    #[test]
    fn paths_stay_under_their_roots_after_dots_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let inputs = tmp.path().join("inputs");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(inputs.join("a")).unwrap();
        let allowed = AllowedPaths::new(&data);
        allowed.set(&data, std::slice::from_ref(&inputs)).unwrap();
        let ok = |p: &Path| allowed.check(&options(&p.display().to_string())).is_ok();
        assert!(ok(&inputs.join("a/*.csv")));
        assert!(ok(&inputs.join("not/yet/there")));
        assert!(ok(&data.join("lake/orders")));
        assert!(ok(&inputs.join("a/../a/x.csv")));
        // Out by `..`, by a link, by an absolute path, by a file:// URL.
        assert!(!ok(&inputs.join("../elsewhere")));
        assert!(!ok(&inputs.join("a/../../elsewhere/x")));
        assert!(!ok(&inputs.join("new/../../elsewhere")));
        std::os::unix::fs::symlink("/etc", inputs.join("etc")).unwrap();
        assert!(!ok(&inputs.join("etc/passwd")));
        assert!(!ok(Path::new("/etc/passwd")));
        assert!(allowed.check(&options("file:///etc/passwd")).is_err());
        // Object stores are not local paths.
        assert!(allowed.check(&options("s3://lake/orders")).is_ok());
        let e = allowed.check(&options("/etc/shadow")).unwrap_err();
        assert_eq!(e.sqlstate(), "42501");
        assert!(e.to_string().contains("option 'path'"), "{e}");
        assert!(allowed.set(&data, &[tmp.path().join("missing")]).is_err());
    }
}
