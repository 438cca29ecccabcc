//! The event log behind `tributary.events`: what happened to the catalog's objects (DDL,
//! starts, stops, failures, recoveries, schema changes, the server starting and stopping),
//! appended to `events.jsonl` in the data directory so it outlives restarts, and bounded.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Events kept (and served); the file is rewritten to these when it holds twice as many.
pub const KEPT_EVENTS: usize = 10_000;

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// When.
    pub at: DateTime<Utc>,
    /// What: create, drop, start, stop, complete, failure, recovery, schema_change,
    /// server_start, server_stop.
    pub kind: String,
    /// What it happened to: source, sink, pipeline, server.
    pub object_kind: String,
    /// Its name.
    pub object: String,
    /// In words, with the error of a failure.
    pub message: String,
}

struct Log {
    recent: VecDeque<Event>,
    file: File,
    /// Lines in the file, for rewriting it once it holds twice [`KEPT_EVENTS`].
    lines: usize,
    /// A write failed part way: the next line starts on a line of its own.
    torn: bool,
}

/// The durable, bounded event log.
pub struct EventLog {
    path: PathBuf,
    log: Mutex<Log>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("path", &self.path)
            .finish()
    }
}

impl EventLog {
    /// Opens `data_dir/events.jsonl`, keeping its last [`KEPT_EVENTS`] events. A line that does
    /// not parse (torn by a crash mid-write) is skipped.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("events.jsonl");
        let mut recent = VecDeque::new();
        let mut lines = 0;
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line =
                        line.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                    lines += 1;
                    if let Ok(event) = serde_json::from_str::<Event>(&line) {
                        if recent.len() == KEPT_EVENTS {
                            recent.pop_front();
                        }
                        recent.push_back(event);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
        let file = append(&path)?;
        let this = EventLog {
            path,
            log: Mutex::new(Log {
                recent,
                file,
                lines,
                torn: false,
            }),
        };
        // A torn last line would glue itself to the next event: start it on a line of its own.
        this.log
            .lock()
            .file
            .write_all(b"\n")
            .map_err(|e| Error::io(format!("writing {}", this.path.display()), e))?;
        Ok(this)
    }

    /// Records an event now. Failing to write it is logged, not raised: the change it records
    /// has happened.
    pub fn record(&self, kind: &str, object_kind: &str, object: &str, message: impl Into<String>) {
        let event = Event {
            at: Utc::now(),
            kind: kind.to_string(),
            object_kind: object_kind.to_string(),
            object: object.to_string(),
            message: message.into(),
        };
        tracing::debug!(kind, object_kind, object, message = %event.message, "Event.");
        let mut log = self.log.lock();
        if let Err(e) = self.write(&mut log, &event) {
            tracing::error!(error = %e, "Could not record an event.");
        }
        if log.recent.len() == KEPT_EVENTS {
            log.recent.pop_front();
        }
        log.recent.push_back(event);
    }

    fn write(&self, log: &mut Log, event: &Event) -> std::io::Result<()> {
        let mut line = Vec::new();
        if log.torn {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        log.torn = true;
        log.file.write_all(&line)?;
        log.torn = false;
        log.lines += 1;
        if log.lines >= 2 * KEPT_EVENTS {
            // Whether or not the rewrite succeeds, try again only after another KEPT_EVENTS.
            log.lines = KEPT_EVENTS;
            // Rewrite the file with the kept events (and this one), then append to it.
            let tmp = self.path.with_extension("jsonl.tmp");
            let mut out = std::io::BufWriter::new(File::create(&tmp)?);
            let skip = (log.recent.len() + 1).saturating_sub(KEPT_EVENTS);
            let kept: Vec<&Event> = log.recent.iter().chain([event]).skip(skip).collect();
            for e in &kept {
                serde_json::to_writer(&mut out, e).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            log.file = OpenOptions::new().append(true).open(&self.path)?;
        }
        Ok(())
    }

    /// The kept events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.log.lock().recent.iter().cloned().collect()
    }
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_outlive_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.record("create", "pipeline", "p", "CREATE PIPELINE p");
        log.record("failure", "pipeline", "p", "disk full");
        drop(log);
        // A crash mid-write leaves half a line.
        let path = dir.path().join("events.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"at\": \"2026-").unwrap();
        drop(f);
        let log = EventLog::open(dir.path()).unwrap();
        log.record("recovery", "pipeline", "p", "resumed");
        drop(log);
        let log = EventLog::open(dir.path()).unwrap();
        let kinds: Vec<_> = log.events().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["create", "failure", "recovery"]);
    }

    #[test]
    fn the_log_keeps_the_last_events_and_its_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let total = 2 * KEPT_EVENTS + 17;
        for i in 0..total {
            log.record("start", "pipeline", &format!("p{i}"), "");
        }
        let events = log.events();
        assert_eq!(events.len(), KEPT_EVENTS);
        assert_eq!(events.last().unwrap().object, format!("p{}", total - 1));
        assert_eq!(events[0].object, format!("p{}", total - KEPT_EVENTS));
        drop(log);
        let lines = std::fs::read_to_string(dir.path().join("events.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 2 * KEPT_EVENTS, "{lines} lines");
        let reopened = EventLog::open(dir.path()).unwrap().events();
        assert_eq!(reopened, events);
    }
}
