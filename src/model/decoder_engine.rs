//! The decoder's inference engine on the CPU: the same step as [`Decoder::step`], with its
//! products through packed [`Dense`] layers (f32, or bfloat16 products with f32 sums) instead
//! of candle's matmuls, and the LSTM cell's gates computed in one pass over plain buffers.
//!
//! Why: at inference a step multiplies `images x beams` rows by about 12 million weights (the
//! tutorial's sizes: the LSTM's 2,560 + 512 inputs to 2,048 gates, the 9,490-word classifier,
//! the attention's projections), so a step is bound by reading the weights; candle packs the
//! transposed weights again on every call. Packed once, in bf16 at half the bytes, they are
//! read straight from the panels. The fusions are exact rearrangements: `decoder_att` and
//! `f_beta` read the same `h`, so they are one layer; the LSTM's `x W_ih^T + h W_hh^T` is one
//! product of `[x, h]` with `[W_ih, W_hh]` and the bias `b_ih + b_hh`; `init_h` and `init_c`
//! read the same mean.
//!
//! What stays f32 whatever the precision: the attention's scores, softmax and weighted sum (the
//! fused kernels of [`crate::kernels::attention`]), the gates' nonlinearities, the cell state,
//! and everything the beam search does with the scores.

use candle_core::{Result, Tensor};

use super::decoder::{Decoder, StepOutput};
use crate::kernels::attention::{attention_scores, attention_weighted_sum};
use crate::kernels::bf16::Precision;
use crate::kernels::dense::Dense;
use crate::kernels::gemm::WeightFormat;
use crate::kernels::isa::KernelKind;

