//! What a retraining run learns from: a prepared set as it is, or a folder of labelled images
//! (`x.jpg` + `x.txt`, one caption per line) prepared into the tutorial's files, again only
//! when an image or caption file was added, removed or changed.
//!
//! The fingerprint of the data and of the settings tells the scheduler whether anything new
//! happened since the last run. Warm starts re-encode the captions with the active model's
//! word map, so a vocabulary that grew with new labels does not stop training (new words
//! become `<unk>`).

use std::path::{Path, PathBuf};

use super::RetrainOptions;
use crate::data::karpathy::{KarpathyDataset, KarpathyImage, KarpathySentence};
use crate::data::prepare::{prepare, NoProgress, PrepareConfig};
use crate::data::prepared::{base_name, PreparedFiles};
use crate::data::WordMap;
use crate::train::data::SplitData;
use crate::train::TrainData;

/// The dataset name of prepared labelled images.
pub const LABELLED: &str = "labelled";
const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Where the prepared files of a run are: (folder, base name), preparing labelled images
/// first when they changed. `log` receives a line about what was done.
pub fn locate(
    settings: &RetrainOptions,
    log: &mut dyn FnMut(&str),
) -> Result<(PathBuf, String), String> {
    if let Some(folder) = &settings.prepared {
        let base = settings
            .data_name
            .clone()
            .ok_or("retrain.prepared needs retrain.data_name")?;
        return Ok((folder.clone(), base));
    }
    let Some(images) = &settings.images else {
        return Err("no data: set retrain.prepared or retrain.images".into());
    };
    let out = settings.work_dir.join(LABELLED);
    let base = base_name(
        LABELLED,
        settings.captions_per_image,
        settings.min_word_freq,
    );
    let (items, digest) = scan_labelled(images)?;
    let manifest = out.join(format!("{base}.manifest"));
    let complete = PreparedFiles::new(&out, &base)
        .all()
        .iter()
        .all(|p| p.is_file());
    if complete && std::fs::read_to_string(&manifest).ok().as_deref() == Some(digest.as_str()) {
        log(&format!(
            "labelled images unchanged ({} images); using {}",
            items.len(),
            out.display()
        ));
        return Ok((out, base));
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let dataset = karpathy_from_labelled(&items)?;
    let json = out.join(format!("dataset_{LABELLED}.json"));
    std::fs::write(
        &json,
        serde_json::to_vec(&dataset).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", json.display()))?;
    let mut cfg = PrepareConfig::new(LABELLED, &json, images, &out);
    cfg.captions_per_image = settings.captions_per_image;
    cfg.min_word_freq = settings.min_word_freq;
    cfg.overwrite = true;
    cfg.threads = 1;
    let report =
        prepare(&cfg, &NoProgress).map_err(|e| format!("preparing {}: {e}", images.display()))?;
    for s in &report.skipped {
        log(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    std::fs::write(&manifest, &digest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    log(&format!(
        "prepared {} labelled images ({} words) into {}",
        report.images_written(),
        report.word_map_size,
        out.display()
    ));
    Ok((out, base))
}

/// A labelled image: its path relative to the folder and its captions.
struct Labelled {
    relative: String,
    captions: Vec<String>,
}

/// Lists labelled images (sorted) and a digest of their names, sizes and times.
fn scan_labelled(root: &Path) -> Result<(Vec<Labelled>, String), String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if meta.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    let mut items = Vec::new();
    for path in files {
        let txt = path.with_extension("txt");
        let Ok(text) = crate::files::read_text(&txt) else {
            continue; // not labelled (yet)
        };
        let captions: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if captions.is_empty() {
            continue;
        }
        let Some(relative) = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .map(String::from)
        else {
            continue;
        };
        for p in [&path, &txt] {
            let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            hasher.update(format!("{}\t{}\t{mtime}\n", p.display(), meta.len()).as_bytes());
        }
        items.push(Labelled { relative, captions });
    }
    Ok((items, hasher.finalize().to_hex().to_string()))
}

/// Words of a caption: lower case, split at anything not a letter, digit or apostrophe.
fn tokens(caption: &str) -> Vec<String> {
    caption
        .to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Karpathy JSON for labelled images: a tenth to val and a tenth to test by a hash of the
/// name (stable as images are added), at least one each once there are three images.
fn karpathy_from_labelled(items: &[Labelled]) -> Result<KarpathyDataset, String> {
    if items.len() < 3 {
        return Err(format!(
            "{} labelled images; at least 3 are needed (train, val and test)",
            items.len()
        ));
    }
    let mut splits: Vec<&str> = items
        .iter()
        .map(
            |it| match blake3::hash(it.relative.as_bytes()).as_bytes()[0] % 10 {
                0 => "val",
                1 => "test",
                _ => "train",
            },
        )
        .collect();
    for wanted in ["val", "test"] {
        if !splits.contains(&wanted) {
            if let Some(i) = splits.iter().position(|s| *s == "train") {
                splits[i] = wanted;
            }
        }
    }
    if !splits.contains(&"train") {
        return Err("no labelled image is left for training".into());
    }
    let images = items
        .iter()
        .zip(splits)
        .enumerate()
        .map(|(i, (it, split))| KarpathyImage {
            filepath: None,
            filename: it.relative.clone(),
            split: split.into(),
            sentences: it
                .captions
                .iter()
                .map(|c| KarpathySentence {
                    tokens: tokens(c),
                    raw: c.clone(),
                    imgid: Some(i as u64),
                    sentid: None,
                })
                .collect(),
            imgid: Some(i as u64),
            cocoid: None,
            sentids: None,
        })
        .collect();
    Ok(KarpathyDataset {
        images,
        dataset: Some(LABELLED.into()),
    })
}

/// A digest of the data a run would use and of the settings that shape it (not `enabled`
/// or `schedule`): equal digests mean a run would learn nothing new.
pub fn fingerprint(settings: &RetrainOptions) -> Result<String, String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(
        toml::to_string(&settings.shaping_section())
            .map_err(|e| e.to_string())?
            .as_bytes(),
    );
    let mut files: Vec<PathBuf> = Vec::new();
    if let (Some(folder), Some(base)) = (&settings.prepared, &settings.data_name) {
        files.extend(PreparedFiles::new(folder, base.clone()).all());
    }
    if let Some(images) = &settings.images {
        let (_, digest) = scan_labelled(images)?;
        hasher.update(digest.as_bytes());
    }
    if let Some(t) = &settings.train_config {
        files.push(t.clone());
    }
    for f in files {
        let stamp = std::fs::metadata(&f)
            .map(|m| {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                format!("{}:{mtime}", m.len())
            })
            .unwrap_or_else(|_| "missing".into());
        hasher.update(format!("{}\t{stamp}\n", f.display()).as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Re-encodes every caption of `data` with `target`'s word ids (words it lacks become
/// `<unk>`) and makes `target` the data's word map. Returns how many tokens became `<unk>`.
pub fn remap_to(data: &mut TrainData, target: &WordMap) -> Result<usize, String> {
    if data.word_map.words() == target.words() {
        return Ok(0);
    }
    let source = data.word_map.clone();
    let mut unknown = 0;
    let mut map = |split: &mut SplitData| -> Result<(), String> {
        for cap in &mut split.captions {
            for t in cap.iter_mut() {
                *t = if *t == source.start {
                    target.start
                } else if *t == source.end {
                    target.end
                } else if *t == source.pad {
                    target.pad
                } else {
                    let word = source.word(*t).unwrap_or("<unk>");
                    match target.id(word) {
                        Some(id) => id,
                        None => {
                            unknown += 1;
                            target.unk.ok_or_else(|| {
                                format!(
                                    "the word {word:?} is not in the active model's word map, \
                                     which has no <unk>"
                                )
                            })?
                        }
                    }
                };
            }
        }
        Ok(())
    };
    map(&mut data.train)?;
    map(&mut data.val)?;
    data.word_map = target.clone();
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_splits_of_labelled_images() {
        assert_eq!(
            tokens("A red Ball, on the grass."),
            ["a", "red", "ball", "on", "the", "grass"]
        );
        let items: Vec<Labelled> = (0..5)
            .map(|i| Labelled {
                relative: format!("img{i}.jpg"),
                captions: vec!["a cat".into()],
            })
            .collect();
        let ds = karpathy_from_labelled(&items).unwrap();
        for split in ["train", "val", "test"] {
            assert!(ds.images.iter().any(|im| im.split == split), "{split}");
        }
        assert!(karpathy_from_labelled(&items[..2]).is_err());
    }

    #[test]
    fn remapping_keeps_words_and_marks_new_ones_unknown() {
        use std::sync::Arc;
        let src = WordMap::from_counts([("a", 3), ("cat", 3), ("zebra", 3)], 0);
        let dst = WordMap::from_counts([("cat", 3), ("a", 3)], 0);
        let encode = |wm: &WordMap, words: &[&str]| {
            let mut c = vec![wm.start];
            c.extend(words.iter().map(|w| wm.id(w).unwrap()));
            c.push(wm.end);
            c.push(wm.pad);
            c
        };
        struct NoImages;
        impl crate::train::data::ImageStore for NoImages {
            fn len(&self) -> usize {
                1
            }
            fn side(&self) -> usize {
                1
            }
            fn read_chw(&self, _: usize, _: &mut [u8]) -> Result<(), crate::data::DataError> {
                Ok(())
            }
        }
        let split = |words: &[&str]| SplitData {
            images: Arc::new(NoImages),
            captions: vec![encode(&src, words)],
            lengths: vec![words.len() + 2],
            captions_per_image: 1,
        };
        let mut data = TrainData {
            word_map: src.clone(),
            train: split(&["a", "zebra"]),
            val: split(&["a", "cat"]),
            data_name: "t".into(),
        };
        assert_eq!(remap_to(&mut data, &dst).unwrap(), 1);
        assert_eq!(data.train.captions[0], {
            let mut c = vec![dst.start, dst.id("a").unwrap(), dst.unk.unwrap(), dst.end];
            c.push(dst.pad);
            c
        });
        assert_eq!(data.val.captions[0], encode(&dst, &["a", "cat"]));
        assert_eq!(data.word_map.words(), dst.words());
    }
}
