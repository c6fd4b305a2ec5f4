//! The raft log's write-ahead log: append-only segment files of checksummed records,
//! fsynced before an append is acknowledged, and the vote in a file of its own that
//! is replaced atomically.
//!
//! Record layout: `len: u32 BE | crc32(kind, payload): u32 BE | kind: u8 | payload`,
//! where `len` counts the kind byte and the payload. Only a torn tail of the newest
//! segment is dropped on recovery: what a crash mid-write leaves after the last
//! complete record (see [`is_torn_tail`]). Damage anywhere else, a bad checksum
//! before the last complete record included, is corruption: recovery refuses to go
//! on and names the file and the byte offset.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segments roll over past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// A single record larger than this is corruption, not data.
const MAX_RECORD: usize = 64 * 1024 * 1024;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_COMMITTED: u8 = 4;
/// An entry whose payload starts with its format version (see
/// `store::format`); release 0.1 wrote [`KIND_ENTRY`], without one.
const KIND_ENTRY_VERSIONED: u8 = 5;

/// What a log backend holds after recovery.
#[derive(Default, Debug)]
pub struct Recovered {
    /// Log entries by index, encoded.
    pub entries: BTreeMap<u64, Vec<u8>>,
    /// The last purge marker (encoded log id) and its index.
    pub purged: Option<(u64, Vec<u8>)>,
    /// The last committed marker, encoded.
    pub committed: Option<Vec<u8>>,
    /// The vote, encoded.
    pub vote: Option<Vec<u8>>,
}

/// Durable storage for the raft log: the small trait the log store is written
/// against, so the write-ahead log can be replaced.
pub trait LogBackend: Send + 'static {
    /// Appends entries (index, encoded entry). They are written but not yet
    /// durable: they are once the returned file has been synced, which lets many
    /// appends share one fsync (group commit).
    fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> io::Result<Arc<File>>;
    /// Drops every entry with index >= `from`.
    fn truncate(&mut self, from: u64) -> io::Result<()>;
    /// Drops every entry with index <= `upto`, recording `marker` (the purged log id).
    fn purge(&mut self, upto: u64, marker: &[u8]) -> io::Result<()>;
    /// Persists the vote durably.
    fn save_vote(&mut self, vote: &[u8]) -> io::Result<()>;
    /// Records the committed log id (best effort: losing it only delays re-applying).
    fn save_committed(&mut self, committed: &[u8]) -> io::Result<()>;
    /// Where the log lives, for messages.
    fn location(&self) -> &Path;
}

struct Segment {
    seq: u64,
    path: PathBuf,
    max_index: Option<u64>,
}