/// A decoder's weights packed for inference (see the module docs).
#[derive(Debug)]
pub struct DecoderEngine {
    precision: Precision,
    kernel: KernelKind,
    /// `(V, M)` word embeddings, row-major.
    embedding: Vec<f32>,
    embed_dim: usize,
    encoder_dim: usize,
    decoder_dim: usize,
    attention_dim: usize,
    vocab: usize,
    /// `encoder_att`: E to A (per encoder position, once per image).
    encoder_att: Dense,
    /// `[init_h; init_c]`: E to 2D (the mean encoding, once per image).
    init: Dense,
    /// `[decoder_att; f_beta]`: D to A + E.
    from_h: Dense,
    /// `full_att`'s weight `(A,)` and bias, for the fused score kernel.
    full_att_weight: Tensor,
    full_att_bias: Tensor,
    /// `[W_ih, W_hh]` with `b_ih + b_hh`: M + E + D to 4D.
    lstm: Dense,
    /// `fc`: D to V.
    fc: Dense,
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// The row-wise concatenation of `(n, k_i)` matrices given as row-major buffers.
fn concat_columns(parts: &[(&[f32], usize)], rows: usize) -> Vec<f32> {
    let width: usize = parts.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(rows * width);
    for r in 0..rows {
        for &(data, k) in parts {
            out.extend_from_slice(&data[r * k..(r + 1) * k]);
        }
    }
    out
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl DecoderEngine {
    /// Packs `decoder`'s current weights for `precision` (bf16: every product's weights rounded
    /// to bfloat16 once, here).
    pub fn build(decoder: &Decoder, precision: Precision) -> Result<Self> {
        let kernel = KernelKind::detect();
        let format = match (precision, kernel) {
            (Precision::Bf16, _) => WeightFormat::Bf16,
            (Precision::F32, KernelKind::Avx512) => WeightFormat::F32Wide,
            (Precision::F32, _) => WeightFormat::F32,
        };
        let att = &decoder.attention;
        let (v, m) = decoder.embedding.dims2()?;
        let (a, e) = att.encoder_att.weight.dims2()?;
        let d = att.decoder_att.weight.dim(1)?;
        let dense = |weights: &[(&Tensor, &Tensor)], k: usize| -> Result<Dense> {
            let mut w = Vec::new();
            let mut b = Vec::new();
            for (wt, bt) in weights {
                w.extend(values(wt)?);
                b.extend(values(bt)?);
            }
            Ok(Dense::pack(format, &w, &b, k))
        };
        let lstm = &decoder.decode_step;
        let (w_ih, w_hh) = (values(&lstm.weight_ih)?, values(&lstm.weight_hh)?);
        let lstm_weight = concat_columns(&[(&w_ih, m + e), (&w_hh, d)], 4 * d);
        let lstm_bias = values(&(&lstm.bias_ih + &lstm.bias_hh)?)?;
        Ok(DecoderEngine {
            precision,
            kernel,
            embedding: values(&decoder.embedding)?,
            embed_dim: m,
            encoder_dim: e,
            decoder_dim: d,
            attention_dim: a,
            vocab: v,
            encoder_att: dense(&[(&att.encoder_att.weight, &att.encoder_att.bias)], e)?,
            init: dense(
                &[
                    (&decoder.init_h.weight, &decoder.init_h.bias),
                    (&decoder.init_c.weight, &decoder.init_c.bias),
                ],
                e,
            )?,
            from_h: dense(
                &[
                    (&att.decoder_att.weight, &att.decoder_att.bias),
                    (&decoder.f_beta.weight, &decoder.f_beta.bias),
                ],
                d,
            )?,
            full_att_weight: att.full_att.weight.flatten_all()?,
            full_att_bias: att.full_att.bias.reshape((1, 1, 1))?,
            lstm: Dense::pack(format, &lstm_weight, &lstm_bias, m + e + d),
            fc: dense(&[(&decoder.fc.weight, &decoder.fc.bias)], d)?,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of packed weights a step reads (the per-image projections left out).
    pub fn step_bytes(&self) -> usize {
        self.from_h.bytes() + self.lstm.bytes() + self.fc.bytes()
    }

    /// `x W^T + b` through `layer` for the rows of `x` (row-major, `rows x in`).
    fn apply(&self, layer: &Dense, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * layer.out_features()];
        layer.run(x, rows, &mut out, self.kernel, &mut Vec::new());
        out
    }

    /// [`super::attention::Attention::project_encoder`]: `(B, P, E)` to `(B, P, A)`.
    pub fn project_encoder(&self, encoder_out: &Tensor) -> Result<Tensor> {
        let (b, p, _) = encoder_out.dims3()?;
        let out = self.apply(&self.encoder_att, &values(encoder_out)?, b * p);
        Tensor::from_vec(out, (b, p, self.attention_dim), encoder_out.device())
    }

    /// [`Decoder::init_hidden_state`]: `(h, c)`, each `(B, D)`.
    pub fn init_hidden_state(&self, encoder_out: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = encoder_out.dim(0)?;
        let mean = values(&encoder_out.mean(1)?)?;
        let both = self.apply(&self.init, &mean, b);
        let both = Tensor::from_vec(both, (b, 2 * self.decoder_dim), encoder_out.device())?;
        Ok((
            both.narrow(1, 0, self.decoder_dim)?.contiguous()?,
            both.narrow(1, self.decoder_dim, self.decoder_dim)?
                .contiguous()?,
        ))
    }

    /// [`Decoder::step`] without dropout.
    pub fn step(
        &self,
        encoder_out: &Tensor,
        encoder_proj: &Tensor,
        prev_words: &Tensor,
        h: &Tensor,
        c: &Tensor,
    ) -> Result<StepOutput> {
        let (b, q, d) = h.dims3()?;
        let (m, e, a) = (self.embed_dim, self.encoder_dim, self.attention_dim);
        let rows = b * q;
        let device = h.device();
        let h_rows = values(h)?;
        let c_rows = values(c)?;
        let words = prev_words.flatten_all()?.to_vec1::<u32>()?;
        if words.len() != rows {
            candle_core::bail!("decoder step: {} words for {rows} states", words.len());
        }

        // decoder_att(h) and f_beta(h) in one product.
        let from_h = self.apply(&self.from_h, &h_rows, rows);
        let width = a + e;
        let mut att2 = Vec::with_capacity(rows * a);
        for r in 0..rows {
            att2.extend_from_slice(&from_h[r * width..r * width + a]);
        }
        let att2 = Tensor::from_vec(att2, (b, q, a), device)?;
        let scores = attention_scores(encoder_proj, &att2, &self.full_att_weight)?
            .broadcast_add(&self.full_att_bias)?;
        let alpha = candle_nn::ops::softmax_last_dim(&scores)?;
        let awe = values(&attention_weighted_sum(&alpha, encoder_out)?)?;

        // The LSTM's input row: [embedding, sigmoid(f_beta(h)) * awe, h].
        let k = m + e + d;
        let mut input = vec![0f32; rows * k];
        for (r, row) in input.chunks_exact_mut(k).enumerate() {
            let word = words[r] as usize;
            if word >= self.vocab {
                candle_core::bail!(
                    "decoder step: word id {word} outside the {} words",
                    self.vocab
                );
            }
            row[..m].copy_from_slice(&self.embedding[word * m..(word + 1) * m]);
            let gate = &from_h[r * width + a..(r + 1) * width];
            let weighted = &awe[r * e..(r + 1) * e];
            for ((dst, &g), &w) in row[m..m + e].iter_mut().zip(gate).zip(weighted) {
                *dst = sigmoid(g) * w;
            }
            row[m + e..].copy_from_slice(&h_rows[r * d..(r + 1) * d]);
        }
        let gates = self.apply(&self.lstm, &input, rows);

        // The cell, gates i, f, g, o as PyTorch's LSTMCell orders them.
        let mut h_next = vec![0f32; rows * d];
        let mut c_next = vec![0f32; rows * d];
        for r in 0..rows {
            let g = &gates[r * 4 * d..(r + 1) * 4 * d];
            for j in 0..d {
                let (i, f, cell, o) = (
                    sigmoid(g[j]),
                    sigmoid(g[d + j]),
                    g[2 * d + j].tanh(),
                    sigmoid(g[3 * d + j]),
                );
                let c_new = f * c_rows[r * d + j] + i * cell;
                c_next[r * d + j] = c_new;
                h_next[r * d + j] = o * c_new.tanh();
            }
        }
        let logits = self.apply(&self.fc, &h_next, rows);
        Ok(StepOutput {
            logits: Tensor::from_vec(logits, (b, q, self.vocab), device)?,
            h: Tensor::from_vec(h_next, (b, q, d), device)?,
            c: Tensor::from_vec(c_next, (b, q, d), device)?,
            alpha,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::kernels::bf16::Precision;
    use crate::model::decoder::DecoderPath;
    use crate::model::init::testing::{features, tiny_decoder};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// The engine's projection, initial state and step against candle's ops on the same
    /// tensors, for odd sizes (7 and 13 wide layers, 1 and 3 images, 1 and 3 states each):
    /// f32 to rounding, bf16 within 2% of each output's largest value.
    #[test]
    fn engine_matches_the_reference_step_in_f32_and_bf16() {
        for (precision, bound) in [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2)] {
            for (images, states) in [(1, 1), (3, 3), (3, 1)] {
                let (_, mut reference, cfg) = tiny_decoder(4, (7, 13, 7), 11, 5, 1.0, |_| false);
                reference.set_inference_path(DecoderPath::Reference);
                let mut fast = reference.clone();
                fast.set_inference_path(DecoderPath::Auto);
                fast.set_precision(precision);
                let enc = features(images, &cfg, 9);
                assert!(fast.inference_engine(&[&enc]).unwrap().is_some());
                assert!(reference.inference_engine(&[&enc]).unwrap().is_none());

                let (pf, pr) = (
                    fast.project_encoder(&enc).unwrap(),
                    reference.project_encoder(&enc).unwrap(),
                );
                assert!(max_rel_diff(&pf, &pr) < bound, "{precision} projection");
                let (hf, _) = fast.init_hidden_state(&enc).unwrap();
                let (h0, c0) = reference.init_hidden_state(&enc).unwrap();
                assert!(max_rel_diff(&hf, &h0) < bound, "{precision} initial state");

                let expand = |t: &Tensor| {
                    let d = t.dim(1).unwrap();
                    let rows: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                    let mut out = Vec::new();
                    for (i, row) in rows.chunks(d).enumerate() {
                        for s in 0..states {
                            // Different states per beam: scale each copy.
                            out.extend(row.iter().map(|v| v * (1.0 + 0.1 * (s + i) as f32)));
                        }
                    }
                    Tensor::from_vec(out, (images, states, d), &Device::Cpu).unwrap()
                };
                let (h, c) = (expand(&h0), expand(&c0));
                let words: Vec<u32> = (0..images * states).map(|i| (i * 4 % 11) as u32).collect();
                let words = Tensor::from_vec(words, (images, states), &Device::Cpu).unwrap();
                let a = fast.step(&enc, &pr, &words, &h, &c, None).unwrap();
                let b = reference.step(&enc, &pr, &words, &h, &c, None).unwrap();
                for (name, x, y) in [
                    ("logits", &a.logits, &b.logits),
                    ("h", &a.h, &b.h),
                    ("c", &a.c, &b.c),
                    ("alpha", &a.alpha, &b.alpha),
                ] {
                    assert_eq!(x.dims(), y.dims(), "{name}");
                    assert_eq!(x.dtype(), DType::F32);
                    let diff = max_rel_diff(x, y);
                    assert!(
                        diff < bound,
                        "{precision} {images}x{states} {name}: relative difference {diff}"
                    );
                }
            }
        }
    }

    /// Trainable weights change under the engine's feet, so a decoder of `Var`s never packs.
    #[test]
    fn trainable_decoders_take_candles_ops() {
        let (_, decoder, cfg) = tiny_decoder(4, (7, 13, 7), 11, 5, 1.0, |n| n.contains("fc"));
        let enc = features(2, &cfg, 1);
        assert!(decoder.inference_engine(&[&enc]).unwrap().is_none());
    }
}
