//! Opening files that users (or whoever can write into a watched folder) name.
//!
//! A path is only a name: between the moment a file is seen and the moment it is read it can
//! become a named pipe (whose `open` blocks until a writer appears), a link to `/dev/zero` (which
//! never ends), a device or a socket. Every reader of user files therefore goes through
//! [`open_regular`]:
//! - the open never blocks (`O_NONBLOCK`; it has no effect on regular files), and with
//!   `follow_symlinks` off the last component may not be a symbolic link (`O_NOFOLLOW`);
//! - the opened handle, not the path, is checked to be a regular file, so a swap after any
//!   earlier check cannot slip through;
//! - [`read_limited`] reads at most `limit + 1` bytes, whatever the file claims, so a file that
//!   grows while it is read cannot take more memory than the limit.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a file could not be opened or read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: is a symbolic link, and following links is off (watch.follow_symlinks)")]
    Symlink { path: PathBuf },
    #[error("{path}: not a regular file (it is {kind}); refusing to read it")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{path}: the file is {size} bytes, over the limit of {limit} bytes{}",
        .setting.map(|s| format!(" ({s})")).unwrap_or_default()
    )]
    TooLarge {
        path: PathBuf,
        /// What was seen: the size the file reported, or at least `limit + 1` when it grew.
        size: u64,
        limit: u64,
        /// The setting behind the limit, e.g. `limits.max_file_bytes`.
        setting: Option<&'static str>,
    },
}

impl FileError {
    /// True when the file does not exist (it vanished between being seen and being read).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The message without the path (for stores that keep the path beside the message).
    pub fn reason(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        full.strip_prefix(&prefix).unwrap_or(&full).to_string()
    }

    pub fn path(&self) -> &Path {
        match self {
            FileError::Io { path, .. }
            | FileError::Symlink { path }
            | FileError::NotRegular { path, .. }
            | FileError::TooLarge { path, .. } => path,
        }
    }
}

/// What kind of non-regular file a file type is, in words.
pub fn kind_of(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Opens `path` for reading without blocking and checks, on the opened handle, that it is a
/// regular file. With `follow_symlinks` false a symbolic link as the last component is refused.
pub fn open_regular(path: &Path, follow_symlinks: bool) -> Result<(File, Metadata), FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow_symlinks {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if !follow_symlinks && e.raw_os_error() == Some(libc::ELOOP) => {
            // O_NOFOLLOW reports a final symbolic link as ELOOP; a real loop has the same code,
            // so look before saying which.
            return match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => Err(FileError::Symlink {
                    path: path.to_path_buf(),
                }),
                _ => Err(FileError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }),
            };
        }
        Err(source) => {
            return Err(FileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let meta = file.metadata().map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    Ok((file, meta))
}

/// Reads a whole regular file of at most `limit` bytes (see [`open_regular`]). `setting` names
/// the setting behind the limit in the error, e.g. `Some("limits.max_file_bytes")`.
pub fn read_limited(
    path: &Path,
    limit: u64,
    follow_symlinks: bool,
    setting: Option<&'static str>,
) -> Result<(Vec<u8>, Metadata), FileError> {
    let (file, meta) = open_regular(path, follow_symlinks)?;
    let too_large = |size: u64| FileError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
        setting,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    // The size is a hint only: the file may grow (or shrink) while it is read.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok((bytes, meta))
}

/// [`open_regular`] (links followed) as a plain `io::Result`, for readers whose errors already
/// name the path: a pipe or device gives an error of kind `InvalidInput` saying what it is.
pub fn open_file(path: &Path) -> std::io::Result<File> {
    match open_regular(path, true) {
        Ok((file, _)) => Ok(file),
        Err(FileError::Io { source, .. }) => Err(source),
        Err(e) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            e.reason(),
        )),
    }
}

/// Reads a whole regular file (models, word maps, JSON: no size limit, but never a pipe or
/// a device), as `std::fs::read` would.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = open_file(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text, as `std::fs::read_to_string` would.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_file(path)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// The BLAKE3 hash of a file's bytes, as lowercase hex: how gaze identifies a model file, a
/// word map or an image wherever one is recorded or checked. Streams the file, so a large model
/// is never held in memory just to be hashed.
pub fn content_hash(path: &Path) -> std::io::Result<String> {
    let mut file = open_file(path)?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// The default limit for files a user names on the command line (images, not models).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn content_hash_is_blake3_of_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            content_hash(&path).unwrap(),
            blake3::hash(&bytes).to_hex().to_string()
        );
        assert!(content_hash(&dir.path().join("missing")).is_err());
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn regular_files_read_whole_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_limited(&p, 5, false, None).unwrap().0, b"hello");
        let e = read_limited(&p, 4, false, Some("limits.max_file_bytes")).unwrap_err();
        assert!(
            matches!(
                e,
                FileError::TooLarge {
                    size: 5,
                    limit: 4,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("limits.max_file_bytes"), "{e}");
        let missing = read_limited(&dir.path().join("nope"), 10, false, None).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipe.jpg");
        mkfifo(&p);
        let t = Instant::now();
        for follow in [false, true] {
            let e = read_limited(&p, 1 << 20, follow, None).unwrap_err();
            assert!(
                matches!(e, FileError::NotRegular { kind, .. } if kind.contains("FIFO")),
                "{e}"
            );
            assert!(e.to_string().contains("pipe.jpg"), "{e}");
        }
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn links_to_devices_are_refused_and_links_only_followed_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.jpg");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_limited(&zero, 1 << 20, false, None).unwrap_err();
        assert!(matches!(e, FileError::Symlink { .. }), "{e}");
        let e = read_limited(&zero, 1 << 20, true, None).unwrap_err();
        assert!(
            matches!(
                e,
                FileError::NotRegular {
                    kind: "a character device",
                    ..
                }
            ),
            "{e}"
        );
        let target = dir.path().join("t.bin");
        std::fs::write(&target, b"abc").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            read_limited(&link, 10, false, None),
            Err(FileError::Symlink { .. })
        ));
        assert_eq!(read_limited(&link, 10, true, None).unwrap().0, b"abc");
        assert!(matches!(
            read_limited(dir.path(), 10, true, None),
            Err(FileError::NotRegular {
                kind: "a folder",
                ..
            })
        ));
    }
}