/// The segmented write-ahead log.
pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: Arc<File>,
    active_len: u64,
    /// Why a write or sync failed, after which nothing more is written: the
    /// file's state past the failure is unknown (a write cut short, pages the
    /// kernel dropped after a failed fsync), and a restart recovers from what
    /// is on disk.
    failed: Option<String>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the log in `dir` and replays it.
    pub fn open(dir: &Path) -> io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut seqs: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".wal")?.parse::<u64>().ok()
            })
            .collect();
        seqs.sort_unstable();

        let mut recovered = Recovered {
            vote: read_vote(dir)?,
            ..Default::default()
        };
        let mut segments = Vec::new();
        let last = seqs.last().copied();
        let mut active_len = 0;
        for seq in seqs {
            let path = segment_path(dir, seq);
            let is_last = Some(seq) == last;
            let (max_index, good_len) = replay_segment(&path, is_last, &mut recovered)?;
            if is_last {
                let len = fs::metadata(&path)?.len();
                if good_len < len {
                    tracing::warn!(
                        segment = %path.display(),
                        dropped = len - good_len,
                        "dropping a torn record at the end of the write-ahead log"
                    );
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(good_len)?;
                    f.sync_all()?;
                }
                active_len = good_len;
            }
            segments.push(Segment {
                seq,
                path,
                max_index,
            });
        }
        if segments.is_empty() {
            let path = segment_path(dir, 1);
            File::create(&path)?.sync_all()?;
            sync_dir(dir)?;
            segments.push(Segment {
                seq: 1,
                path,
                max_index: None,
            });
        }
        let active_path = &segments.last().expect("at least one segment").path;
        let active = Arc::new(OpenOptions::new().append(true).open(active_path)?);
        Ok((
            Self {
                dir: dir.to_path_buf(),
                segments,
                active,
                active_len,
                failed: None,
            },
            recovered,
        ))
    }

    /// Fails at once when an earlier write failed.
    fn usable(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(io::Error::other(format!(
                "the write-ahead log is not written again after a failure until this peer restarts: {why}"
            ))),
        }
    }

    /// Records a failure of `doing`: no later write is tried.
    fn failure(&mut self, doing: &str, e: &io::Error) -> io::Error {
        let e = super::disk::storage_error(&self.dir, doing, e);
        self.failed = Some(e.to_string());
        e
    }

    fn write_records(&mut self, records: &[(u8, &[u8])], sync: bool) -> io::Result<()> {
        self.usable()?;
        if self.active_len >= SEGMENT_BYTES {
            self.roll()
                .map_err(|e| self.failure("starting a new write-ahead log segment", &e))?;
        }
        let mut buf = Vec::new();
        for (kind, payload) in records {
            let len = payload.len() + 1;
            if len > MAX_RECORD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("log record of {len} bytes exceeds the limit of {MAX_RECORD}"),
                ));
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&[*kind]);
            crc.update(payload);
            buf.extend_from_slice(&(len as u32).to_be_bytes());
            buf.extend_from_slice(&crc.finalize().to_be_bytes());
            buf.push(*kind);
            buf.extend_from_slice(payload);
        }
        (&*self.active)
            .write_all(&buf)
            .map_err(|e| self.failure("appending to the write-ahead log", &e))?;
        if sync {
            self.active
                .sync_data()
                .map_err(|e| self.failure("syncing the write-ahead log", &e))?;
        }
        self.active_len += buf.len() as u64;
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        self.active.sync_all()?;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = segment_path(&self.dir, seq);
        self.active = Arc::new(
            OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?,
        );
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            seq,
            path,
            max_index: None,
        });
        self.active_len = 0;
        Ok(())
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl LogBackend for Wal {
    fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> io::Result<Arc<File>> {
        if entries.is_empty() {
            return Ok(self.active.clone());
        }
        let mut payloads = Vec::with_capacity(entries.len());
        for (index, bytes) in entries {
            let mut p = Vec::with_capacity(bytes.len() + 9);
            p.push(super::format::VERSION);
            p.extend_from_slice(&index.to_be_bytes());
            p.extend_from_slice(bytes);
            payloads.push(p);
        }
        let records: Vec<(u8, &[u8])> = payloads
            .iter()
            .map(|p| (KIND_ENTRY_VERSIONED, &p[..]))
            .collect();
        self.write_records(&records, false)?;
        let max = entries.iter().map(|(i, _)| *i).max();
        let seg = self.segments.last_mut().expect("active segment");
        seg.max_index = seg.max_index.max(max);
        Ok(self.active.clone())
    }

    fn truncate(&mut self, from: u64) -> io::Result<()> {
        self.write_records(&[(KIND_TRUNCATE, &from.to_be_bytes())], true)
    }

    fn purge(&mut self, upto: u64, marker: &[u8]) -> io::Result<()> {
        let mut p = upto.to_be_bytes().to_vec();
        p.extend_from_slice(marker);
        self.write_records(&[(KIND_PURGE, &p)], true)?;
        // Whole segments below the purge point are no longer needed; the active one
        // always stays, and it holds the purge record just written.
        let active_seq = self.segments.last().map(|s| s.seq);
        let mut kept = Vec::new();
        for seg in self.segments.drain(..) {
            let removable = Some(seg.seq) != active_seq && seg.max_index.is_none_or(|m| m <= upto);
            if removable {
                fs::remove_file(&seg.path)?;
            } else {
                kept.push(seg);
            }
        }
        self.segments = kept;
        sync_dir(&self.dir)?;
        Ok(())
    }

    fn save_vote(&mut self, vote: &[u8]) -> io::Result<()> {
        self.usable()?;
        let saved = (|| {
            let tmp = self.dir.join("vote.tmp");
            let mut f = File::create(&tmp)?;
            let crc = crc32fast::hash(vote);
            f.write_all(&crc.to_be_bytes())?;
            f.write_all(vote)?;
            f.sync_all()?;
            fs::rename(&tmp, self.dir.join("vote"))?;
            sync_dir(&self.dir)
        })();
        saved.map_err(|e| self.failure("saving the vote", &e))
    }

    fn save_committed(&mut self, committed: &[u8]) -> io::Result<()> {
        self.write_records(&[(KIND_COMMITTED, committed)], false)
    }

    fn location(&self) -> &Path {
        &self.dir
    }
}

