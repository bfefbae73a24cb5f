//! How a file's path is stored: the `images.path` key.
//!
//! A path that is valid UTF-8 is stored as it is (every database written so far holds only
//! those). A path that is not (Linux allows any bytes but `/` and NUL in a name) is stored
//! losslessly as `bytes:` followed by the path with each byte that is not UTF-8 written as `\xNN`
//! and each backslash doubled. Stored paths are absolute, so they never start with `bytes:` and the
//! two forms cannot collide; [`key_path`] turns either back into the exact path.

use std::ffi::{OsStr, OsString};
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

/// The key prefixes of everything under the folder keyed `key`: its children's keys as they
/// are, and as they are when their names are not UTF-8 (escaped, see the module docs).
pub fn folder_prefixes(key: &str) -> (String, String) {
    let prefix = format!("{}/", key.trim_end_matches('/'));
    let escaped = match key.strip_prefix(BYTES_PREFIX) {
        Some(_) => prefix.clone(),
        None => format!("{BYTES_PREFIX}{}", escape(prefix.as_bytes())),
    };
    (prefix, escaped)
}

/// Named roots: a shared folder recorded by name and relative path, so machines that mount it
/// at different places agree on every image's key.
///
/// A file under the root `photos` (mounted here at `/mnt/photos`) is keyed
/// `photos:/2024/beach.jpg`; a worker that mounts the share at `/media/nas` maps the same key to
/// `/media/nas/2024/beach.jpg` through its own `[watch] roots`. Keys of files under no root stay
/// absolute paths, so a store written without roots reads as before. A root's name is letters,
/// digits, `_`, `-` and `.`, and not `bytes` (the mark of [`BYTES_PREFIX`]); absolute paths start
/// with `/`, so the two forms never collide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// (name, folder), longest folder first so nested roots resolve to the innermost.
    roots: Vec<(String, PathBuf)>,
}

/// A key naming a root this machine has no mapping for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("root {root:?} is not mapped on this machine (add it to [watch] roots), for {relative}")]
pub struct UnmappedRoot {
    pub root: String,
    pub relative: String,
}

impl Roots {
    /// Checks each name; the folders are used as given (make them absolute first).
    pub fn new(roots: impl IntoIterator<Item = (String, PathBuf)>) -> Result<Roots, String> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for (name, folder) in roots {
            let ok = !name.is_empty()
                && name != "bytes"
                // Images captioned over HTTP with `store=true` are recorded as `upload:/...`.
                && name != "upload"
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return Err(format!(
                    "root name {name:?}: use letters, digits, '_', '-' and '.' (and not \"bytes\" or \"upload\")"
                ));
            }
            if !folder.is_absolute() {
                return Err(format!(
                    "root {name:?}: {} is not absolute",
                    folder.display()
                ));
            }
            if out.iter().any(|(n, _)| *n == name) {
                return Err(format!("root {name:?} is named twice"));
            }
            out.push((name, folder));
        }
        out.sort_by_key(|(_, f)| std::cmp::Reverse(f.as_os_str().len()));
        Ok(Roots { roots: out })
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The stored key of `path`: under a root, `name:/relative`; elsewhere [`path_key`].
    pub fn key(&self, path: &Path) -> String {
        for (name, folder) in &self.roots {
            if let Ok(rel) = path.strip_prefix(folder) {
                let mut named = OsString::from(format!("{name}:/"));
                named.push(rel.as_os_str());
                return path_key(Path::new(&named));
            }
        }
        path_key(path)
    }

    /// The file a key names on this machine.
    pub fn path(&self, key: &str) -> Result<PathBuf, UnmappedRoot> {
        let path = key_path(key);
        let bytes = path.as_os_str().as_bytes();
        let Some(colon) = root_mark(bytes) else {
            return Ok(path);
        };
        let (name, rel) = (
            String::from_utf8_lossy(&bytes[..colon]).into_owned(),
            OsStr::from_bytes(&bytes[colon + 2..]),
        );
        match self.roots.iter().find(|(n, _)| *n == name) {
            Some((_, folder)) => Ok(folder.join(rel)),
            None => Err(UnmappedRoot {
                root: name,
                relative: rel.to_string_lossy().into_owned(),
            }),
        }
    }
}

/// Where `name:/` ends the root's name in a key's bytes, if the key is under a named root.
fn root_mark(bytes: &[u8]) -> Option<usize> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    let named = colon > 0
        && bytes[..colon]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && bytes.get(colon + 1) == Some(&b'/');
    named.then_some(colon)
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

    #[test]
    fn named_roots_map_between_machines() {
        let here = Roots::new([
            ("photos".to_string(), PathBuf::from("/mnt/photos")),
            ("inner".to_string(), PathBuf::from("/mnt/photos/inner")),
        ])
        .unwrap();
        let there = Roots::new([("photos".to_string(), PathBuf::from("/media/nas"))]).unwrap();
        let key = here.key(Path::new("/mnt/photos/2024/beach.jpg"));
        assert_eq!(key, "photos:/2024/beach.jpg");
        assert_eq!(
            there.path(&key).unwrap(),
            PathBuf::from("/media/nas/2024/beach.jpg")
        );
        assert_eq!(here.key(Path::new("/mnt/photos")), "photos:/");
        assert_eq!(
            here.key(Path::new("/mnt/photos/inner/a.jpg")),
            "inner:/a.jpg"
        );
        // Outside every root: the absolute path, as without roots.
        assert_eq!(here.key(Path::new("/srv/x.jpg")), "/srv/x.jpg");
        assert_eq!(
            there.path("/srv/x.jpg").unwrap(),
            PathBuf::from("/srv/x.jpg")
        );
        let err = there.path("inner:/a.jpg").unwrap_err();
        assert_eq!(
            (err.root.as_str(), err.relative.as_str()),
            ("inner", "a.jpg")
        );
        // Names that are not UTF-8 survive the trip.
        let odd = Path::new(OsStr::from_bytes(b"/mnt/photos/caf\xe9.jpg"));
        let key = here.key(odd);
        assert!(key.starts_with(BYTES_PREFIX), "{key}");
        assert_eq!(
            there.path(&key).unwrap().as_os_str().as_bytes(),
            b"/media/nas/caf\xe9.jpg"
        );
        for bad in ["", "bytes", "a b", "x:y"] {
            assert!(
                Roots::new([(bad.to_string(), PathBuf::from("/x"))]).is_err(),
                "{bad}"
            );
        }
        assert!(Roots::new([("r".to_string(), PathBuf::from("rel"))]).is_err());
    }
}
