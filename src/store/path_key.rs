//! How a file's path is stored: the `images.path` key.
//!
//! A path that is valid UTF-8 is stored as it is (every database written so far holds only
//! those). A path that is not (Linux allows any bytes but `/` and NUL in a name) is stored
//! losslessly as `bytes:` followed by the path with each byte that is not UTF-8 written as `\xNN`
//! and each backslash doubled. Stored paths are absolute, so they never start with `bytes:` and the
//! two forms cannot collide; [`key_path`] turns either back into the exact path.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The mark that starts the key of a path that is not valid UTF-8.
pub const BYTES_PREFIX: &str = "bytes:";

/// The stored key of `path`.
pub fn path_key(path: &Path) -> String {
    match path.to_str() {
        Some(s) => s.to_string(),
        None => format!("{BYTES_PREFIX}{}", escape(path.as_os_str().as_bytes())),
    }
}

/// The escaped form of a path's bytes (see the module docs), without the prefix.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// The path a stored key names. Keys that do not decode (not written by gaze) are taken as
/// plain paths.
pub fn key_path(key: &str) -> PathBuf {
    match key.strip_prefix(BYTES_PREFIX).and_then(unescape) {
        Some(bytes) => PathBuf::from(OsString::from_vec(bytes)),
        None => PathBuf::from(key),
    }
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1)? {
            b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b'x' => {
                let hex = std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_paths_are_stored_as_they_are() {
        for p in ["/photos/a.jpg", "/photos/café \\x41.jpg", "/x/日本.png"] {
            assert_eq!(path_key(Path::new(p)), p);
            assert_eq!(key_path(p), Path::new(p));
        }
    }

    #[test]
    fn other_paths_round_trip_without_colliding() {
        let raw = OsString::from_vec(b"/photos/caf\xE9 \\x41 \xFF\xFE.jpg".to_vec());
        let key = path_key(Path::new(&raw));
        assert_eq!(key, "bytes:/photos/caf\\xE9 \\\\x41 \\xFF\\xFE.jpg");
        assert_eq!(key_path(&key).as_os_str(), raw.as_os_str());
        // The UTF-8 path spelled like the escape stays distinct.
        let lookalike = Path::new("/photos/caf\\xE9 \\x41 \\xFF\\xFE.jpg");
        assert_ne!(path_key(lookalike), key);
    }
}