fn read_vote(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(dir.join("vote")) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < 4 {
        return Err(corrupt("vote file is truncated".into()));
    }
    let (crc, vote) = bytes.split_at(4);
    if u32::from_be_bytes(crc.try_into().expect("4 bytes")) != crc32fast::hash(vote) {
        return Err(corrupt("vote file fails its checksum".into()));
    }
    Ok(Some(vote.to_vec()))
}

/// Replays one segment into `out`; returns the highest entry index it holds and the
/// length of its intact prefix.
fn replay_segment(
    path: &Path,
    is_last: bool,
    out: &mut Recovered,
) -> io::Result<(Option<u64>, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut pos = 0usize;
    let mut max_index = None;
    while pos < data.len() {
        let damage = match parse_record(&data, pos) {
            Ok((kind, payload)) => match kind {
                KIND_ENTRY if payload.len() >= 8 => {
                    let index = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                    out.entries.insert(index, payload[8..].to_vec());
                    max_index = max_index.max(Some(index));
                    None
                }
                KIND_ENTRY_VERSIONED if payload.len() >= 9 => {
                    let version = payload[0];
                    if version > super::format::VERSION {
                        return Err(io::Error::from(super::format::FormatError::Newer {
                            what: format!("the log entry at byte {pos} of {}", path.display()),
                            version,
                        }));
                    }
                    let index = u64::from_be_bytes(payload[1..9].try_into().expect("8 bytes"));
                    out.entries.insert(index, payload[9..].to_vec());
                    max_index = max_index.max(Some(index));
                    None
                }
                KIND_TRUNCATE if payload.len() == 8 => {
                    let from = u64::from_be_bytes(payload.try_into().expect("8 bytes"));
                    out.entries.split_off(&from);
                    None
                }
                KIND_PURGE if payload.len() >= 8 => {
                    let upto = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                    out.entries = out.entries.split_off(&(upto + 1));
                    out.purged = Some((upto, payload[8..].to_vec()));
                    None
                }
                KIND_COMMITTED => {
                    out.committed = Some(payload.to_vec());
                    None
                }
                _ => Some(RecordDamage::UnknownKind(kind)),
            },
            Err(damage) => Some(damage),
        };
        match damage {
            None => pos += RECORD_HEADER + record_len(&data, pos),
            Some(damage) if is_last && is_torn_tail(&data, pos, &damage) => {
                return Ok((max_index, pos as u64));
            }
            Some(damage) => {
                return Err(corrupt(format!(
                    "write-ahead log segment {} is corrupt at byte {pos}: {damage}; \
                     it lies before the last complete record, so it is not a torn write \
                     and dropping it would lose acknowledged writes. Restore this peer's \
                     data dir from a backup, or remove the peer and join it afresh",
                    path.display()
                )));
            }
        }
    }
    Ok((max_index, pos as u64))
}

/// `len | crc`: the bytes before a record's kind byte.
const RECORD_HEADER: usize = 8;
/// The unit a disk writes whole or not at all, as far as recovery assumes.
const SECTOR: usize = 512;

/// Why the bytes at some offset are not a good record.
#[derive(Debug)]
enum RecordDamage {
    /// Fewer bytes than a header are left.
    ShortHeader,
    /// The length field is zero or above [`MAX_RECORD`].
    BadLength(usize),
    /// The record runs past the end of the file.
    CutShort { len: usize, have: usize },
    /// The record is whole but fails its checksum.
    Checksum,
    /// The record is whole and checksummed but of no kind this build knows.
    UnknownKind(u8),
}

