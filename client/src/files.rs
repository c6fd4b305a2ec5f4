//! Files that hold secrets (keys, client configurations, the CA key):
//! written so that no reader ever sees a partial or world-readable copy,
//! and a crash leaves the old file or the new one, never neither.
//!
//! Each write goes to its own temporary file in the same directory, created
//! with mode 0600 (never a moment readable by others), is fsynced, renamed
//! over the target, and the directory fsynced so the rename survives a
//! crash. Temporary names are unique per write: two files written at once
//! (a key and its certificate) never share one.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path`, readable by its owner only, atomically and
/// durably.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a file path needs a file name")
        })?
        .to_string_lossy()
        .into_owned();
    let mut suffix = [0u8; 8];
    rand::Rng::fill(&mut rand::thread_rng(), &mut suffix[..]);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        hex::encode(suffix)
    ));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates `dir` (and its parents) if needed and makes it its owner's only
/// (0700): a data dir holds keys.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_its_certificate_written_at_once_keep_their_own_contents() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("peer.key");
        let cert = dir.path().join("peer.crt");
        let writers: Vec<_> = [(key.clone(), "KEY"), (cert.clone(), "CERT")]
            .into_iter()
            .map(|(path, text)| {
                std::thread::spawn(move || {
                    for n in 0..200 {
                        write_private(&path, format!("{text} {n}").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "KEY 199");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "CERT 199");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for path in [&key, &cert] {
                let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
            }
            let data = dir.path().join("data");
            create_private_dir(&data).unwrap();
            let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
    }
}
