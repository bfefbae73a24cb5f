//! Batched beam search: the tutorial's `caption_image_beam_search`, for many images at once.
//!
//! Per image it does exactly what the tutorial does: `k` beams with additive log-softmax
//! scores; the first step expands beam 0 only (all beams start equal); a beam that emits
//! `<end>` is set aside and the image's `k` shrinks; the search stops when `k` reaches 0 or
//! after the step numbered `max_steps + 1` (the tutorial's `if step > 50: break`), and returns
//! the complete sequence with the highest score.
//!
//! What differs:
//! - Where no beam reached `<end>` it returns the best unfinished sequence (the tutorial
//!   crashes on `max` of an empty list).
//! - All images advance together: decoder states are laid out `(B, k)` so one decoder step
//!   serves every beam of every image; finished images leave the batch.
//! - The attention's encoder projection is computed once per image, not at every step.
//! - Histories are kept as back-pointers, not copied sequences.
//! - Options (all off by default): length normalisation, forbidding `<unk>`, blocking
//!   repeated trigrams.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use candle_core::{DType, Device, Result, Tensor, D};

use super::decoder::Decoder;

#[derive(Debug, Clone, PartialEq)]
pub struct BeamOptions {
    pub beam_size: usize,
    /// The search stops after step `max_steps + 1` (50 in the tutorial, so at most 51 words).
    pub max_steps: usize,
    /// How the final sequence is chosen among the candidates; `LengthPenalty::None` (the
    /// tutorial) compares raw summed log-probabilities.
    pub length_penalty: LengthPenalty,
    /// Never emit `<unk>`.
    pub forbid_unk: bool,
    /// Never emit a word that repeats a trigram already in the sequence.
    pub block_repeated_trigrams: bool,
    /// Scores are divided by this before the log-softmax (1: the model's distribution).
    pub temperature: f32,
    /// Never emit the same word twice in a row.
    pub no_repeat: bool,
    /// Word ids after which `<end>` may not come (a caption never ends on them).
    pub bad_endings: Vec<u32>,
}

impl Default for BeamOptions {
    fn default() -> Self {
        BeamOptions {
            beam_size: 5,
            max_steps: 50,
            length_penalty: LengthPenalty::None,
            forbid_unk: false,
            block_repeated_trigrams: false,
            temperature: 1.0,
            no_repeat: false,
            bad_endings: Vec::new(),
        }
    }
}

/// How a candidate's summed log-probability is adjusted for its length (`len`, the number of
/// generated tokens, at least 1) when the final sequence is picked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LengthPenalty {
    /// The raw score (the tutorial).
    #[default]
    None,
    /// score / len^alpha (the `--length-norm ALPHA` option).
    Power { alpha: f32 },
    /// Wu et al. 2016: score / ((5 + len) / 6)^alpha.
    Wu { alpha: f32 },
    /// score / len.
    Average,
}

impl LengthPenalty {
    /// The key the final sequence is chosen by.
    pub fn apply(self, score: f32, len: usize) -> f32 {
        let len = len.max(1) as f32;
        match self {
            LengthPenalty::None => score,
            LengthPenalty::Power { alpha } => score / len.powf(alpha),
            LengthPenalty::Wu { alpha } => score / ((5.0 + len) / 6.0).powf(alpha),
            LengthPenalty::Average => score / len,
        }
    }
}

/// The special ids beam search needs.
#[derive(Debug, Clone, Copy)]
pub struct SpecialTokens {
    pub start: u32,
    pub end: u32,
    pub unk: Option<u32>,
}

/// One image's caption.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamResult {
    /// The sequence as the tutorial returns it: `<start>`, the words, and `<end>` if finished.
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of every token after `<start>`.
    pub score: f32,
    /// For each token after `<start>`, the attention weights (length `P`) used to emit it.
    pub alphas: Vec<Vec<f32>>,
    /// Whether the sequence ended with `<end>`.
    pub finished: bool,
}

/// History of one image's beams as a tree of back-pointers.
struct Arena {
    parent: Vec<u32>,
    token: Vec<u32>,
    /// `P` weights per node; the root (`<start>`) has none.
    alpha: Vec<f32>,
    pixels: usize,
}

const ROOT: u32 = u32::MAX;

