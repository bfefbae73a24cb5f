//! Pretrained word embeddings from a GloVe-format text file (`word v1 v2 ... vD` per line).
//!
//! Rows of the embedding matrix for words found in the file take its vectors; the others keep
//! their (random) initialisation, as the tutorial suggests for `<start>` and friends.

use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::data::WordMap;

#[derive(Debug, thiserror::Error)]
pub enum GloveError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {reason}")]
    Format {
        path: std::path::PathBuf,
        line: usize,
        reason: String,
    },
}

/// Overwrites rows of `embedding` (`vocab x dim`, row-major) with the file's vectors.
/// Returns how many words of the word map were found.
pub fn load_into(
    path: &Path,
    word_map: &WordMap,
    embedding: &mut [f32],
    dim: usize,
) -> Result<usize, GloveError> {
    let file = crate::files::open_file(path).map_err(|source| GloveError::Io {
        path: path.into(),
        source,
    })?;
    let mut found = vec![false; word_map.len()];
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| GloveError::Io {
            path: path.into(),
            source,
        })?;
        let mut parts = line.split_whitespace();
        let Some(word) = parts.next() else { continue };
        let Some(id) = word_map.id(word) else {
            continue;
        };
        let values: Vec<f32> = parts
            .map(|v| v.parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|e| GloveError::Format {
                path: path.into(),
                line: i + 1,
                reason: format!("{word:?}: {e}"),
            })?;
        if values.len() != dim {
            return Err(GloveError::Format {
                path: path.into(),
                line: i + 1,
                reason: format!(
                    "{word:?} has {} values but the embedding has {dim} dimensions (set --emb-dim {})",
                    values.len(),
                    values.len()
                ),
            });
        }
        embedding[id as usize * dim..(id as usize + 1) * dim].copy_from_slice(&values);
        found[id as usize] = true;
    }
    Ok(found.iter().filter(|&&f| f).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_known_words_and_checks_dimensions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("glove.txt");
        std::fs::write(&path, "dog 1 2 3\nzebra 9 9 9\ncat 4 5 6\n").unwrap();
        let wm = WordMap::from_counts([("dog", 9), ("cat", 9)], 5);
        let mut emb = vec![0f32; wm.len() * 3];
        assert_eq!(load_into(&path, &wm, &mut emb, 3).unwrap(), 2);
        assert_eq!(&emb[3..6], &[1.0, 2.0, 3.0]);
        assert_eq!(&emb[6..9], &[4.0, 5.0, 6.0]);
        let e = load_into(&path, &wm, &mut emb, 4).unwrap_err().to_string();
        assert!(
            e.contains("glove.txt, line 1") && e.contains("--emb-dim 3"),
            "{e}"
        );
    }
}