impl std::fmt::Display for RecordDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ShortHeader => write!(f, "the record header is cut short"),
            Self::BadLength(len) => {
                write!(f, "the record length {len} is outside 1..={MAX_RECORD}")
            }
            Self::CutShort { len, have } => write!(
                f,
                "the record says it holds {len} bytes but only {have} follow"
            ),
            Self::Checksum => write!(f, "the record fails its checksum"),
            Self::UnknownKind(kind) => write!(f, "the record kind {kind} is unknown"),
        }
    }
}

fn record_len(data: &[u8], pos: usize) -> usize {
    u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize
}

/// The record at `pos`: its kind and payload, or what is wrong with it.
fn parse_record(data: &[u8], pos: usize) -> Result<(u8, &[u8]), RecordDamage> {
    if data.len() - pos < RECORD_HEADER {
        return Err(RecordDamage::ShortHeader);
    }
    let len = record_len(data, pos);
    let crc = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
    checked_body(data, pos, len, crc).map(|body| (body[0], &body[1..]))
}

fn checked_body(data: &[u8], pos: usize, len: usize, crc: u32) -> Result<&[u8], RecordDamage> {
    if len == 0 || len > MAX_RECORD {
        return Err(RecordDamage::BadLength(len));
    }
    let have = data.len() - pos - RECORD_HEADER;
    if len > have {
        return Err(RecordDamage::CutShort { len, have });
    }
    let body = &data[pos + RECORD_HEADER..pos + RECORD_HEADER + len];
    if crc32fast::hash(body) != crc {
        return Err(RecordDamage::Checksum);
    }
    Ok(body)
}

/// Whether damage at `pos` of the newest segment is what a crash mid-write leaves
/// (a torn tail, safe to drop: no record after it was ever complete, so none was
/// acknowledged) rather than corruption of written data.
///
/// A crash can cut the last write short, or leave the file longer than what landed
/// with the rest reading as zeros. So it is torn when the header is cut short; when
/// the length is zero and only zeros follow; when the record runs past the end of
/// the file, unless a single flipped bit in its length explains that instead; and
/// when the record fails its checksum, only zeros follow it, and a sector of it
/// reads as zeros (a write the disk did not finish). A bad length, a bad checksum
/// with data after it, or an unknown kind is corruption.
fn is_torn_tail(data: &[u8], pos: usize, damage: &RecordDamage) -> bool {
    let only_zeros_from = |at: usize| {
        data.get(at..)
            .is_none_or(|rest| rest.iter().all(|b| *b == 0))
    };
    match damage {
        RecordDamage::ShortHeader => true,
        RecordDamage::BadLength(0) => only_zeros_from(pos),
        RecordDamage::BadLength(_) | RecordDamage::UnknownKind(_) => false,
        RecordDamage::CutShort { len, .. } => !one_bit_repair_of_length(data, pos, *len),
        RecordDamage::Checksum => {
            let end = pos + RECORD_HEADER + record_len(data, pos);
            only_zeros_from(end) && holds_a_zero_sector(data, pos, end)
        }
    }
}

/// Whether flipping one bit of the length field at `pos` gives a whole record
/// with a good checksum: then the length was damaged, not cut short by a crash.
fn one_bit_repair_of_length(data: &[u8], pos: usize, len: usize) -> bool {
    let crc = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
    (0..32).any(|bit| checked_body(data, pos, len ^ (1 << bit), crc).is_ok())
}

