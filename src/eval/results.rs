//! COCO-format results (`[{"image_id": ..., "caption": "..."}]`, as `gaze eval --results-dir`
//! and other captioners write them) matched to a Karpathy split and scored.
//!
//! Image ids are matched to the split's Karpathy `cocoid` when every image of the split has one
//! (COCO), otherwise to `imgid` (Flickr files), or to the image's position among the split's
//! images; the match says which. References are each image's Karpathy `tokens` (the sentences'
//! `raw` text is not read), scored by [`metrics::score_karpathy`].
//!
//! Policy for mismatched inputs:
//! - an `image_id` that appears twice, or that is not an image of the split, is an error:
//!   nothing is scored, since it usually means the wrong split, dataset or id field;
//! - images of the split that have no result are left out and listed in
//!   [`Matched::missing`]; the intersection is scored (CIDEr-D's idf then comes from that
//!   subset), and the caller decides whether that is a failure.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::karpathy::{KarpathyDataset, KarpathyImage, Split};
use crate::metrics::{self, CorpusMetrics, CorpusScores, ImageMetrics, MetricsError};

/// Why results could not be read, matched or scored.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected a JSON array of {{\"image_id\": integer, \"caption\": string}}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the Karpathy file has no {split} images")]
    NoImages { split: Split },
    #[error("some {split} images have no {field}, so results cannot be matched by it")]
    FieldMissing { split: Split, field: &'static str },
    #[error("some {split} images have neither a cocoid nor an imgid, so results cannot be matched to them (--image-ids index matches by position)")]
    NoIds { split: Split },
    #[error("{} image_id(s) appear more than once in the results: {}", .ids.len(), preview(.ids))]
    Duplicates { ids: Vec<u64> },
    #[error("{} image_id(s) are not {split} images (matched against {}): {}; check --split, the dataset and --image-ids", .ids.len(), .field.describe(), preview(.ids))]
    NotInSplit {
        split: Split,
        field: IdField,
        ids: Vec<u64>,
    },
    #[error("{split} image {} {id} ({filename}) has no reference sentences", .field.describe())]
    NoReferences {
        split: Split,
        field: IdField,
        id: u64,
        filename: String,
    },
    #[error("no result matches a {split} image")]
    NothingMatched { split: Split },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// What the results' `image_id` is to be matched against: `Auto` is `cocoid` when every image
/// of the split has one, else `imgid`; `Index` is the image's position among the split's
/// images in the Karpathy file. (`gaze score --image-ids` takes these names.)
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IdChoice {
    Auto,
    Cocoid,
    Imgid,
    Index,
}

/// Which Karpathy field the results' `image_id` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdField {
    Cocoid,
    Imgid,
    Index,
}

impl IdField {
    /// The field in words, as messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            IdField::Cocoid => "cocoid",
            IdField::Imgid => "imgid",
            IdField::Index => "index in the split",
        }
    }
}

/// One entry of a results file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ResultEntry {
    pub image_id: u64,
    pub caption: String,
}

