//! The tutorial's word map: `WORDMAP_{base}.json`, a JSON object word -> id.
//!
//! Words with frequency above `min_word_freq` get ids 1..=n in order of first appearance, then
//! `<unk>` = n+1, `<start>` = n+2, `<end>` = n+3, and `<pad>` = 0. The file lists them in that
//! insertion order (words, `<unk>`, `<start>`, `<end>`, `<pad>`).

use std::collections::HashMap;
use std::path::Path;

use super::DataError;

pub const PAD: &str = "<pad>";
pub const START: &str = "<start>";
pub const END: &str = "<end>";
pub const UNK: &str = "<unk>";

/// A validated word map: ids are exactly `0..len`, and `<start>`, `<end>`, `<pad>` exist.
#[derive(Debug, Clone, PartialEq)]
pub struct WordMap {
    /// Words indexed by id.
    words: Vec<String>,
    ids: HashMap<String, u32>,
    pub start: u32,
    pub end: u32,
    pub pad: u32,
    pub unk: Option<u32>,
}

impl WordMap {
    /// Builds a word map from (word, id) pairs, checking that ids cover `0..len` once each and
    /// that the special tokens are present. `origin` names the source in error messages.
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (String, u32)>,
        origin: &Path,
    ) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::WordMap {
            path: origin.to_path_buf(),
            reason,
        };
        let pairs: Vec<(String, u32)> = pairs.into_iter().collect();
        let n = pairs.len();
        if n == 0 {
            return Err(bad("it is empty".into()));
        }
        let mut words: Vec<Option<String>> = vec![None; n];
        let mut ids = HashMap::with_capacity(n);
        for (word, id) in pairs {
            let slot = words.get_mut(id as usize).ok_or_else(|| {
                bad(format!(
                    "id {id} of {word:?} is outside 0..{n} (ids must be 0..number of words)"
                ))
            })?;
            if let Some(other) = slot {
                return Err(bad(format!(
                    "id {id} is used by both {other:?} and {word:?}"
                )));
            }
            *slot = Some(word.clone());
            ids.insert(word, id);
        }
        let words: Vec<String> = words
            .into_iter()
            .map(|w| w.expect("every slot filled: n distinct ids in 0..n"))
            .collect();
        let need = |tok: &str| {
            ids.get(tok)
                .copied()
                .ok_or_else(|| bad(format!("it has no {tok} token (a tutorial word map has <start>, <end>, <pad> and <unk>)")))
        };
        let start = need(START)?;
        let end = need(END)?;
        let pad = need(PAD)?;
        let unk = ids.get(UNK).copied();
        Ok(WordMap {
            words,
            ids,
            start,
            end,
            pad,
            unk,
        })
    }

    /// Reads a `WORDMAP_*.json` file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let bytes = crate::files::read_file(path).map_err(|e| DataError::io(path, e))?;
        Self::from_json_bytes(&bytes, path)
    }

    pub fn from_json_bytes(bytes: &[u8], origin: &Path) -> Result<Self, DataError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| DataError::Json {
                path: origin.to_path_buf(),
                source,
            })?;
        Self::from_json_value(&value, origin)
    }

    pub fn from_json_value(value: &serde_json::Value, origin: &Path) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::WordMap {
            path: origin.to_path_buf(),
            reason,
        };
        let obj = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object mapping words to ids".into()))?;
        let mut pairs = Vec::with_capacity(obj.len());
        for (word, id) in obj {
            let id = id
                .as_u64()
                .filter(|&v| v <= u32::MAX as u64)
                .ok_or_else(|| {
                    bad(format!(
                        "the id of {word:?} is {id}, not a non-negative integer"
                    ))
                })?;
            pairs.push((word.clone(), id as u32));
        }
        Self::from_pairs(pairs, origin)
    }

    /// Builds the tutorial's word map from words in order of first appearance with their
    /// counts: words with count > `min_word_freq` get ids 1.., then `<unk>`, `<start>`, `<end>`,
    /// and `<pad>` = 0.
    ///
    /// A token spelled like a special token (`<unk>`, ...) is left out: the tutorial would
    /// overwrite its id and produce a map with two words on one id.
    pub fn from_counts<'a>(
        counts: impl IntoIterator<Item = (&'a str, usize)>,
        min_word_freq: usize,
    ) -> Self {
        let mut pairs: Vec<(String, u32)> = Vec::new();
        for (word, count) in counts {
            if count > min_word_freq && ![UNK, START, END, PAD].contains(&word) {
                pairs.push((word.to_string(), pairs.len() as u32 + 1));
            }
        }
        let n = pairs.len() as u32;
        pairs.push((UNK.into(), n + 1));
        pairs.push((START.into(), n + 2));
        pairs.push((END.into(), n + 3));
        pairs.push((PAD.into(), 0));
        Self::from_pairs(pairs, Path::new("<built word map>")).expect("a built word map is valid")
    }

    /// Number of entries, which is the decoder's vocabulary size.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn id(&self, word: &str) -> Option<u32> {
        self.ids.get(word).copied()
    }

    /// The id of `word`, or `<unk>`'s id when the word is unknown.
    pub fn id_or_unk(&self, word: &str) -> Option<u32> {
        self.id(word).or(self.unk)
    }

    pub fn word(&self, id: u32) -> Option<&str> {
        self.words.get(id as usize).map(String::as_str)
    }

    /// True for `<start>`, `<end>` and `<pad>`: tokens that are never part of a caption's text.
    pub fn is_special(&self, id: u32) -> bool {
        id == self.start || id == self.end || id == self.pad
    }

    /// The words of a token sequence with `<start>`, `<end>` and `<pad>` removed.
    pub fn decode(&self, tokens: &[u32]) -> Vec<String> {
        tokens
            .iter()
            .filter(|&&t| !self.is_special(t))
            .map(|&t| self.word(t).unwrap_or(UNK).to_string())
            .collect()
    }

    /// The entries in the tutorial's file order: real words by id, then `<unk>`, `<start>`,
    /// `<end>`, and `<pad>` last. Maps read from elsewhere keep id order with `<pad>` last.
    pub fn entries_in_file_order(&self) -> Vec<(&str, u32)> {
        let mut out: Vec<(&str, u32)> = self
            .words
            .iter()
            .enumerate()
            .filter(|(id, _)| *id as u32 != self.pad)
            .map(|(id, w)| (w.as_str(), id as u32))
            .collect();
        out.push((self.words[self.pad as usize].as_str(), self.pad));
        out
    }

    /// JSON in the layout Python's `json.dump(word_map, f)` writes (`{"a": 1, "b": 2}`, non-ASCII
    /// escaped as `\uXXXX`), byte for byte.
    pub fn to_json_string(&self) -> String {
        let mut s = String::with_capacity(self.words.len() * 12);
        s.push('{');
        for (i, (word, id)) in self.entries_in_file_order().into_iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            super::pyjson::push_str(&mut s, word);
            s.push_str(": ");
            s.push_str(&id.to_string());
        }
        s.push('}');
        s
    }

    /// Words by id (index = id).
    pub fn words(&self) -> &[String] {
        &self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_tutorial_layout() {
        let wm = WordMap::from_counts([("a", 9), ("rare", 2), ("dog", 6)], 5);
        assert_eq!(wm.id("a"), Some(1));
        assert_eq!(wm.id("dog"), Some(2));
        assert_eq!(wm.id("rare"), None);
        assert_eq!(wm.unk, Some(3));
        assert_eq!((wm.start, wm.end, wm.pad), (4, 5, 0));
        assert_eq!(wm.len(), 6);
        assert_eq!(
            wm.to_json_string(),
            r#"{"a": 1, "dog": 2, "<unk>": 3, "<start>": 4, "<end>": 5, "<pad>": 0}"#
        );
        let back =
            WordMap::from_json_bytes(wm.to_json_string().as_bytes(), Path::new("x")).unwrap();
        assert_eq!(back, wm);
        // json.dumps({"café": 1, ...}) escapes non-ASCII; special-looking tokens are left out.
        assert_eq!(wm.decode(&[4, 1, 2, 3, 5, 0]), vec!["a", "dog", "<unk>"]);
        let accented = WordMap::from_counts([("café", 2), ("<end>", 9)], 1);
        let json = accented.to_json_string();
        assert_eq!(
            json,
            r#"{"caf\u00e9": 1, "<unk>": 2, "<start>": 3, "<end>": 4, "<pad>": 0}"#
        );
        let back = WordMap::from_json_bytes(json.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(back.id("café"), Some(1));
    }

    #[test]
    fn rejects_bad_maps() {
        let p = Path::new("WORDMAP_x.json");
        let err = WordMap::from_json_bytes(br#"{"a": 1, "<end>": 2, "<pad>": 0}"#, p).unwrap_err();
        assert!(err.to_string().contains("<start>"), "{err}");
        let err = WordMap::from_json_bytes(br#"{"a": 1, "b": 1, "<pad>": 0}"#, p).unwrap_err();
        assert!(err.to_string().contains("used by both"), "{err}");
        let err = WordMap::from_json_bytes(br#"{"a": 7, "<pad>": 0}"#, p).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        let err = WordMap::from_json_bytes(br#"[1, 2]"#, p).unwrap_err();
        assert!(err.to_string().contains("WORDMAP_x.json"), "{err}");
    }
}