/// Whether some piece of `data[from..to]`, cut at sector boundaries of the file,
/// is all zeros.
fn holds_a_zero_sector(data: &[u8], from: usize, to: usize) -> bool {
    let mut start = from;
    while start < to {
        let end = ((start / SECTOR + 1) * SECTOR).min(to);
        if data[start..end].iter().all(|b| *b == 0) {
            return true;
        }
        start = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| (i, format!("entry-{i}").into_bytes()))
            .collect()
    }

    #[test]
    fn replays_appends_truncates_purges_and_vote() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, rec) = Wal::open(dir.path()).unwrap();
            assert!(rec.entries.is_empty() && rec.vote.is_none());
            wal.append(&entries(1..11)).unwrap();
            wal.truncate(8).unwrap();
            wal.append(&entries(8..9)).unwrap();
            wal.purge(3, b"marker").unwrap();
            wal.save_vote(b"vote-1").unwrap();
            wal.save_committed(b"c-7").unwrap();
        }
        let (_wal, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(
            rec.entries.keys().copied().collect::<Vec<_>>(),
            (4..9).collect::<Vec<_>>()
        );
        assert_eq!(rec.purged, Some((3, b"marker".to_vec())));
        assert_eq!(rec.vote.as_deref(), Some(&b"vote-1"[..]));
        assert_eq!(rec.committed.as_deref(), Some(&b"c-7"[..]));
    }

    #[test]
    fn a_torn_tail_is_dropped_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&entries(1..4)).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        {
            let (mut wal, rec) = Wal::open(dir.path()).unwrap();
            assert_eq!(rec.entries.len(), 2);
            wal.append(&entries(3..5)).unwrap();
        }
        let (_, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(
            rec.entries.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    fn flip(seg: &Path, at: usize, mask: u8) {
        let mut data = fs::read(seg).unwrap();
        data[at] ^= mask;
        fs::write(seg, &data).unwrap();
    }

    /// Offsets of each record in the newest segment.
    fn record_offsets(seg: &Path) -> Vec<usize> {
        let data = fs::read(seg).unwrap();
        let mut offsets = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            offsets.push(pos);
            pos += RECORD_HEADER + record_len(&data, pos);
        }
        offsets
    }

    fn refusal(dir: &Path) -> String {
        match Wal::open(dir) {
            Ok(_) => panic!("a corrupt write-ahead log was opened"),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                e.to_string()
            }
        }
    }

    #[test]
    fn a_flipped_bit_before_the_last_record_of_the_newest_segment_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&entries(1..4)).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let second = record_offsets(&seg)[1];
        let before = fs::read(&seg).unwrap();
        flip(&seg, second + RECORD_HEADER + 3, 0x40);
        let msg = refusal(dir.path());
        assert!(
            msg.contains(&seg.display().to_string())
                && msg.contains(&format!("at byte {second}"))
                && msg.contains("checksum"),
            "{msg}"
        );
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            before.len() as u64,
            "a refused log is left as it was"
        );
    }

    #[test]
    fn a_flipped_bit_in_the_last_record_is_not_taken_for_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&entries(1..4)).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let last = *record_offsets(&seg).last().unwrap();
        flip(&seg, last + RECORD_HEADER + 2, 0x01);
        assert!(refusal(dir.path()).contains(&format!("at byte {last}")));
    }

    #[test]
    fn a_flipped_bit_in_a_length_is_not_taken_for_a_cut_short_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&entries(1..4)).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let second = record_offsets(&seg)[1];
        // The length's third byte: 256 bytes more than the file holds.
        flip(&seg, second + 2, 0x01);
        let msg = refusal(dir.path());
        assert!(msg.contains(&format!("at byte {second}")), "{msg}");
    }

    #[test]
    fn a_tail_the_filesystem_left_as_zeros_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&entries(1..3)).unwrap();
            // A big last record, whose second sector never reached the disk.
            wal.append(&[(3, vec![7u8; 3 * SECTOR])]).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let last = *record_offsets(&seg).last().unwrap();
        let mut data = fs::read(&seg).unwrap();
        let sector = (last / SECTOR + 1) * SECTOR;
        data[sector..sector + SECTOR].fill(0);
        // And the file grew past what was written, as after a crash.
        data.extend_from_slice(&[0u8; 700]);
        fs::write(&seg, &data).unwrap();
        let (_, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(rec.entries.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(fs::metadata(&seg).unwrap().len(), last as u64);
    }

    #[test]
    fn damage_in_an_older_segment_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&entries(1..4)).unwrap();
            wal.roll().unwrap();
            wal.append(&entries(4..6)).unwrap();
        }
        let old = segment_path(dir.path(), 1);
        let len = fs::metadata(&old).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&old)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(refusal(dir.path()).contains(&old.display().to_string()));
    }

    #[test]
    fn purge_removes_whole_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.append(&entries(1..5)).unwrap();
        wal.roll().unwrap();
        wal.append(&entries(5..9)).unwrap();
        wal.roll().unwrap();
        assert_eq!(wal.segment_count(), 3);
        wal.purge(6, b"m").unwrap();
        assert_eq!(wal.segment_count(), 2);
        drop(wal);
        let (_, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(rec.entries.keys().copied().collect::<Vec<_>>(), vec![7, 8]);
    }
}
