//! Golden tests against values the reference scorers produced
//! (`tests/fixtures/metrics/make_golden.py`, pycocoevalcap 1.2 with its jars, NLTK 3.10.4).

use serde::Deserialize;

use super::*;

const GOLDEN: &str = include_str!("../../tests/fixtures/metrics/golden.json");

/// BLEU, CIDEr-D and ROUGE-L must agree to this relative tolerance (they are bit-exact in
/// practice; the margin covers `ln`/`pow` rounding differences between numpy and libm).
const EXACT_TOLERANCE: f64 = 1e-12;
/// METEOR (exact+stem) against the jar run with `-m "exact stem"`.
const METEOR_TOLERANCE: f64 = 1e-12;

#[derive(Deserialize)]
struct Golden {
    corpora: std::collections::BTreeMap<String, GoldenCorpus>,
    ptb: Vec<(String, String)>,
    meteor_normalizer: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct GoldenCorpus {
    references: Vec<Vec<String>>,
    hypotheses: Vec<String>,
    nltk: GoldenNltk,
    bleu: GoldenBleu,
    cider_d: GoldenValues,
    rouge_l: GoldenValues,
    meteor_jar: GoldenValues,
    meteor_jar_exact_stem: GoldenValues,
}

#[derive(Deserialize)]
struct GoldenNltk {
    bleu_1_to_4: Vec<f64>,
    integer_zero: bool,
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct GoldenBleu {
    corpus: Vec<f64>,
    per_image: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct GoldenValues {
    corpus: f64,
    per_image: Vec<f64>,
}

fn golden() -> Golden {
    serde_json::from_str(GOLDEN).expect("golden.json parses")
}

fn assert_close(got: f64, want: f64, tolerance: f64, what: &str) {
    // Relative to the expected value, with an absolute floor of tolerance^2 near zero.
    assert!(
        (got - want).abs() <= tolerance * want.abs().max(tolerance),
        "{what}: got {got:e}, want {want:e}"
    );
}

fn relative_close(got: f64, want: f64, tolerance: f64, what: &str) {
    let ok = if want == 0.0 {
        got.abs() <= tolerance
    } else {
        ((got - want) / want).abs() <= tolerance
    };
    assert!(ok, "{what}: got {got:e}, want {want:e}");
}

fn tokens(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

#[test]
fn golden_corpora_match_the_reference_scorers() {
    let golden = golden();
    assert!(golden.corpora["synthetic"].hypotheses.len() >= 200);
    for (name, c) in &golden.corpora {
        let refs: Vec<Vec<Vec<&str>>> = c
            .references
            .iter()
            .map(|rs| rs.iter().map(|r| tokens(r)).collect())
            .collect();
        let hyps: Vec<Vec<&str>> = c.hypotheses.iter().map(|h| tokens(h)).collect();

        let nltk = bleu_nltk::corpus_bleu(&refs, &hyps, &bleu_nltk::BLEU_1_TO_4_WEIGHTS).unwrap();
        for (n, (&got, &want)) in nltk.scores.iter().zip(&c.nltk.bleu_1_to_4).enumerate() {
            relative_close(
                got,
                want,
                EXACT_TOLERANCE,
                &format!("{name} NLTK BLEU-{}", n + 1),
            );
        }
        assert_eq!(nltk.integer_zero, c.nltk.integer_zero, "{name}");
        assert_eq!(
            nltk.warnings().len(),
            c.nltk.warnings.len(),
            "{name} NLTK warnings"
        );

        let coco = bleu_coco::corpus_bleu(&refs, &hyps).unwrap();
        for k in 0..4 {
            relative_close(
                coco.corpus[k],
                c.bleu.corpus[k],
                EXACT_TOLERANCE,
                &format!("{name} coco BLEU-{}", k + 1),
            );
            for (i, image) in coco.per_image.iter().enumerate() {
                relative_close(
                    image[k],
                    c.bleu.per_image[i][k],
                    EXACT_TOLERANCE,
                    &format!("{name} image {i} BLEU-{}", k + 1),
                );
            }
        }

        let cider = cider::cider_d(&refs, &hyps).unwrap();
        relative_close(
            cider.corpus,
            c.cider_d.corpus,
            EXACT_TOLERANCE,
            &format!("{name} CIDEr-D"),
        );
        for (i, (&got, &want)) in cider.per_image.iter().zip(&c.cider_d.per_image).enumerate() {
            assert_close(
                got,
                want,
                EXACT_TOLERANCE,
                &format!("{name} image {i} CIDEr-D"),
            );
        }

        let rouge = rouge::rouge_l(&c.references, &c.hypotheses).unwrap();
        relative_close(
            rouge.corpus,
            c.rouge_l.corpus,
            EXACT_TOLERANCE,
            &format!("{name} ROUGE-L"),
        );
        for (i, (&got, &want)) in rouge.per_image.iter().zip(&c.rouge_l.per_image).enumerate() {
            assert_close(
                got,
                want,
                EXACT_TOLERANCE,
                &format!("{name} image {i} ROUGE-L"),
            );
        }

        let meteor = meteor::meteor_exact_stem(&c.references, &c.hypotheses).unwrap();
        let jar = &c.meteor_jar_exact_stem;
        assert_close(
            meteor.corpus,
            jar.corpus,
            METEOR_TOLERANCE,
            &format!("{name} METEOR (exact+stem) corpus"),
        );
        for (i, (&got, &want)) in meteor.per_image.iter().zip(&jar.per_image).enumerate() {
            assert_close(
                got,
                want,
                METEOR_TOLERANCE,
                &format!("{name} image {i} METEOR (exact+stem)"),
            );
        }
    }
}

#[test]
fn score_tokenized_reports_the_same_numbers() {
    let golden = golden();
    let c = &golden.corpora["gold"];
    let scores = score_tokenized(&c.references, &c.hypotheses).unwrap();
    let m = &scores.corpus;
    let want_nltk = &c.nltk.bleu_1_to_4;
    for (got, want) in [m.bleu_1_nltk, m.bleu_2_nltk, m.bleu_3_nltk, m.bleu_4_nltk]
        .iter()
        .zip(want_nltk)
    {
        relative_close(*got, *want, EXACT_TOLERANCE, "NLTK BLEU");
    }
    for (got, want) in [m.bleu_1_coco, m.bleu_2_coco, m.bleu_3_coco, m.bleu_4_coco]
        .iter()
        .zip(&c.bleu.corpus)
    {
        relative_close(*got, *want, EXACT_TOLERANCE, "coco BLEU");
    }
    relative_close(m.cider_d, 1.5092759066992405, EXACT_TOLERANCE, "CIDEr-D");
    relative_close(m.rouge_l, 0.5453330229926415, EXACT_TOLERANCE, "ROUGE-L");
    relative_close(
        m.meteor_exact_stem,
        c.meteor_jar_exact_stem.corpus,
        METEOR_TOLERANCE,
        "METEOR (exact+stem)",
    );
    assert_eq!(scores.per_image.len(), 4);
    relative_close(
        scores.per_image[0].cider_d,
        3.325054345428058,
        EXACT_TOLERANCE,
        "CIDEr-D image 0",
    );
    assert_eq!(scores.not_computed, vec!["spice"]);
    // Raw text through the PTB subset gives the same numbers for these lowercase captions.
    let raw = score_corpus(&c.references, &c.hypotheses).unwrap();
    assert_eq!(raw.corpus, scores.corpus);
    // Stable JSON keys at full precision.
    let json = serde_json::to_value(&scores).unwrap();
    assert_eq!(json["corpus"]["cider_d"].as_f64(), Some(m.cider_d));
    assert!(json["per_image"][3]["meteor_exact_stem"].is_f64());
}

#[test]
fn ptb_subset_matches_the_jar_on_covered_strings() {
    for (input, want) in golden().ptb {
        assert_eq!(ptb::tokenize(&input), want, "input {input:?}");
    }
}

#[test]
fn meteor_normaliser_matches_the_jar() {
    for (input, want) in golden().meteor_normalizer {
        assert_eq!(
            meteor::normalize::normalize_line(&input),
            want,
            "input {input:?}"
        );
    }
}

/// Prints how far METEOR (exact+stem) is from the jar with all modules and with exact+stem
/// (the numbers quoted in docs/METRICS-IMPLEMENTATION.md). Run with `--nocapture`.
#[test]
fn meteor_distance_report() {
    let golden = golden();
    for (name, c) in &golden.corpora {
        let ours = meteor::meteor_exact_stem(&c.references, &c.hypotheses).unwrap();
        let max_diff = |jar: &GoldenValues| {
            ours.per_image
                .iter()
                .zip(&jar.per_image)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f64, f64::max)
        };
        let mean_diff = |jar: &GoldenValues| {
            ours.per_image
                .iter()
                .zip(&jar.per_image)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / jar.per_image.len() as f64
        };
        println!(
            "{name}: ours {:.6}; jar exact+stem {:.6} (corpus diff {:.2e}, per-image max {:.2e}); \
             jar all modules {:.6} (corpus diff {:+.6} = {:+.2}%, per-image mean |diff| {:.4}, max {:.4})",
            ours.corpus,
            c.meteor_jar_exact_stem.corpus,
            (ours.corpus - c.meteor_jar_exact_stem.corpus).abs(),
            max_diff(&c.meteor_jar_exact_stem),
            c.meteor_jar.corpus,
            ours.corpus - c.meteor_jar.corpus,
            100.0 * (ours.corpus - c.meteor_jar.corpus) / c.meteor_jar.corpus,
            mean_diff(&c.meteor_jar),
            max_diff(&c.meteor_jar),
        );
    }
}
