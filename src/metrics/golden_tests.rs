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

/// `tests/fixtures/metrics/make_nltk_punct.py`: NLTK's corpus_bleu on Karpathy tokens that
/// include punctuation tokens (`:` `,` `'s` `-` `.` `(`), as the tutorial calls it.
const NLTK_PUNCT: &str = include_str!("../../tests/fixtures/metrics/nltk_punct.json");

#[derive(Deserialize)]
struct NltkPunct {
    karpathy: crate::data::karpathy::KarpathyDataset,
    results: Vec<NltkPunctResult>,
    nltk_bleu_1_to_4: Vec<f64>,
}

#[derive(Deserialize)]
struct NltkPunctResult {
    caption: String,
}

#[test]
fn karpathy_scoring_gives_nltk_its_tokens_and_coco_the_ptb_ones() {
    let f: NltkPunct = serde_json::from_str(NLTK_PUNCT).unwrap();
    let tokens: Vec<Vec<Vec<String>>> = f
        .karpathy
        .images
        .iter()
        .map(|im| im.sentences.iter().map(|s| s.tokens.clone()).collect())
        .collect();
    let hypotheses: Vec<String> = f.results.iter().map(|r| r.caption.clone()).collect();
    let scores = score_karpathy(&tokens, &hypotheses).unwrap();
    let m = &scores.corpus;
    let got = [m.bleu_1_nltk, m.bleu_2_nltk, m.bleu_3_nltk, m.bleu_4_nltk];
    for (n, (&got, &want)) in got.iter().zip(&f.nltk_bleu_1_to_4).enumerate() {
        relative_close(got, want, EXACT_TOLERANCE, &format!("NLTK BLEU-{}", n + 1));
    }
    assert!(!scores.nltk_bleu_integer_zero);
    assert!(scores.nltk_bleu_zero_count_orders.is_empty());

    // NLTK over the PTB tokens (what gaze score used to report) is a different number here,
    // so the check above can tell the two apart.
    let joined: Vec<Vec<String>> = tokens
        .iter()
        .map(|refs| refs.iter().map(|t| t.join(" ")).collect())
        .collect();
    let ptb_refs: Vec<Vec<String>> = joined.iter().map(|r| ptb::tokenize_all(r)).collect();
    let ptb_hyps = ptb::tokenize_all(&hypotheses);
    let split = |s: &String| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let ptb_ref_tokens: Vec<Vec<Vec<String>>> = ptb_refs
        .iter()
        .map(|refs| refs.iter().map(split).collect())
        .collect();
    let ptb_hyp_tokens: Vec<Vec<String>> = ptb_hyps.iter().map(split).collect();
    let on_ptb = bleu_nltk::corpus_bleu(
        &ptb_ref_tokens,
        &ptb_hyp_tokens,
        &bleu_nltk::BLEU_1_TO_4_WEIGHTS,
    )
    .unwrap();
    for (n, (&ptb_value, &want)) in on_ptb.scores.iter().zip(&f.nltk_bleu_1_to_4).enumerate() {
        assert!(
            ((ptb_value - want) / want).abs() > 1e-3,
            "BLEU-{}: NLTK over PTB tokens {ptb_value} is too close to NLTK's {want}",
            n + 1
        );
    }

    // The coco columns still see the PTB tokens: the same as scoring the PTB text directly.
    let on_ptb_text = score_tokenized(&ptb_refs, &ptb_hyps).unwrap();
    let c = &on_ptb_text.corpus;
    assert_eq!(
        [m.bleu_1_coco, m.bleu_2_coco, m.bleu_3_coco, m.bleu_4_coco],
        [c.bleu_1_coco, c.bleu_2_coco, c.bleu_3_coco, c.bleu_4_coco]
    );
    assert_eq!(
        (m.meteor_exact_stem, m.rouge_l, m.cider_d),
        (c.meteor_exact_stem, c.rouge_l, c.cider_d)
    );
    assert_eq!(scores.per_image, on_ptb_text.per_image);
    // ... and the PTB step changed them: punctuation tokens are gone.
    assert!(!ptb_refs[0][0].contains(':') && tokens[0][0].contains(&":".to_string()));
    let unchanged = score_tokenized(&joined, &hypotheses).unwrap();
    assert_ne!(unchanged.corpus.bleu_4_coco, m.bleu_4_coco);
    assert_ne!(unchanged.corpus.cider_d, m.cider_d);

    // Raw text through score_corpus: the same split (these captions are whitespace-separated).
    let raw = score_corpus(&joined, &hypotheses).unwrap();
    assert_eq!(raw.corpus, scores.corpus);
}