impl Arena {
    fn push(&mut self, parent: u32, token: u32, alpha: &[f32]) -> u32 {
        self.parent.push(parent);
        self.token.push(token);
        self.alpha.extend_from_slice(alpha);
        (self.parent.len() - 1) as u32
    }

    /// Tokens (without `<start>`) and attention rows from the root to `node`.
    fn path(&self, mut node: u32) -> (Vec<u32>, Vec<Vec<f32>>) {
        let mut tokens = Vec::new();
        let mut alphas = Vec::new();
        while node != ROOT {
            let i = node as usize;
            tokens.push(self.token[i]);
            alphas.push(self.alpha[i * self.pixels..(i + 1) * self.pixels].to_vec());
            node = self.parent[i];
        }
        tokens.reverse();
        alphas.reverse();
        (tokens, alphas)
    }

    fn tokens(&self, mut node: u32) -> Vec<u32> {
        let mut tokens = Vec::new();
        while node != ROOT {
            tokens.push(self.token[node as usize]);
            node = self.parent[node as usize];
        }
        tokens.reverse();
        tokens
    }
}

/// Per-image search state.
struct ImageBeams {
    /// Live beams, best first: (cumulative score, history node).
    live: Vec<(f32, u32)>,
    complete: Vec<(f32, u32)>,
    arena: Arena,
    done: bool,
}

/// A candidate for the top-k heap: higher score first, lower flat index first on ties.
#[derive(PartialEq)]
struct Candidate {
    score: f32,
    index: usize,
}

impl Eq for Candidate {}

