//! `gaze score`: score a COCO-format results file against a Karpathy split.
//!
//! Results are `[{"image_id": ..., "caption": "..."}]`. Image ids are matched to the split's
//! Karpathy `cocoid` when every image of the split has one (COCO), otherwise to `imgid`
//! (Flickr files); the report says which. References are each image's Karpathy `tokens`
//! (the sentences' `raw` text is not read). NLTK BLEU-1..4 scores those tokens as they are
//! against the captions split on whitespace, as the PyTorch tutorial calls NLTK; the
//! coco-caption columns (BLEU, METEOR (exact+stem), ROUGE-L, CIDEr-D) score the tokens
//! joined by spaces and the captions, both through the PTB subset, as coco-caption tokenises
//! both (see `gaze::metrics::score_karpathy`).
//!
//! Policy for mismatched inputs:
//! - an `image_id` that appears twice, or that is not an image of the split, is an error:
//!   nothing is scored (exit 2), since it usually means the wrong split, dataset or id field;
//! - images of the split that have no result are left out and reported; the intersection is
//!   scored (CIDEr-D's idf then comes from that subset), and the exit code is 2 unless
//!   `--allow-missing` is given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gaze::data::karpathy::{KarpathyDataset, Split};
use gaze::metrics::{self, CorpusScores, ImageMetrics};
use serde::{Deserialize, Serialize};

#[derive(Args, Debug)]
#[command(after_help = "\
Tokens: references are each sentence's Karpathy `tokens`. BLEU-1..4 (NLTK), the PyTorch \
tutorial's BLEU, uses those tokens as they are and the captions split on whitespace, as the \
tutorial passes them to NLTK's corpus_bleu. BLEU-1..4 (coco), METEOR (exact+stem), ROUGE-L and \
CIDEr-D use coco-caption's PTB tokenisation of the joined tokens and of the captions, which \
lowercases, splits clitics ('s) and drops punctuation tokens (: , . - ; ! ?), so the two BLEU \
families differ on punctuated captions. SPICE is not computed.")]
pub struct ScoreArgs {
    /// COCO-format results: a JSON array of {"image_id", "caption"}.
    #[arg(long)]
    pub results: PathBuf,
    /// Karpathy split JSON (dataset_coco.json, dataset_flickr8k.json, ...).
    #[arg(long)]
    pub karpathy_json: PathBuf,
    /// Which split's images to score (train includes restval).
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// table: rounded values for people; json: every metric at full precision, stable keys.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Exit 0 even when some images of the split have no caption in the results.
    #[arg(long)]
    pub allow_missing: bool,
    /// What the results' image_id is: auto (cocoid when every image of the split has one,
    /// else imgid), cocoid, imgid, or index: the image's position among the split's images in
    /// the Karpathy file, which is what `gaze eval --results-dir` writes (the prepared files
    /// keep that order, unless `gaze prepare` skipped unreadable images).
    #[arg(long, value_enum, default_value_t = IdChoice::Auto)]
    pub image_ids: IdChoice,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum IdChoice {
    Auto,
    Cocoid,
    Imgid,
    Index,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Deserialize)]
struct ResultEntry {
    image_id: u64,
    caption: String,
}

/// Which Karpathy field the results' `image_id` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdField {
    Cocoid,
    Imgid,
    Index,
}

/// Results paired with the split's references, in split order.
#[derive(Debug)]
struct Matched {
    id_field: IdField,
    image_ids: Vec<u64>,
    /// Each reference's tokens joined by spaces: the text the coco columns tokenise.
    #[cfg_attr(not(test), allow(dead_code))]
    references: Vec<Vec<String>>,
    /// Each reference's Karpathy tokens, as NLTK BLEU gets them.
    reference_tokens: Vec<Vec<Vec<String>>>,
    hypotheses: Vec<String>,
    /// Images of the split with no result.
    missing: Vec<u64>,
}

#[derive(Serialize)]
struct ImageReport<'a> {
    image_id: u64,
    #[serde(flatten)]
    metrics: &'a ImageMetrics,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    results: &'a Path,
    karpathy_json: &'a Path,
    split: String,
    id_field: IdField,
    images_scored: usize,
    images_missing: &'a [u64],
    corpus: &'a metrics::CorpusMetrics,
    nltk_bleu_integer_zero: bool,
    nltk_bleu_zero_count_orders: &'a [usize],
    not_computed: &'a [&'static str],
    scoring_seconds: f64,
    per_image: Vec<ImageReport<'a>>,
}

