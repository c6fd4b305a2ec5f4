//! The audit log, like Kubernetes' log backend: every request that changes
//! something and every request that is refused is appended as one JSON
//! line (time, identity, groups, verb, kind, namespace, name, result,
//! latency) to a file rotated by size.
//!
//! The request path only hands the event to a bounded queue; one thread
//! writes and flushes as soon as the queue is empty, so a line is on disk
//! moments after its answer. A queue full for longer than a disk hiccup
//! means the disk cannot keep up: the event is dropped and counted, and a
//! warning says so, rather than the API stalling behind its own log.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;

/// Where the log goes and when it rotates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// The file (`<data-dir>/audit.log` by default).
    pub path: PathBuf,
    /// Size past which the file is rotated to `audit.log.1`.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.N`).
    pub backups: usize,
}

impl AuditConfig {
    /// `audit.log` in `data_dir`, rotated at 100 MiB, five kept (Kubernetes'
    /// `--audit-log-maxsize 100 --audit-log-maxbackup`).
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("audit.log"),
            max_bytes: 100 * 1024 * 1024,
            backups: 5,
        }
    }
}

/// One audited request.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// When it was answered, RFC 3339 with microseconds.
    pub time: String,
    /// Who asked (`""` for an anonymous joiner).
    pub identity: String,
    /// The caller's groups.
    pub groups: Vec<String>,
    /// The request (`create`, `update-status`, `bind`, `join-node`, …).
    pub verb: String,
    /// The object kind, when it has one.
    pub kind: String,
    /// The namespace, when it has one.
    pub namespace: String,
    /// The object's name, when it names one.
    pub name: String,
    /// `ok`, or the error code (`Forbidden`, `Conflict`, …).
    pub result: String,
    /// What was wrong, for a result other than `ok`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// From the request read to its answer.
    pub latency_micros: u64,
}

/// Events the queue holds before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Longest message kept in an event.
const MAX_MESSAGE: usize = 512;

/// The sending half of the audit log. Dropping it writes out what is
/// queued and waits for the writer to finish.
pub struct AuditLog {
    tx: Option<SyncSender<AuditEvent>>,
    dropped: Arc<AtomicU64>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl AuditLog {
    /// Opens (appending) the file in `config` and starts its writer.
    pub fn open(config: AuditConfig) -> std::io::Result<Self> {
        if let Some(dir) = config.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&config.path)?;
        let size = file.metadata()?.len();
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            config,
            out: BufWriter::new(file),
            size,
            failing: false,
        };
        let writer = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            tx: Some(tx),
            dropped,
            writer: Some(writer),
        })
    }

    /// Appends `event` (dropped, and counted, when the writer is far behind).
    pub fn record(&self, mut event: AuditEvent) {
        if event.message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !event.message.is_char_boundary(end) {
                end -= 1;
            }
            event.message.truncate(end);
        }
        let Some(tx) = &self.tx else { return };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                if before.is_power_of_two() || before == 0 {
                    tracing::warn!(
                        dropped = before + 1,
                        "the audit log cannot keep up; dropping events"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Events dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

struct Writer {
    config: AuditConfig,
    out: BufWriter<File>,
    size: u64,
    /// Whether the last write failed: a failing disk is warned about once,
    /// when it starts failing, not once per event.
    failing: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<AuditEvent>) {
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(event) = next {
                match self.write(&event) {
                    Err(e) if !self.failing => {
                        self.failing = true;
                        tracing::warn!(error = %e, path = %self.config.path.display(), "cannot write the audit log; events are lost until it can");
                    }
                    Err(_) => {}
                    Ok(()) if self.failing => {
                        self.failing = false;
                        tracing::info!(path = %self.config.path.display(), "the audit log is written again");
                    }
                    Ok(()) => {}
                }
                next = rx.try_recv().ok();
            }
            if let Err(e) = self.out.flush() {
                tracing::warn!(error = %e, path = %self.config.path.display(), "cannot flush the audit log");
            }
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, event: &AuditEvent) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `audit.log` becomes `audit.log.1`, `.1` becomes `.2`, …; the oldest
    /// past `backups` is removed.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let numbered = |n: usize| {
            let mut p = self.config.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.config.backups == 0 {
            std::fs::remove_file(&self.config.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.config.backups));
            for n in (1..self.config.backups).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.config.path, numbered(1))?;
        }
        self.out = BufWriter::new(open_append(&self.config.path)?);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            time: "2026-12-04T12:00:00.000000Z".into(),
            identity: "user:alice".into(),
            groups: vec!["team-a".into()],
            verb: "create".into(),
            kind: "Service".into(),
            namespace: "a".into(),
            name: format!("web-{n}"),
            result: if n.is_multiple_of(2) {
                "ok"
            } else {
                "Forbidden"
            }
            .into(),
            message: if n.is_multiple_of(2) {
                String::new()
            } else {
                "x".repeat(2000)
            },
            latency_micros: 120,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    #[test]
    fn events_are_json_lines_rotated_by_size_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            path: dir.path().join("audit.log"),
            max_bytes: 4096,
            backups: 2,
        };
        let log = AuditLog::open(config.clone()).unwrap();
        for n in 0..100 {
            log.record(event(n));
        }
        // Dropping the log waits for the writer to write out its queue.
        drop(log);
        let all = || {
            let mut names = Vec::new();
            for file in ["audit.log.2", "audit.log.1", "audit.log"] {
                for v in lines(&dir.path().join(file)) {
                    names.push(v["name"].as_str().unwrap().to_string());
                }
            }
            names
        };
        assert!(
            !dir.path().join("audit.log.3").exists(),
            "only two backups are kept"
        );
        for file in ["audit.log", "audit.log.1", "audit.log.2"] {
            let size = std::fs::metadata(dir.path().join(file)).unwrap().len();
            assert!(size <= 4096, "{file} is {size} bytes");
        }
        let names = all();
        let first: usize = names[0].trim_start_matches("web-").parse().unwrap();
        let expected: Vec<String> = (first..100).map(|n| format!("web-{n}")).collect();
        assert_eq!(names, expected, "the newest events, in order, none lost");
        let denied = lines(&config.path)
            .into_iter()
            .find(|v| v["result"] == "Forbidden")
            .unwrap();
        assert_eq!(denied["message"].as_str().unwrap().len(), MAX_MESSAGE);
        assert_eq!(denied["groups"][0], "team-a");
        assert_eq!(denied["latencyMicros"], 120);
    }
}