impl Ord for Candidate {
    // Reversed so that BinaryHeap (a max-heap) keeps the worst candidate on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The `k` best `(score, flat index)` of `rows` rows of `vocab` scores, best first, found with
/// a size-`k` heap instead of a full sort. `score_of(row, word)` gives a candidate's score.
fn top_k(
    rows: usize,
    vocab: usize,
    k: usize,
    mut score_of: impl FnMut(usize, usize) -> f32,
) -> Vec<(f32, usize)> {
    let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(k + 1);
    for r in 0..rows {
        for v in 0..vocab {
            let mut score = score_of(r, v);
            if score.is_nan() {
                score = f32::NEG_INFINITY;
            }
            let cand = Candidate {
                score,
                index: r * vocab + v,
            };
            if heap.len() < k {
                heap.push(cand);
            } else if let Some(worst) = heap.peek() {
                if cand < *worst {
                    heap.pop();
                    heap.push(cand);
                }
            }
        }
    }
    let mut out: Vec<(f32, usize)> = heap.into_iter().map(|c| (c.score, c.index)).collect();
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    out
}

/// Words that would repeat a trigram of `seq` (which includes `<start>`).
fn trigram_blocked(seq: &[u32]) -> Vec<u32> {
    let n = seq.len();
    if n < 2 {
        return Vec::new();
    }
    let (a, b) = (seq[n - 2], seq[n - 1]);
    (0..n - 2)
        .filter(|&i| seq[i] == a && seq[i + 1] == b)
        .map(|i| seq[i + 2])
        .collect()
}

fn u32_tensor(v: Vec<u32>, shape: (usize, usize), device: &Device) -> Result<Tensor> {
    Tensor::from_vec(v, shape, device)
}

fn index_tensor(v: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::from_vec(
        v.iter().map(|&i| i as u32).collect::<Vec<u32>>(),
        v.len(),
        device,
    )
}

/// Runs beam search for every image of `encoder_out` (`(B, S, S, E)` or `(B, P, E)`).
pub fn beam_search(
    decoder: &Decoder,
    encoder_out: &Tensor,
    special: SpecialTokens,
    opts: &BeamOptions,
) -> Result<Vec<BeamResult>> {
    let k = opts.beam_size.max(1);
    let b_total = encoder_out.dim(0)?;
    let e = *encoder_out.dims().last().expect("rank >= 3");
    let device = encoder_out.device().clone();
    let mut enc = encoder_out
        .reshape((b_total, (), e))?
        .to_dtype(DType::F32)?;
    let p = enc.dim(1)?;
    let vocab = decoder.vocab_size;
    // Inference: no gradients through the search (this also selects fused kernels).
    enc = enc.detach();
    let mut proj = decoder.attention.project_encoder(&enc)?.detach();

    let mut images: Vec<ImageBeams> = (0..b_total)
        .map(|_| ImageBeams {
            live: vec![(0.0, ROOT); k],
            complete: Vec::new(),
            arena: Arena {
                parent: Vec::new(),
                token: Vec::new(),
                alpha: Vec::new(),
                pixels: p,
            },
            done: false,
        })
        .collect();
    // Images still searching, in batch order: `active[i]` is the image at batch row i.
    let mut active: Vec<usize> = (0..b_total).collect();

    let (h0, c0) = decoder.init_hidden_state(&enc)?;
    let d = h0.dim(1)?;
    let mut h = h0.unsqueeze(1)?.repeat((1, k, 1))?;
    let mut c = c0.unsqueeze(1)?.repeat((1, k, 1))?;
    let mut prev = u32_tensor(vec![special.start; b_total * k], (b_total, k), &device)?;

    let mut step = 1usize;
    while !active.is_empty() {
        let ba = active.len();
        let out = decoder.step(&enc, &proj, &prev, &h, &c, None)?;
        let logits = if opts.temperature != 1.0 {
            (&out.logits * (1.0 / opts.temperature as f64))?
        } else {
            out.logits.clone()
        };
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let logp: Vec<f32> = logp.flatten_all()?.to_vec1()?;
        let alpha: Vec<f32> = out.alpha.flatten_all()?.to_vec1()?;

        // Rows (into the flattened (ba*k) state) that feed the next step, and its words.
        let mut gather: Vec<usize> = Vec::with_capacity(ba * k);
        let mut next_words: Vec<u32> = Vec::with_capacity(ba * k);
        let mut still_active: Vec<usize> = Vec::with_capacity(ba);
        let mut keep_rows: Vec<usize> = Vec::with_capacity(ba);
        for (row, &img) in active.iter().enumerate() {
            let beams = &mut images[img];
            let live = beams.live.len();
            let rows = if step == 1 { 1 } else { live };
            let base = row * k;
            // Words each expanding row may not emit (trigram blocking).
            let blocked: Vec<Vec<u32>> = if opts.block_repeated_trigrams {
                (0..rows)
                    .map(|r| {
                        let node = beams.live[r].1;
                        let mut seq = vec![special.start];
                        if node != ROOT {
                            seq.extend(beams.arena.tokens(node));
                        }
                        trigram_blocked(&seq)
                    })
                    .collect()
            } else {
                vec![Vec::new(); rows]
            };
            let forbid = if opts.forbid_unk { special.unk } else { None };
            // Each expanding row's last word (`<start>` at the first step).
            let last: Vec<u32> = (0..rows)
                .map(|r| match beams.live[r].1 {
                    ROOT => special.start,
                    node => beams.arena.token[node as usize],
                })
                .collect();
            let best = top_k(rows, vocab, live, |r, v| {
                let v32 = v as u32;
                if forbid == Some(v32)
                    || blocked[r].contains(&v32)
                    || (opts.no_repeat && v32 == last[r])
                    || (v32 == special.end && opts.bad_endings.contains(&last[r]))
                {
                    return f32::NEG_INFINITY;
                }
                beams.live[r].0 + logp[(base + r) * vocab + v]
            });
            let mut next_live = Vec::with_capacity(live);
            let mut next_prev = Vec::with_capacity(live);
            for (score, flat) in best {
                let (r, v) = (flat / vocab, (flat % vocab) as u32);
                let a = &alpha[(base + r) * p..(base + r + 1) * p];
                let node = beams.arena.push(beams.live[r].1, v, a);
                if v == special.end {
                    beams.complete.push((score, node));
                } else {
                    next_live.push((score, node));
                    next_prev.push(r);
                }
            }
            beams.live = next_live;
            if beams.live.is_empty() || step > opts.max_steps {
                beams.done = true;
                continue;
            }
            still_active.push(img);
            keep_rows.push(row);
            for slot in 0..k {
                // Dead slots repeat the first live beam; their scores are never read.
                let src = next_prev.get(slot).copied().unwrap_or(next_prev[0]);
                gather.push(base + src);
                next_words.push(
                    beams
                        .live
                        .get(slot)
                        .map(|&(_, n)| beams.arena.token[n as usize])
                        .unwrap_or(special.end),
                );
            }
        }
        if still_active.is_empty() {
            break;
        }
        if still_active.len() != ba {
            let keep = index_tensor(&keep_rows, &device)?;
            enc = enc.index_select(&keep, 0)?;
            proj = proj.index_select(&keep, 0)?;
        }
        let n = still_active.len();
        let g = index_tensor(&gather, &device)?;
        h = out
            .h
            .reshape((ba * k, d))?
            .index_select(&g, 0)?
            .reshape((n, k, d))?;
        c = out
            .c
            .reshape((ba * k, d))?
            .index_select(&g, 0)?
            .reshape((n, k, d))?;
        prev = u32_tensor(next_words, (n, k), &device)?;
        active = still_active;
        step += 1;
    }

    Ok(images
        .into_iter()
        .map(|beams| finish(beams, special, opts))
        .collect())
}

/// The best complete sequence, or the best unfinished one when none completed.
fn finish(beams: ImageBeams, special: SpecialTokens, opts: &BeamOptions) -> BeamResult {
    let key = |score: f32, node: u32| -> f32 {
        match opts.length_penalty {
            LengthPenalty::None => score,
            penalty => penalty.apply(score, beams.arena.tokens(node).len()),
        }
    };
    // First maximum wins, as Python's `list.index(max(list))`.
    let pick = |list: &[(f32, u32)]| -> Option<(f32, u32)> {
        let mut best: Option<(f32, f32, u32)> = None;
        for &(score, node) in list {
            let k = key(score, node);
            if best.is_none_or(|(bk, _, _)| k > bk) {
                best = Some((k, score, node));
            }
        }
        best.map(|(_, s, n)| (s, n))
    };
    let (finished, chosen) = match pick(&beams.complete) {
        Some(c) => (true, Some(c)),
        None => (false, pick(&beams.live)),
    };
    let (score, node) = chosen.unwrap_or((0.0, ROOT));
    let (words, alphas) = beams.arena.path(node);
    let mut tokens = Vec::with_capacity(words.len() + 1);
    tokens.push(special.start);
    tokens.extend(words);
    BeamResult {
        tokens,
        score,
        alphas,
        finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let scores = [0.1f32, 0.9, 0.5, 0.9, f32::NAN, 0.2];
        let got = top_k(2, 3, 3, |r, v| scores[r * 3 + v]);
        assert_eq!(got, vec![(0.9, 1), (0.9, 3), (0.5, 2)]);
    }

    /// Two complete candidates: a short one (1 token, score -1.0) and a long one
    /// (4 tokens, score -2.0).
    fn two_candidates() -> ImageBeams {
        let mut arena = Arena {
            parent: Vec::new(),
            token: Vec::new(),
            alpha: Vec::new(),
            pixels: 0,
        };
        let short = arena.push(ROOT, 9, &[]);
        let mut long = ROOT;
        for t in [3, 4, 5, 9] {
            long = arena.push(long, t, &[]);
        }
        ImageBeams {
            live: Vec::new(),
            complete: vec![(-1.0, short), (-2.0, long)],
            arena,
            done: true,
        }
    }

    fn pick_with(penalty: LengthPenalty) -> usize {
        let special = SpecialTokens {
            start: 0,
            end: 9,
            unk: None,
        };
        let opts = BeamOptions {
            length_penalty: penalty,
            ..BeamOptions::default()
        };
        finish(two_candidates(), special, &opts).tokens.len() - 1
    }

    #[test]
    fn length_penalties_pick_as_computed() {
        // None: -1.0 > -2.0, the short one.
        assert_eq!(pick_with(LengthPenalty::None), 1);
        // Average: -1.0/1 = -1.0 < -2.0/4 = -0.5, the long one.
        assert_eq!(pick_with(LengthPenalty::Average), 4);
        // Wu alpha=1: short -1.0/1 = -1.0; long -2.0/1.5 = -1.333: the short one.
        assert_eq!(pick_with(LengthPenalty::Wu { alpha: 1.0 }), 1);
        // Wu alpha=3: long -2.0/3.375 = -0.593 > -1.0: the long one.
        assert_eq!(pick_with(LengthPenalty::Wu { alpha: 3.0 }), 4);
        // Power alpha=0.4: long -2.0/4^0.4 = -1.149 < -1.0: short; alpha=0.6: -0.871: long.
        assert_eq!(pick_with(LengthPenalty::Power { alpha: 0.4 }), 1);
        assert_eq!(pick_with(LengthPenalty::Power { alpha: 0.6 }), 4);
    }

    #[test]
    fn wu_penalty_values() {
        let wu = LengthPenalty::Wu { alpha: 1.0 };
        assert!((wu.apply(-3.0, 7) - (-3.0 / 2.0)).abs() < 1e-6);
        assert_eq!(LengthPenalty::Average.apply(-3.0, 0), -3.0);
        assert_eq!(LengthPenalty::None.apply(-3.0, 7), -3.0);
    }

    #[test]
    fn trigram_blocking_finds_repeats() {
        // <s> a b c a b -> "c" would repeat "a b c"
        assert_eq!(trigram_blocked(&[0, 1, 2, 3, 1, 2]), vec![3]);
        assert!(trigram_blocked(&[0, 1]).is_empty());
    }

    fn tiny(seed: u64) -> (Decoder, Tensor) {
        use crate::model::init::testing::{features, tiny_decoder};
        // Peaked output distributions, so repeats and early ends are likely without the rules.
        let (_, decoder, cfg) = tiny_decoder(4, (6, 5, 7), 8, seed, 30.0, |_| false);
        (decoder, features(4, &cfg, seed))
    }

    const SPECIAL: SpecialTokens = SpecialTokens {
        start: 0,
        end: 1,
        unk: None,
    };

    fn search(seed: u64, opts: &BeamOptions) -> Vec<BeamResult> {
        let (decoder, enc) = tiny(seed);
        beam_search(&decoder, &enc, SPECIAL, opts).unwrap()
    }

    #[test]
    fn no_repeat_and_bad_endings_hold_and_change_what_they_must() {
        let (mut repeats, mut bad_ends, mut finished) = (0, 0, 0);
        let bad = vec![2u32, 3, 4];
        for seed in 0..12 {
            for beam_size in [1, 3] {
                let plain = BeamOptions {
                    beam_size,
                    max_steps: 12,
                    ..Default::default()
                };
                for r in search(seed, &plain) {
                    repeats += r.tokens.windows(2).filter(|w| w[0] == w[1]).count();
                    let n = r.tokens.len();
                    if r.finished && n >= 2 && bad.contains(&r.tokens[n - 2]) {
                        bad_ends += 1;
                    }
                }
                let ruled = BeamOptions {
                    no_repeat: true,
                    bad_endings: bad.clone(),
                    ..plain
                };
                for r in search(seed, &ruled) {
                    assert!(
                        r.tokens.windows(2).all(|w| w[0] != w[1]),
                        "repeat in {:?}",
                        r.tokens
                    );
                    let n = r.tokens.len();
                    if r.finished {
                        finished += 1;
                        assert!(!bad.contains(&r.tokens[n - 2]), "bad ending {:?}", r.tokens);
                    }
                }
            }
        }
        // Without the rules the same models do repeat and end badly, so the checks above bite.
        assert!(
            repeats > 0 && bad_ends > 0,
            "{repeats} repeats, {bad_ends} bad ends"
        );
        assert!(finished > 0);
    }

    #[test]
    fn temperature_one_is_the_default_search_and_others_rescale_scores() {
        let plain = BeamOptions {
            beam_size: 3,
            max_steps: 10,
            ..Default::default()
        };
        let one = BeamOptions {
            temperature: 1.0,
            ..plain.clone()
        };
        assert_eq!(search(5, &plain), search(5, &one));
        let hot = BeamOptions {
            temperature: 4.0,
            ..plain.clone()
        };
        let a = search(5, &plain);
        let b = search(5, &hot);
        assert!(
            a.iter().zip(&b).any(|(x, y)| x.score != y.score),
            "a temperature of 4 flattens the distribution, so scores change"
        );
    }

    #[test]
    fn rules_do_not_depend_on_the_batch() {
        let (decoder, enc) = tiny(3);
        let opts = BeamOptions {
            beam_size: 3,
            max_steps: 10,
            no_repeat: true,
            bad_endings: vec![2, 3],
            temperature: 0.7,
            length_penalty: LengthPenalty::Wu { alpha: 0.9 },
            ..Default::default()
        };
        let all = beam_search(&decoder, &enc, SPECIAL, &opts).unwrap();
        for (i, together) in all.iter().enumerate() {
            let one = beam_search(&decoder, &enc.narrow(0, i, 1).unwrap(), SPECIAL, &opts).unwrap();
            assert_eq!(one[0].tokens, together.tokens, "image {i}");
        }
    }
}
