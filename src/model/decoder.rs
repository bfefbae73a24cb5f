//! The LSTM decoder with attention (the tutorial's `DecoderWithAttention`), with its parameter
//! names: `embedding`, `attention.*`, `decode_step` (an `LSTMCell`: `weight_ih`, `weight_hh`,
//! `bias_ih`, `bias_hh`, gates i, f, g, o), `init_h`, `init_c`, `f_beta`, `fc`.

use std::sync::{Arc, Mutex};

use candle_core::{DType, IndexOp, Module, Result, Tensor, D};

use super::attention::Attention;
use super::config::ModelConfig;
use super::decoder_engine::DecoderEngine;
use super::encoder::default_precision;
use super::encoder::layers::Linear;
use super::weights::WeightsView;
use crate::kernels::bf16::Precision;
use crate::kernels::eligible;
use crate::rng::SplitMix64;

/// PyTorch's `nn.LSTMCell`.
#[derive(Debug, Clone)]
pub struct LstmCell {
    pub weight_ih: Tensor,
    pub weight_hh: Tensor,
    pub bias_ih: Tensor,
    pub bias_hh: Tensor,
}

impl LstmCell {
    pub fn load(w: &WeightsView, input: usize, hidden: usize) -> Self {
        LstmCell {
            weight_ih: w.get("weight_ih", &[4 * hidden, input]),
            weight_hh: w.get("weight_hh", &[4 * hidden, hidden]),
            bias_ih: w.get("bias_ih", &[4 * hidden]),
            bias_hh: w.get("bias_hh", &[4 * hidden]),
        }
    }

    /// One step on `(R, input)` inputs and `(R, hidden)` states.
    pub fn forward(&self, x: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let gates = x
            .matmul(&self.weight_ih.t()?)?
            .broadcast_add(&self.bias_ih)?
            .add(
                &h.matmul(&self.weight_hh.t()?)?
                    .broadcast_add(&self.bias_hh)?,
            )?;
        let chunks = gates.chunk(4, 1)?;
        let i = candle_nn::ops::sigmoid(&chunks[0])?;
        let f = candle_nn::ops::sigmoid(&chunks[1])?;
        let g = chunks[2].tanh()?;
        let o = candle_nn::ops::sigmoid(&chunks[3])?;
        let c_next = ((f * c)? + (i * g)?)?;
        let h_next = (o * c_next.tanh()?)?;
        Ok((h_next, c_next))
    }
}

/// Output of one decoding step for `Q` states per image.
pub struct StepOutput {
    /// `(B, Q, V)` scores before softmax.
    pub logits: Tensor,
    pub h: Tensor,
    pub c: Tensor,
    /// `(B, Q, P)` attention weights used in this step.
    pub alpha: Tensor,
}

/// Output of the teacher-forced pass.
pub struct TeacherForced {
    /// `(B, T, V)` scores, zero beyond each caption's decode length (batch sorted by length).
    pub predictions: Tensor,
    /// `(B, T, P)` attention weights, zero beyond each decode length.
    pub alphas: Tensor,
    /// Decode length of each row (caption length - 1), in sorted order.
    pub decode_lengths: Vec<usize>,
    /// `sort_ind`: row i of the outputs is input row `sort_ind[i]`.
    pub sort_ind: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    pub embedding: Tensor,
    pub attention: Attention,
    pub decode_step: LstmCell,
    pub init_h: Linear,
    pub init_c: Linear,
    pub f_beta: Linear,
    pub fc: Linear,
    pub dropout: f32,
    pub vocab_size: usize,
    /// What the inference engine's products compute in.
    precision: Precision,
    path: DecoderPath,
    /// The inference engine, built on first use. Clones share it: they share the (immutable)
    /// tensors it was packed from.
    engine: Arc<Mutex<Option<Arc<DecoderEngine>>>>,
}

/// Which implementation runs the decoder at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderPath {
    /// The packed engine ([`DecoderEngine`]) on the CPU for f32 tensors that are not trainable
    /// `Var`s (a trained model's weights change, a loaded model's do not); candle's ops
    /// otherwise.
    Auto,
    /// Always candle's ops, as in training.
    Reference,
}

/// Environment variable that picks the default [`DecoderPath`]: `reference` or `auto`.
pub const DECODER_PATH_ENV: &str = "GAZE_DECODER_PATH";

