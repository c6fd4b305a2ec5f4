//! What a failed write to a peer's disk says: the data dir, what was being
//! written, and for a full disk how much room the filesystem has left, so
//! an operator knows where to make room.

use std::io;
use std::path::Path;

/// Whether `e` says the disk is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.raw_os_error() == Some(28)
        || e.to_string().contains("No space left on device")
}

/// `e`, raised while `doing` in `dir`, as an error that names both (and the
/// room left, when the disk is full). It keeps `e`'s kind.
pub fn storage_error(dir: &Path, doing: &str, e: &io::Error) -> io::Error {
    let message = if is_disk_full(e) {
        let room = match (fs2::available_space(dir), fs2::total_space(dir)) {
            (Ok(free), Ok(total)) => format!("{} of {} free", bytes(free), bytes(total)),
            _ => "its free space unknown".to_string(),
        };
        format!(
            "{doing} in {}: the disk is full (the filesystem holding it has {room}); \
             make room there, then restart this peer: nothing acknowledged is lost",
            dir.display()
        )
    } else {
        format!("{doing} in {}: {e}", dir.display())
    };
    io::Error::new(e.kind(), message)
}

fn bytes(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n >= 10 * MIB {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_with_its_room() {
        let dir = tempfile::tempdir().unwrap();
        let full = io::Error::from_raw_os_error(28);
        let e = storage_error(dir.path(), "appending to the write-ahead log", &full);
        let text = e.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains("the disk is full") && text.contains(" free"),
            "{text}"
        );
        assert_eq!(e.kind(), full.kind());
        let other = storage_error(dir.path(), "syncing", &io::Error::other("EIO"));
        assert!(other.to_string().ends_with(": EIO"), "{other}");
    }
}