pub fn run(args: ScoreArgs) -> Result<ExitCode> {
    let dataset = KarpathyDataset::load(&args.karpathy_json)?;
    let bytes = std::fs::read(&args.results)
        .with_context(|| format!("cannot read {}", args.results.display()))?;
    let results: Vec<ResultEntry> = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{}: expected a JSON array of {{\"image_id\": integer, \"caption\": string}}",
            args.results.display()
        )
    })?;
    let matched =
        match_results(&dataset, args.split, args.image_ids, &results).with_context(|| {
            format!(
                "{} against {}",
                args.results.display(),
                args.karpathy_json.display()
            )
        })?;

    let started = Instant::now();
    let scores = metrics::score_karpathy(&matched.reference_tokens, &matched.hypotheses)?;
    let seconds = started.elapsed().as_secs_f64();

    if !matched.missing.is_empty() {
        let shown: Vec<String> = matched.missing.iter().take(5).map(u64::to_string).collect();
        eprintln!(
            "warning: {} of {} {} images have no caption in {} (e.g. {} {}); scored the other {} only",
            matched.missing.len(),
            matched.missing.len() + matched.image_ids.len(),
            args.split,
            args.results.display(),
            id_name(matched.id_field),
            shown.join(", "),
            matched.image_ids.len(),
        );
    }
    match args.format {
        Format::Table => print!("{}", table(&scores, &matched, args.split, seconds)),
        Format::Json => {
            let report = JsonReport {
                results: &args.results,
                karpathy_json: &args.karpathy_json,
                split: args.split.to_string().to_lowercase(),
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
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(if matched.missing.is_empty() || args.allow_missing {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn id_name(field: IdField) -> &'static str {
    match field {
        IdField::Cocoid => "cocoid",
        IdField::Imgid => "imgid",
        IdField::Index => "index in the split",
    }
}

/// Pairs results with the split's images (see the module docs for the policy).
fn match_results(
    dataset: &KarpathyDataset,
    split: Split,
    ids: IdChoice,
    results: &[ResultEntry],
) -> Result<Matched> {
    let images: Vec<_> = dataset
        .images
        .iter()
        .filter(|im| Split::from_karpathy(&im.split) == Some(split))
        .collect();
    if images.is_empty() {
        bail!("the Karpathy file has no {split} images");
    }
    let all_cocoids = images.iter().all(|im| im.cocoid.is_some());
    let all_imgids = images.iter().all(|im| im.imgid.is_some());
    let id_field = match ids {
        IdChoice::Index => IdField::Index,
        IdChoice::Cocoid if all_cocoids => IdField::Cocoid,
        IdChoice::Imgid if all_imgids => IdField::Imgid,
        IdChoice::Auto if all_cocoids => IdField::Cocoid,
        IdChoice::Auto if all_imgids => IdField::Imgid,
        IdChoice::Cocoid | IdChoice::Imgid => bail!(
            "some {split} images have no {}, so results cannot be matched by it",
            if ids == IdChoice::Cocoid { "cocoid" } else { "imgid" }
        ),
        IdChoice::Auto => bail!("some {split} images have neither a cocoid nor an imgid, so results cannot be matched to them (--image-ids index matches by position)"),
    };
    let id_of = |position: usize, im: &gaze::data::karpathy::KarpathyImage| match id_field {
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
        bail!(
            "{} image_id(s) appear more than once in the results: {}",
            duplicates.len(),
            preview(&duplicates)
        );
    }
    let split_ids: std::collections::HashSet<u64> = images
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
        bail!(
            "{} image_id(s) are not {split} images (matched against {}): {}; check --split, the dataset and --image-ids",
            unknown.len(),
            id_name(id_field),
            preview(&unknown)
        );
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
            bail!(
                "{split} image {} {id} ({}) has no reference sentences",
                id_name(id_field),
                im.filename
            );
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
        bail!("no result matches a {split} image");
    }
    Ok(matched)
}

fn preview(ids: &[u64]) -> String {
    let mut s: Vec<String> = ids.iter().take(5).map(u64::to_string).collect();
    if ids.len() > 5 {
        s.push("...".into());
    }
    s.join(", ")
}

/// The people-facing report: values rounded to 4 digits.
fn table(scores: &CorpusScores, matched: &Matched, split: Split, seconds: f64) -> String {
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
        id_name(matched.id_field),
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