impl DecoderPath {
    /// From [`DECODER_PATH_ENV`]; `Auto` when unset or unrecognised (with a warning).
    pub fn from_env() -> Self {
        match std::env::var(DECODER_PATH_ENV) {
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "reference" | "ref" => DecoderPath::Reference,
                "auto" | "fast" | "" => DecoderPath::Auto,
                other => {
                    tracing::warn!(
                        value = other,
                        "{DECODER_PATH_ENV} is neither \"reference\" nor \"auto\"; using auto"
                    );
                    DecoderPath::Auto
                }
            },
            Err(_) => DecoderPath::Auto,
        }
    }
}

impl Decoder {
    pub fn load(w: &WeightsView, cfg: &ModelConfig) -> Self {
        let (e, d, a, m, v) = (
            cfg.encoder_dim(),
            cfg.decoder_dim,
            cfg.attention_dim,
            cfg.embed_dim,
            cfg.vocab_size,
        );
        Decoder {
            embedding: w.pp("embedding").get("weight", &[v, m]),
            attention: Attention::load(&w.pp("attention"), e, d, a),
            decode_step: LstmCell::load(&w.pp("decode_step"), m + e, d),
            init_h: Linear::load(&w.pp("init_h"), e, d),
            init_c: Linear::load(&w.pp("init_c"), e, d),
            f_beta: Linear::load(&w.pp("f_beta"), d, e),
            fc: Linear::load(&w.pp("fc"), d, v),
            dropout: cfg.dropout,
            vocab_size: v,
            precision: default_precision(),
            path: DecoderPath::from_env(),
            engine: Arc::new(Mutex::new(None)),
        }
    }

    /// What the inference engine's products compute in (the precision new models start with,
    /// [`super::encoder::set_default_precision`], unless set). Training and the reference path
    /// are f32 whatever this says.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the inference engine's precision; an engine built in another one is dropped.
    pub fn set_precision(&mut self, precision: Precision) {
        if precision != self.precision {
            self.precision = precision;
            self.engine = Arc::new(Mutex::new(None));
        }
    }

    pub fn inference_path(&self) -> DecoderPath {
        self.path
    }

    pub fn set_inference_path(&mut self, path: DecoderPath) {
        self.path = path;
    }

    fn tensors(&self) -> [&Tensor; 19] {
        let (att, lstm) = (&self.attention, &self.decode_step);
        [
            &self.embedding,
            &att.encoder_att.weight,
            &att.encoder_att.bias,
            &att.decoder_att.weight,
            &att.decoder_att.bias,
            &att.full_att.weight,
            &att.full_att.bias,
            &lstm.weight_ih,
            &lstm.weight_hh,
            &lstm.bias_ih,
            &lstm.bias_hh,
            &self.init_h.weight,
            &self.init_h.bias,
            &self.init_c.weight,
            &self.init_c.bias,
            &self.f_beta.weight,
            &self.f_beta.bias,
            &self.fc.weight,
            &self.fc.bias,
        ]
    }

    /// The inference engine for these inputs, built on first use; `None` where candle's ops
    /// run (see [`DecoderPath::Auto`]).
    pub fn inference_engine(&self, inputs: &[&Tensor]) -> Result<Option<Arc<DecoderEngine>>> {
        if self.path == DecoderPath::Reference || !eligible(inputs) {
            return Ok(None);
        }
        let all = self.tensors();
        if !eligible(&all) || all.iter().any(|t| t.is_variable()) {
            return Ok(None);
        }
        let mut slot = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = slot.as_ref() {
            return Ok(Some(engine.clone()));
        }
        let engine = Arc::new(DecoderEngine::build(self, self.precision)?);
        *slot = Some(engine.clone());
        Ok(Some(engine))
    }

    /// [`Attention::project_encoder`], through the inference engine where it runs.
    pub fn project_encoder(&self, encoder_out: &Tensor) -> Result<Tensor> {
        match self.inference_engine(&[encoder_out])? {
            Some(engine) => engine.project_encoder(&encoder_out.contiguous()?),
            None => self.attention.project_encoder(encoder_out),
        }
    }

    /// `(h, c)`, each `(B, D)`, from the mean of the `(B, P, E)` encoder output.
    pub fn init_hidden_state(&self, encoder_out: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some(engine) = self.inference_engine(&[encoder_out])? {
            return engine.init_hidden_state(encoder_out);
        }
        let mean = encoder_out.mean(1)?;
        Ok((self.init_h.forward(&mean)?, self.init_c.forward(&mean)?))
    }

    /// Embeddings of `(B, Q)` word ids: `(B, Q, M)`.
    pub fn embed(&self, words: &Tensor) -> Result<Tensor> {
        let (b, q) = words.dims2()?;
        let flat = self.embedding.index_select(&words.flatten_all()?, 0)?;
        flat.reshape((b, q, ()))
    }

