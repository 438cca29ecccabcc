//! The client sessions the server holds: who is connected, from where, with which application,
//! what each is running and its settings. `tributary.sessions` shows them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::catalog::users::Role;

/// Longest query text kept per session.
const QUERY_CHARS: usize = 4_096;

/// One connected client.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The backend process id the client was given (its cancel requests name it).
    pub pid: i32,
    pub user: String,
    /// What the user may do (an admin when connections are trusted).
    pub role: Role,
    /// Whether the connection is encrypted (TLS).
    pub tls: bool,
    pub application_name: String,
    pub client_addr: String,
    pub connected_at: DateTime<Utc>,
    /// The statement running, or the last one when idle.
    pub query: Option<String>,
    /// When the running statement started; `None` when idle.
    pub query_started_at: Option<DateTime<Utc>>,
    /// `SET statement_timeout`: statements running longer are cancelled.
    pub statement_timeout: Option<Duration>,
    /// Signals the running statement that the client cancelled it.
    cancel: Option<Arc<Notify>>,
}

/// The sessions, by pid.
#[derive(Debug, Default)]
pub struct Sessions {
    by_pid: Mutex<BTreeMap<i32, SessionInfo>>,
}

impl Sessions {
    /// Notes a new session; it leaves when the returned guard is dropped (the connection ends).
    pub fn connect(
        self: &Arc<Self>,
        pid: i32,
        user: String,
        role: Role,
        application_name: String,
        client_addr: String,
        tls: bool,
    ) -> SessionGuard {
        self.by_pid.lock().insert(
            pid,
            SessionInfo {
                pid,
                user,
                role,
                tls,
                application_name,
                client_addr,
                connected_at: Utc::now(),
                query: None,
                query_started_at: None,
                statement_timeout: None,
                cancel: None,
            },
        );
        SessionGuard {
            sessions: self.clone(),
            pid,
        }
    }

    /// Marks `query` running in session `pid` until the returned guard is dropped.
    pub fn run(self: &Arc<Self>, pid: i32, query: &str) -> RunningQuery {
        let cancel = Arc::new(Notify::new());
        if let Some(s) = self.by_pid.lock().get_mut(&pid) {
            s.query = Some(query.chars().take(QUERY_CHARS).collect());
            s.query_started_at = Some(Utc::now());
            s.cancel = Some(cancel.clone());
        }
        RunningQuery {
            sessions: self.clone(),
            pid,
            cancel,
        }
    }

    /// Cancels the statement running in session `pid`, if any (the client asked; the caller
    /// checked its secret key).
    pub fn cancel(&self, pid: i32) {
        if let Some(cancel) = self.by_pid.lock().get(&pid).and_then(|s| s.cancel.clone()) {
            cancel.notify_one();
        }
    }

    /// Changes session `pid`'s settings.
    pub fn update(&self, pid: i32, change: impl FnOnce(&mut SessionInfo)) {
        if let Some(s) = self.by_pid.lock().get_mut(&pid) {
            change(s);
        }
    }

    /// Session `pid`, when connected.
    pub fn get(&self, pid: i32) -> Option<SessionInfo> {
        self.by_pid.lock().get(&pid).cloned()
    }

    /// Every session, by pid.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.by_pid.lock().values().cloned().collect()
    }
}

/// A connected session; dropping it ends the session.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    pid: i32,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.by_pid.lock().remove(&self.pid);
    }
}

/// A statement running; dropping it (finished, failed or cancelled) makes the session idle.
#[derive(Debug)]
pub struct RunningQuery {
    sessions: Arc<Sessions>,
    pid: i32,
    cancel: Arc<Notify>,
}

impl RunningQuery {
    /// Notified when the client cancels the statement.
    pub fn cancelled(&self) -> Arc<Notify> {
        self.cancel.clone()
    }
}

impl Drop for RunningQuery {
    fn drop(&mut self) {
        self.sessions.update(self.pid, |s| {
            s.query_started_at = None;
            s.cancel = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_come_and_go_and_show_what_runs() {
        let sessions = Arc::new(Sessions::default());
        let guard = sessions.connect(
            7,
            "ana".into(),
            Role::Admin,
            "psql".into(),
            "127.0.0.1:5".into(),
            false,
        );
        {
            let _running = sessions.run(7, "SELECT 1");
            let s = sessions.get(7).unwrap();
            assert_eq!(s.query.as_deref(), Some("SELECT 1"));
            assert!(s.query_started_at.is_some());
        }
        let s = sessions.get(7).unwrap();
        assert!(s.query_started_at.is_none(), "idle once the statement ends");
        assert_eq!(
            s.query.as_deref(),
            Some("SELECT 1"),
            "the last statement stays"
        );
        drop(guard);
        assert!(sessions.list().is_empty());
    }
}
