//! Instance logs on the node: stdout and stderr of each instance, appended to a
//! file per run (bounded: past the cap the file rotates once), with live
//! followers. The previous run's log is kept for `--previous`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::runtime::{LogSink, LogStream};

/// Largest current log file before it rotates.
const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;

/// Chunks a live follower may fall behind before it skips ahead.
const FOLLOW_BUFFER: usize = 1024;

type Live = broadcast::Sender<Arc<Vec<u8>>>;

/// One instance's log.
pub struct InstanceLog {
    dir: PathBuf,
    file: Mutex<Option<(File, u64)>>,
    /// Made by the first `follow`: a channel allocates its whole buffer up
    /// front (about 40 KiB), and most instances are never followed.
    live: Mutex<Option<Live>>,
}

impl InstanceLog {
    /// The log kept in `dir`.
    pub fn open(dir: PathBuf) -> std::io::Result<Arc<Self>> {
        fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir,
            file: Mutex::new(None),
            live: Mutex::new(None),
        }))
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current.log")
    }

    fn previous(&self) -> PathBuf {
        self.dir.join("previous.log")
    }

    /// A new run starts: the current log becomes the previous one.
    pub fn new_run(&self) {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        *guard = None;
        let current = self.current();
        if current.exists() {
            let _ = fs::rename(&current, self.previous());
        }
    }

    /// Appends output.
    pub fn append(&self, bytes: &[u8]) {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|(_, len)| *len > MAX_LOG_BYTES) {
            *guard = None;
            let _ = fs::rename(self.current(), self.dir.join("current.log.1"));
        }
        if guard.is_none() {
            let opened = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.current());
            if let Ok(f) = opened {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                *guard = Some((f, len));
            }
        }
        if let Some((f, len)) = guard.as_mut() {
            if f.write_all(bytes).is_ok() {
                *len += bytes.len() as u64;
            }
        }
        drop(guard);
        if let Some(live) = &*self.live.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = live.send(Arc::new(bytes.to_vec()));
        }
    }

    /// A sink for the runtime.
    pub fn sink(self: &Arc<Self>) -> LogSink {
        let this = self.clone();
        Arc::new(move |_stream: LogStream, bytes: &[u8]| this.append(bytes))
    }

    /// What is logged so far (of this run or the previous one), the last `tail`
    /// lines if given.
    pub fn read(&self, previous: bool, tail: Option<u64>) -> Vec<u8> {
        let path = if previous {
            self.previous()
        } else {
            self.current()
        };
        let mut bytes = Vec::new();
        if !previous {
            if let Ok(b) = fs::read(self.dir.join("current.log.1")) {
                bytes.extend(b);
            }
        }
        if let Ok(b) = fs::read(&path) {
            bytes.extend(b);
        }
        match tail {
            Some(n) => last_lines(&bytes, n as usize).to_vec(),
            None => bytes,
        }
    }

    /// Output appended from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<Vec<u8>>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe()
    }

    /// Removes the log (the instance is gone).
    pub fn remove(dir: &Path) {
        let _ = fs::remove_dir_all(dir);
    }
}

fn last_lines(bytes: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &bytes[i + 1..];
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_previous_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::open(dir.path().join("i")).unwrap();
        let mut rx = log.follow();
        log.append(b"a\nb\nc\n");
        assert_eq!(log.read(false, Some(2)), b"b\nc\n");
        assert_eq!(&**rx.try_recv().unwrap(), b"a\nb\nc\n");
        log.new_run();
        log.append(b"d\n");
        assert_eq!(log.read(false, None), b"d\n");
        assert_eq!(log.read(true, None), b"a\nb\nc\n");
    }
}
