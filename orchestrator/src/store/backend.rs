//! Where the state machine keeps its key space and snapshots: the small trait the
//! state machine is written against, and its sled implementation.
//!
//! The applied position is written in the same atomic batch as the keys it
//! produced, so after a crash the key space and its position always agree and
//! replaying the log from that position is exact.

use std::io;
use std::path::Path;

use super::types::StoredValue;

/// Durable key space of the state machine.
pub trait StateBackend: Send + Sync + 'static {
    /// One key.
    fn get(&self, key: &str) -> io::Result<Option<StoredValue>>;
    /// Every key starting with `prefix`, in key order.
    fn scan(&self, prefix: &str) -> io::Result<Vec<(String, StoredValue)>> {
        self.scan_page(prefix, None, usize::MAX)
    }
    /// At most `max` keys starting with `prefix` and coming after `after`
    /// (all of them when `None`), in key order: one page of a long scan.
    fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> io::Result<Vec<(String, StoredValue)>>;
    /// Applies puts (`Some`) and deletes (`None`) and sets the applied position
    /// (`meta`), atomically.
    fn write(&self, changes: &[(String, Option<StoredValue>)], meta: &[u8]) -> io::Result<()>;
    /// The applied position last written.
    fn meta(&self) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the whole key space and position (installing a snapshot).
    fn replace_all(&self, items: Vec<(String, StoredValue)>, meta: &[u8]) -> io::Result<()>;
    /// Stores the current snapshot (meta and data), replacing the previous one.
    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> io::Result<()>;
    /// The current snapshot, if any.
    fn load_snapshot(&self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Makes everything written so far durable.
    fn flush(&self) -> io::Result<()>;
}

const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_DATA: &[u8] = b"data";

/// The sled-backed key space.
pub struct SledBackend {
    dir: std::path::PathBuf,
    db: sled::Db,
    kv: sled::Tree,
    snapshots: sled::Tree,
}

/// A sled error as an I/O error that names the key space's directory and
/// what was being done (and the room left, when the disk is full).
fn sled_error(dir: &Path, doing: &str, e: sled::Error) -> io::Error {
    let e = match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    };
    super::disk::storage_error(dir, doing, &e)
}

fn decode_value(bytes: &[u8]) -> io::Result<StoredValue> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn encode_value(v: &StoredValue) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

// The applied position lives in the kv tree under a key no object key can have
// (object keys start with '/'), so one batch updates both.
const META_IN_KV: &[u8] = b"\0applied";
/// The format version of the values in the kv tree (`store::format`);
/// absent in a key space written by release 0.1, whose values read as
/// today's.
const FORMAT_IN_KV: &[u8] = b"\0format";

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()
            .map_err(|e| sled_error(dir, "opening the key space", e))?;
        let kv = db
            .open_tree("kv")
            .map_err(|e| sled_error(dir, "opening the key space", e))?;
        let snapshots = db
            .open_tree("snapshots")
            .map_err(|e| sled_error(dir, "opening the key space", e))?;
        let backend = Self {
            dir: dir.to_path_buf(),
            db,
            kv,
            snapshots,
        };
        backend.check_format()?;
        Ok(backend)
    }
}

impl SledBackend {
    fn failed(&self, doing: &str, e: sled::Error) -> io::Error {
        sled_error(&self.dir, doing, e)
    }

    /// Refuses a key space of a newer format; marks one of release 0.1 (or
    /// a new one) as of this build's.
    fn check_format(&self) -> io::Result<()> {
        use super::format::{FormatError, VERSION};
        let stored = self
            .kv
            .get(FORMAT_IN_KV)
            .map_err(|e| self.failed("reading the key space", e))?;
        match stored.as_deref() {
            Some([version]) if *version > VERSION => Err(FormatError::Newer {
                what: format!("the key space in {}", self.dir.display()),
                version: *version,
            }
            .into()),
            Some([_]) => Ok(()),
            _ => {
                self.kv
                    .insert(FORMAT_IN_KV, &[VERSION])
                    .map_err(|e| self.failed("writing the key space", e))?;
                Ok(())
            }
        }
    }
}

impl StateBackend for SledBackend {
    fn get(&self, key: &str) -> io::Result<Option<StoredValue>> {
        match self
            .kv
            .get(key.as_bytes())
            .map_err(|e| self.failed("reading the key space", e))?
        {
            Some(b) => decode_value(&b).map(Some),
            None => Ok(None),
        }
    }

    fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> io::Result<Vec<(String, StoredValue)>> {
        let mut out = Vec::new();
        let items = match after {
            None => self.kv.scan_prefix(prefix.as_bytes()),
            Some(after) => self.kv.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
        };
        for item in items {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(|e| self.failed("reading the key space", e))?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if k.first() != Some(&b'/') {
                continue;
            }
            let key = String::from_utf8(k.to_vec())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            out.push((key, decode_value(&v)?));
        }
        Ok(out)
    }

    fn write(&self, changes: &[(String, Option<StoredValue>)], meta: &[u8]) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in changes {
            match value {
                Some(v) => batch.insert(key.as_bytes(), encode_value(v)?),
                None => batch.remove(key.as_bytes()),
            }
        }
        batch.insert(META_IN_KV, meta);
        self.kv
            .apply_batch(batch)
            .map_err(|e| self.failed("writing the key space", e))
    }

    fn meta(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .kv
            .get(META_IN_KV)
            .map_err(|e| self.failed("reading the key space", e))?
            .map(|v| v.to_vec()))
    }

    fn replace_all(&self, items: Vec<(String, StoredValue)>, meta: &[u8]) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for k in self.kv.iter().keys() {
            batch.remove(k.map_err(|e| self.failed("reading the key space", e))?);
        }
        for (key, value) in &items {
            batch.insert(key.as_bytes(), encode_value(value)?);
        }
        batch.insert(META_IN_KV, meta);
        batch.insert(FORMAT_IN_KV, &[super::format::VERSION]);
        self.kv
            .apply_batch(batch)
            .map_err(|e| self.failed("installing a snapshot in the key space", e))?;
        self.flush()
    }

    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, meta);
        batch.insert(SNAPSHOT_DATA, data);
        self.snapshots
            .apply_batch(batch)
            .map_err(|e| self.failed("saving a snapshot", e))?;
        self.flush()
    }

    fn load_snapshot(&self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let meta = self
            .snapshots
            .get(SNAPSHOT_META)
            .map_err(|e| self.failed("reading the snapshot", e))?;
        let data = self
            .snapshots
            .get(SNAPSHOT_DATA)
            .map_err(|e| self.failed("reading the snapshot", e))?;
        Ok(match (meta, data) {
            (Some(m), Some(d)) => Some((m.to_vec(), d.to_vec())),
            _ => None,
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| self.failed("flushing the key space", e))
    }
}