/// Reads a COCO-format results file.
pub fn read_results(path: &Path) -> Result<Vec<ResultEntry>, ResultsError> {
    let bytes = crate::files::read_file(path).map_err(|source| ResultsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ResultsError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Results paired with the split's references, in split order.
#[derive(Debug)]
pub struct Matched {
    pub id_field: IdField,
    pub image_ids: Vec<u64>,
    /// Each reference's tokens joined by spaces: the text the coco columns tokenise.
    pub references: Vec<Vec<String>>,
    /// Each reference's Karpathy tokens, as NLTK BLEU gets them.
    pub reference_tokens: Vec<Vec<Vec<String>>>,
    pub hypotheses: Vec<String>,
    /// Images of the split with no result.
    pub missing: Vec<u64>,
}

impl Matched {
    /// Scores the matched captions; returns the scores and the seconds scoring took.
    pub fn score(&self) -> Result<(CorpusScores, f64), ResultsError> {
        let started = Instant::now();
        let scores = metrics::score_karpathy(&self.reference_tokens, &self.hypotheses)?;
        Ok((scores, started.elapsed().as_secs_f64()))
    }
}

/// Pairs results with the split's images (see the module docs for the policy).
pub fn match_results(
    dataset: &KarpathyDataset,
    split: Split,
    ids: IdChoice,
    results: &[ResultEntry],
) -> Result<Matched, ResultsError> {
    let images: Vec<&KarpathyImage> = dataset
        .images
        .iter()
        .filter(|im| Split::from_karpathy(&im.split) == Some(split))
        .collect();
    if images.is_empty() {
        return Err(ResultsError::NoImages { split });
    }
    let id_field = id_field(&images, split, ids)?;
    let id_of = |position: usize, im: &KarpathyImage| match id_field {
        IdField::Cocoid => im.cocoid.unwrap_or_default(),
        IdField::Imgid => im.imgid.unwrap_or_default(),
        IdField::Index => position as u64,
    };

    let mut captions: HashMap<u64, &str> = HashMap::with_capacity(results.len());
    let mut duplicates = Vec::new();
    for r in results {
        if captions.insert(r.image_id, &r.caption).is_some() {
            duplicates.push(r.image_id);
        }
    }
    if !duplicates.is_empty() {
        duplicates.sort_unstable();
        duplicates.dedup();
        return Err(ResultsError::Duplicates { ids: duplicates });
    }
    let split_ids: HashSet<u64> = images
        .iter()
        .enumerate()
        .map(|(position, im)| id_of(position, im))
        .collect();
    let mut unknown: Vec<u64> = captions
        .keys()
        .copied()
        .filter(|id| !split_ids.contains(id))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(ResultsError::NotInSplit {
            split,
            field: id_field,
            ids: unknown,
        });
    }

    let mut matched = Matched {
        id_field,
        image_ids: Vec::new(),
        references: Vec::new(),
        reference_tokens: Vec::new(),
        hypotheses: Vec::new(),
        missing: Vec::new(),
    };
    for (position, im) in images.into_iter().enumerate() {
        let id = id_of(position, im);
        let Some(caption) = captions.get(&id) else {
            matched.missing.push(id);
            continue;
        };
        if im.sentences.is_empty() {
            return Err(ResultsError::NoReferences {
                split,
                field: id_field,
                id,
                filename: im.filename.clone(),
            });
        }
        matched.image_ids.push(id);
        matched
            .references
            .push(im.sentences.iter().map(|s| s.tokens.join(" ")).collect());
        matched
            .reference_tokens
            .push(im.sentences.iter().map(|s| s.tokens.clone()).collect());
        matched.hypotheses.push(caption.to_string());
    }
    if matched.image_ids.is_empty() {
        return Err(ResultsError::NothingMatched { split });
    }
    Ok(matched)
}

/// The field `ids` asks for, if every image of the split has it.
fn id_field(
    images: &[&KarpathyImage],
    split: Split,
    ids: IdChoice,
) -> Result<IdField, ResultsError> {
    let all_cocoids = images.iter().all(|im| im.cocoid.is_some());
    let all_imgids = images.iter().all(|im| im.imgid.is_some());
    Ok(match ids {
        IdChoice::Index => IdField::Index,
        IdChoice::Cocoid if all_cocoids => IdField::Cocoid,
        IdChoice::Imgid if all_imgids => IdField::Imgid,
        IdChoice::Auto if all_cocoids => IdField::Cocoid,
        IdChoice::Auto if all_imgids => IdField::Imgid,
        IdChoice::Cocoid => {
            return Err(ResultsError::FieldMissing {
                split,
                field: "cocoid",
            })
        }
        IdChoice::Imgid => {
            return Err(ResultsError::FieldMissing {
                split,
                field: "imgid",
            })
        }
        IdChoice::Auto => return Err(ResultsError::NoIds { split }),
    })
}

/// At most five ids, then "...".
fn preview(ids: &[u64]) -> String {
    let mut s: Vec<String> = ids.iter().take(5).map(u64::to_string).collect();
    if ids.len() > 5 {
        s.push("...".into());
    }
    s.join(", ")
}

/// One image's scores in the JSON report.
#[derive(Serialize)]
pub struct ImageReport<'a> {
    pub image_id: u64,
    #[serde(flatten)]
    pub metrics: &'a ImageMetrics,
}

