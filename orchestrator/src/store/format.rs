//! Versions of what a peer stores: an object's bytes, a log entry, a
//! snapshot and the key space each carry the version of their format, so a
//! new build can read what an old one wrote and refuses, saying so, what a
//! newer one wrote. Release 0.1 wrote no versions; what it wrote reads as
//! version 0, which is today's format without the envelope.
//!
//! An envelope is [`MAGIC`] then the version byte, then the body. For an
//! object that cannot be mistaken for an unversioned one: postcard starts an
//! enum with its variant's index, and no kind has index 0xF1.

use std::io;

/// The first byte of every versioned encoding.
pub const MAGIC: u8 = 0xF1;
/// The version this build writes, and the newest it reads.
pub const VERSION: u8 = 1;

/// `body` behind the envelope of [`VERSION`].
pub fn seal<T: serde::Serialize>(body: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(body, vec![MAGIC, VERSION])
}

/// Why stored bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Written by a newer release.
    #[error(
        "{what} is stored in format version {version}, newer than this build reads (up to {VERSION}): it was written by a newer flotilla; run that release or a later one"
    )]
    Newer {
        /// What it is.
        what: String,
        /// Its version.
        version: u8,
    },
    /// Not a valid encoding of its version.
    #[error("{what} does not decode (format version {version}): {reason}")]
    Undecodable {
        /// What it is.
        what: String,
        /// The version it claims.
        version: u8,
        /// Why.
        reason: String,
    },
}

impl From<FormatError> for io::Error {
    fn from(e: FormatError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }
}

/// Decodes `bytes`, sealed or from before versions, as `what`.
pub fn open<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, FormatError> {
    let (version, body) = match bytes {
        [MAGIC, version, body @ ..] => (*version, body),
        _ => (0, bytes),
    };
    if version > VERSION {
        return Err(FormatError::Newer {
            what: what.to_string(),
            version,
        });
    }
    postcard::from_bytes(body).map_err(|e| FormatError::Undecodable {
        what: what.to_string(),
        version,
        reason: e.to_string(),
    })
}

/// Like [`open`], for an encoding whose first byte may be [`MAGIC`] even
/// without an envelope (a struct starting with a number): the sealed reading
/// is tried first, then the unsealed one.
pub fn open_ambiguous<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, FormatError> {
    match open(what, bytes) {
        Ok(v) => Ok(v),
        Err(sealed) => match postcard::from_bytes(bytes) {
            Ok(v) => Ok(v),
            Err(_) => Err(sealed),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Thing {
        A(u32),
        B(String),
    }

    #[test]
    fn sealed_and_unversioned_bytes_read_and_newer_ones_are_refused() {
        let thing = Thing::B("x".into());
        let sealed = seal(&thing).unwrap();
        assert_eq!(&sealed[..2], &[MAGIC, VERSION]);
        assert_eq!(open::<Thing>("a thing", &sealed).unwrap(), thing);
        let old = postcard::to_allocvec(&Thing::A(7)).unwrap();
        assert_eq!(open::<Thing>("a thing", &old).unwrap(), Thing::A(7));
        let mut newer = sealed.clone();
        newer[1] = VERSION + 1;
        let err = open::<Thing>("object /services/default/web", &newer).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "object /services/default/web is stored in format version 2, newer than this build reads (up to 1)"
            ),
            "{err}"
        );
        let garbage = [MAGIC, VERSION, 0xff, 0xff];
        assert!(matches!(
            open::<Thing>("a thing", &garbage),
            Err(FormatError::Undecodable { .. })
        ));
    }
}