    /// One decoding step for `Q` states per image. `prev_words` is `(B, Q)` (u32), `h` and `c`
    /// are `(B, Q, D)`, `encoder_out` is `(B, P, E)` and `encoder_proj` its projection.
    /// `dropout_mask`, when training, is a `(B*Q, D)` mask already scaled by `1 / (1 - p)`,
    /// applied to the hidden state before `fc` (the tutorial's `fc(dropout(h))`).
    pub fn step(
        &self,
        encoder_out: &Tensor,
        encoder_proj: &Tensor,
        prev_words: &Tensor,
        h: &Tensor,
        c: &Tensor,
        dropout_mask: Option<&Tensor>,
    ) -> Result<StepOutput> {
        if dropout_mask.is_none() {
            if let Some(engine) = self.inference_engine(&[encoder_out, encoder_proj, h, c])? {
                return engine.step(encoder_out, encoder_proj, prev_words, h, c);
            }
        }
        let (b, q, d) = h.dims3()?;
        let emb = self.embed(prev_words)?;
        let (awe, alpha) = self.attention.forward(encoder_out, encoder_proj, h)?;
        let gate = candle_nn::ops::sigmoid(&self.f_beta.forward(h)?)?;
        let awe = (gate * awe)?;
        let input = Tensor::cat(&[&emb, &awe], D::Minus1)?;
        let rows = b * q;
        let (h, c) = self.decode_step.forward(
            &input.reshape((rows, ()))?,
            &h.reshape((rows, d))?,
            &c.reshape((rows, d))?,
        )?;
        let out = match dropout_mask {
            Some(mask) => (&h * mask)?,
            None => h.clone(),
        };
        let logits = self.fc.forward(&out)?.reshape((b, q, self.vocab_size))?;
        Ok(StepOutput {
            logits,
            h: h.reshape((b, q, d))?,
            c: c.reshape((b, q, d))?,
            alpha,
        })
    }

    /// The tutorial's teacher-forced loop: sorts the batch by caption length (descending), then
    /// at step t runs only the first `bt` rows, those whose decode length exceeds t, and hands
    /// each step's `(bt, V)` scores and `(bt, P)` attention weights to `on_step`.
    ///
    /// `encoder_out` is `(B, S, S, E)` or `(B, P, E)`; `captions` `(B, L)` u32 ids; `lengths`
    /// the caption lengths including `<start>` and `<end>`.
    pub fn teacher_forced_steps(
        &self,
        encoder_out: &Tensor,
        captions: &Tensor,
        lengths: &[usize],
        opts: &mut TeacherOptions,
        mut on_step: impl FnMut(&TeacherStep) -> Result<()>,
    ) -> Result<SortedBatch> {
        let b = encoder_out.dim(0)?;
        let e = *encoder_out.dims().last().expect("rank >= 3");
        let device = encoder_out.device().clone();
        let encoder_out = encoder_out.reshape((b, (), e))?;
        // A stable sort by descending length (torch.sort is not guaranteed stable; ties are
        // only a row permutation of equal-length captions).
        let mut sort_ind: Vec<usize> = (0..b).collect();
        sort_ind.sort_by(|&x, &y| lengths[y].cmp(&lengths[x]));
        let idx = Tensor::from_vec(
            sort_ind.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            b,
            &device,
        )?;
        let encoder_out = encoder_out.index_select(&idx, 0)?;
        let captions = captions.index_select(&idx, 0)?;
        let decode_lengths: Vec<usize> = sort_ind
            .iter()
            .map(|&i| lengths[i].saturating_sub(1))
            .collect();
        let max_t = decode_lengths.iter().copied().max().unwrap_or(0);
        let d = self.decode_step.weight_hh.dim(1)?;

        let encoder_proj = self.attention.project_encoder(&encoder_out)?;
        let (h0, c0) = self.init_hidden_state(&encoder_out)?;
        let (mut h, mut c) = (h0.unsqueeze(1)?, c0.unsqueeze(1)?);
        let mut previous_logits: Option<Tensor> = None;
        for t in 0..max_t {
            let bt = decode_lengths.iter().filter(|&&l| l > t).count();
            let mut words = captions.i((..bt, t..t + 1))?;
            if let (Some(prev), Some(rng)) = (&previous_logits, opts.rng.as_deref_mut()) {
                if opts.sampling_prob > 0.0 {
                    // Scheduled sampling: some rows read the model's own previous word.
                    let own = prev.narrow(0, 0, bt)?.argmax(D::Minus1)?.unsqueeze(1)?;
                    let take: Vec<u8> = (0..bt)
                        .map(|_| u8::from(rng.next_f64() < opts.sampling_prob as f64))
                        .collect();
                    let take = Tensor::from_vec(take, (bt, 1), &device)?;
                    words = take.where_cond(&own, &words)?;
                }
            }
            let mask = match (opts.dropout, opts.rng.as_deref_mut()) {
                (true, Some(rng)) if self.dropout > 0.0 => {
                    Some(dropout_mask(rng, bt, d, self.dropout, &device)?)
                }
                _ => None,
            };
            let out = self.step(
                &encoder_out.narrow(0, 0, bt)?,
                &encoder_proj.narrow(0, 0, bt)?,
                &words,
                &h.narrow(0, 0, bt)?,
                &c.narrow(0, 0, bt)?,
                mask.as_ref(),
            )?;
            h = out.h;
            c = out.c;
            let logits = out.logits.squeeze(1)?;
            let targets = captions.i((..bt, t + 1))?.contiguous()?;
            on_step(&TeacherStep {
                t,
                bt,
                logits: &logits,
                alpha: &out.alpha.squeeze(1)?,
                targets: &targets,
            })?;
            previous_logits = Some(logits);
        }
        Ok(SortedBatch {
            decode_lengths,
            sort_ind,
        })
    }