/// Every metric at full precision, with stable keys (`gaze score --format json`).
#[derive(Serialize)]
pub struct ScoreReport<'a> {
    pub results: &'a Path,
    pub karpathy_json: &'a Path,
    pub split: String,
    pub id_field: IdField,
    pub images_scored: usize,
    pub images_missing: &'a [u64],
    pub corpus: &'a CorpusMetrics,
    pub nltk_bleu_integer_zero: bool,
    pub nltk_bleu_zero_count_orders: &'a [usize],
    pub not_computed: &'a [&'static str],
    pub scoring_seconds: f64,
    pub per_image: Vec<ImageReport<'a>>,
}

impl<'a> ScoreReport<'a> {
    /// The report of `matched` scored as `scores` in `seconds`.
    pub fn new(
        results: &'a Path,
        karpathy_json: &'a Path,
        split: Split,
        matched: &'a Matched,
        scores: &'a CorpusScores,
        seconds: f64,
    ) -> Self {
        ScoreReport {
            results,
            karpathy_json,
            split: split.to_string().to_lowercase(),
            id_field: matched.id_field,
            images_scored: scores.images,
            images_missing: &matched.missing,
            corpus: &scores.corpus,
            nltk_bleu_integer_zero: scores.nltk_bleu_integer_zero,
            nltk_bleu_zero_count_orders: &scores.nltk_bleu_zero_count_orders,
            not_computed: &scores.not_computed,
            scoring_seconds: seconds,
            per_image: matched
                .image_ids
                .iter()
                .zip(&scores.per_image)
                .map(|(&image_id, metrics)| ImageReport { image_id, metrics })
                .collect(),
        }
    }
}

