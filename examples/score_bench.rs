//! Times `gaze::metrics::score_corpus` on a synthetic corpus the size of COCO's Karpathy test
//! split: 5,000 images, 5 references each, captions of about 10 words.
//!
//!     cargo run --release --example score_bench [-- IMAGES]
//!
//! Prints the time of each of 5 runs and the median. Captions are drawn from a 2,000-word
//! vocabulary with a Zipf-like distribution plus a shared caption skeleton, so n-grams repeat
//! across images roughly as real captions do.

use std::time::Instant;

/// A small deterministic generator (SplitMix64), so every run scores the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Zipf-like: small indices are much more likely.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) - 1.0) as usize
    }
}

fn word(i: usize) -> String {
    const COMMON: [&str; 12] = [
        "a", "the", "on", "of", "in", "with", "and", "is", "man", "two", "sitting", "table",
    ];
    COMMON
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("w{i}"))
}

fn caption(rng: &mut Rng, topic: &[usize]) -> String {
    let len = 8 + rng.below(6);
    (0..len)
        .map(|k| {
            if k % 3 == 1 {
                word(topic[rng.below(topic.len())])
            } else {
                word(rng.zipf(2000))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU time of the whole process (all threads) in seconds, from /proc/self/stat (Linux);
/// on a loaded machine this is a truer measure of the work than wall time.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() {
    let images: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let mut rng = Rng(42);
    let mut references = Vec::with_capacity(images);
    let mut hypotheses = Vec::with_capacity(images);
    for _ in 0..images {
        let topic: Vec<usize> = (0..4).map(|_| 12 + rng.below(1988)).collect();
        references.push(
            (0..5)
                .map(|_| caption(&mut rng, &topic))
                .collect::<Vec<String>>(),
        );
        hypotheses.push(caption(&mut rng, &topic));
    }
    let mut times = Vec::new();
    let mut last = None;
    for run in 1..=5 {
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        let scores = gaze::metrics::score_corpus(&references, &hypotheses)
            .expect("synthetic corpus is valid");
        let t = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds()
            .zip(cpu_start)
            .map(|(b, a)| b - a)
            .unwrap_or(f64::NAN);
        println!(
            "run {run}: wall {:.1} ms, cpu {:.0} ms (all threads)",
            t * 1e3,
            cpu * 1e3
        );
        times.push(t);
        last = Some(scores);
    }
    times.sort_by(f64::total_cmp);
    // Each scorer alone, single-threaded, on whitespace tokens (no PTB step).
    use gaze::metrics::{bleu_coco, bleu_nltk, cider, meteor, rouge};
    let ref_tokens: Vec<Vec<Vec<&str>>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| r.split_whitespace().collect()).collect())
        .collect();
    let hyp_tokens: Vec<Vec<&str>> = hypotheses
        .iter()
        .map(|h| h.split_whitespace().collect())
        .collect();
    let time = |name: &str, f: &dyn Fn()| {
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        f();
        let cpu = cpu_seconds()
            .zip(cpu_start)
            .map(|(b, a)| b - a)
            .unwrap_or(f64::NAN);
        println!(
            "  {name:<20} wall {:.1} ms, cpu {:.0} ms",
            start.elapsed().as_secs_f64() * 1e3,
            cpu * 1e3
        );
    };
    println!("each scorer alone (one thread, &str tokens):");
    time("BLEU (NLTK)", &|| {
        drop(bleu_nltk::corpus_bleu(
            &ref_tokens,
            &hyp_tokens,
            &bleu_nltk::BLEU_1_TO_4_WEIGHTS,
        ))
    });
    time("BLEU (coco)", &|| {
        drop(bleu_coco::corpus_bleu(&ref_tokens, &hyp_tokens))
    });
    time("CIDEr-D", &|| {
        drop(cider::cider_d(&ref_tokens, &hyp_tokens))
    });
    time("ROUGE-L", &|| {
        drop(rouge::rouge_l(&references, &hypotheses))
    });
    time("METEOR (exact+stem)", &|| {
        drop(meteor::meteor_exact_stem(&references, &hypotheses))
    });
    time("PTB subset", &|| {
        for refs in &references {
            drop(gaze::metrics::ptb::tokenize_all(refs));
        }
    });
    let threads = rayon::current_num_threads();
    println!(
        "{images} images x 5 references: median {:.1} ms ({threads} threads)",
        times[2] * 1e3
    );
    if let Some(scores) = last {
        for (name, _, value) in scores.rows() {
            println!("  {name:<20} {value:.4}");
        }
    }
}