    /// The tutorial's teacher-forced `forward` without dropout: predictions and attention
    /// weights for every step, zero-padded beyond each caption's decode length.
    pub fn forward_teacher(
        &self,
        encoder_out: &Tensor,
        captions: &Tensor,
        lengths: &[usize],
    ) -> Result<TeacherForced> {
        let b = encoder_out.dim(0)?;
        let mut preds = Vec::new();
        let mut alphas = Vec::new();
        let sorted = self.teacher_forced_steps(
            encoder_out,
            captions,
            lengths,
            &mut TeacherOptions::default(),
            |s| {
                preds.push(s.logits.pad_with_zeros(0, 0, b - s.bt)?);
                alphas.push(s.alpha.pad_with_zeros(0, 0, b - s.bt)?);
                Ok(())
            },
        )?;
        let dev = encoder_out.device();
        let p =
            encoder_out.elem_count() / (b.max(1) * *encoder_out.dims().last().expect("rank >= 3"));
        let (predictions, alphas) = if preds.is_empty() {
            (
                Tensor::zeros((b, 0, self.vocab_size), DType::F32, dev)?,
                Tensor::zeros((b, 0, p), DType::F32, dev)?,
            )
        } else {
            (Tensor::stack(&preds, 1)?, Tensor::stack(&alphas, 1)?)
        };
        Ok(TeacherForced {
            predictions,
            alphas,
            decode_lengths: sorted.decode_lengths,
            sort_ind: sorted.sort_ind,
        })
    }
}

/// Options of the teacher-forced loop used in training.
#[derive(Default)]
pub struct TeacherOptions<'a> {
    /// Source of dropout masks and scheduled-sampling draws (deterministic, resumable).
    pub rng: Option<&'a mut SplitMix64>,
    /// Apply dropout before `fc` (training).
    pub dropout: bool,
    /// Probability that a row reads its own previous prediction instead of the ground truth.
    pub sampling_prob: f32,
}

/// One step of the teacher-forced loop (rows sorted by decreasing length).
pub struct TeacherStep<'a> {
    pub t: usize,
    pub bt: usize,
    /// `(bt, V)` scores.
    pub logits: &'a Tensor,
    /// `(bt, P)` attention weights.
    pub alpha: &'a Tensor,
    /// `(bt,)` the words to predict.
    pub targets: &'a Tensor,
}

/// How the teacher-forced loop ordered the batch.
pub struct SortedBatch {
    /// Decode length of each row (caption length - 1), in sorted order.
    pub decode_lengths: Vec<usize>,
    /// Row i of the sorted batch is input row `sort_ind[i]`.
    pub sort_ind: Vec<usize>,
}

/// An inverted-dropout mask `(rows, d)`: 0 with probability `p`, else `1 / (1 - p)`.
pub fn dropout_mask(
    rng: &mut SplitMix64,
    rows: usize,
    d: usize,
    p: f32,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let values: Vec<f32> = (0..rows * d)
        .map(|_| if rng.next_f64() < p as f64 { 0.0 } else { keep })
        .collect();
    Tensor::from_vec(values, (rows, d), device)
}