/// The people-facing report: values rounded to 4 digits.
pub fn table(scores: &CorpusScores, matched: &Matched, split: Split, seconds: f64) -> String {
    let mut out = String::new();
    out.push_str(&format!("{:<22}{:>8}\n", "metric", "value"));
    for (name, _, value) in scores.rows() {
        out.push_str(&format!("{name:<22}{value:>8.4}\n"));
    }
    out.push_str(&format!("{:<22}{:>8}\n", "SPICE", "not computed"));
    if scores.nltk_bleu_integer_zero {
        out.push_str("note: no unigram matched; NLTK would return the integer 0 for BLEU\n");
    } else if !scores.nltk_bleu_zero_count_orders.is_empty() {
        out.push_str(&format!(
            "note: NLTK BLEU has no matches at order(s) {:?} (NLTK warns and the score is near 0)\n",
            scores.nltk_bleu_zero_count_orders
        ));
    }
    out.push_str(&format!(
        "{} {} images matched by {}; {} missing; scored in {:.3} s\n",
        scores.images,
        split.to_string().to_lowercase(),
        matched.id_field.describe(),
        matched.missing.len(),
        seconds
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(with_cocoid: bool) -> KarpathyDataset {
        let cocoid = |id: u64| {
            if with_cocoid {
                format!(", \"cocoid\": {id}")
            } else {
                String::new()
            }
        };
        let json = format!(
            r#"{{"images": [
                {{"filename": "a.jpg", "split": "test", "imgid": 0{}, "sentences": [{{"tokens": ["a", "dog", "runs"]}}, {{"tokens": ["a", "dog"]}}]}},
                {{"filename": "b.jpg", "split": "test", "imgid": 1{}, "sentences": [{{"tokens": ["a", "cat"]}}]}},
                {{"filename": "c.jpg", "split": "train", "imgid": 2{}, "sentences": [{{"tokens": ["a", "bus"]}}]}}
            ]}}"#,
            cocoid(100),
            cocoid(101),
            cocoid(102)
        );
        serde_json::from_str(&json).unwrap()
    }

    fn entry(image_id: u64, caption: &str) -> ResultEntry {
        ResultEntry {
            image_id,
            caption: caption.into(),
        }
    }

    #[test]
    fn matches_by_cocoid_then_imgid() {
        let m = match_results(
            &dataset(true),
            Split::Test,
            IdChoice::Auto,
            &[entry(101, "A cat."), entry(100, "a dog")],
        )
        .unwrap();
        assert_eq!(m.id_field, IdField::Cocoid);
        assert_eq!(m.image_ids, vec![100, 101]);
        assert_eq!(
            m.references[0],
            vec!["a dog runs".to_string(), "a dog".to_string()]
        );
        assert_eq!(
            m.hypotheses,
            vec!["a dog".to_string(), "A cat.".to_string()]
        );
        assert!(m.missing.is_empty());
        let m = match_results(
            &dataset(false),
            Split::Test,
            IdChoice::Auto,
            &[entry(1, "a cat")],
        )
        .unwrap();
        assert_eq!(m.id_field, IdField::Imgid);
        assert_eq!(m.missing, vec![0]);
    }

    #[test]
    fn matches_by_position_or_by_the_named_field() {
        // gaze eval's results: image_id is the position among the split's images.
        let m = match_results(
            &dataset(true),
            Split::Test,
            IdChoice::Index,
            &[entry(1, "a cat"), entry(0, "a dog")],
        )
        .unwrap();
        assert_eq!(m.id_field, IdField::Index);
        assert_eq!(m.image_ids, vec![0, 1]);
        assert_eq!(m.hypotheses, vec!["a dog".to_string(), "a cat".to_string()]);
        assert_eq!(m.references[1], vec!["a cat".to_string()]);
        let err = match_results(
            &dataset(true),
            Split::Test,
            IdChoice::Index,
            &[entry(2, "a")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("index in the split"), "{err}");
        // imgid asked for on a COCO file, and cocoid on a Flickr one.
        let m = match_results(
            &dataset(true),
            Split::Test,
            IdChoice::Imgid,
            &[entry(1, "a")],
        )
        .unwrap();
        assert_eq!((m.id_field, m.image_ids.clone()), (IdField::Imgid, vec![1]));
        let err = match_results(
            &dataset(false),
            Split::Test,
            IdChoice::Cocoid,
            &[entry(1, "a")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no cocoid"), "{err}");
    }

    #[test]
    fn duplicates_and_foreign_ids_are_errors() {
        let d = dataset(true);
        let err = match_results(
            &d,
            Split::Test,
            IdChoice::Auto,
            &[entry(100, "a"), entry(100, "b")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        let err =
            match_results(&d, Split::Test, IdChoice::Auto, &[entry(102, "a bus")]).unwrap_err();
        assert!(err.to_string().contains("not TEST images"), "{err}");
        let err = match_results(&d, Split::Val, IdChoice::Auto, &[entry(100, "a")]).unwrap_err();
        assert!(err.to_string().contains("no VAL images"), "{err}");
    }

    #[test]
    fn table_lists_every_metric_and_spice_as_not_computed() {
        let m = match_results(
            &dataset(true),
            Split::Test,
            IdChoice::Auto,
            &[entry(100, "a dog runs"), entry(101, "a cat")],
        )
        .unwrap();
        let scores = metrics::score_corpus(&m.references, &m.hypotheses).unwrap();
        let t = table(&scores, &m, Split::Test, 0.01);
        for name in [
            "BLEU-4 (NLTK)",
            "BLEU-4 (coco)",
            "METEOR (exact+stem)",
            "ROUGE-L",
            "CIDEr-D",
            "SPICE",
        ] {
            assert!(t.contains(name), "{t}");
        }
        assert!(t.contains("not computed"));
    }
}
