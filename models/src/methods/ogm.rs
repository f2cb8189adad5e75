//! `ogm` / `ogm-ge`: on-the-fly gradient modulation (BASELINES.md section 2).
//!
//! The joint model and loss; after backward, inside the epoch window, the
//! gradients of the dominant modality's encoder weights are scaled by
//! `k = 1 - tanh(alpha * rho)` before the optimizer adds weight decay and
//! momentum. `ogm-ge` adds Gaussian noise with the standard deviation of
//! each unmodulated gradient tensor to every modulated tensor of every
//! encoder. Scores use the slice logits `z_m = W_m h_m + b/M`, detached.
//!
//! - Two modalities, `official` rule (the code since 2022-05-29):
//!   `rho = s_2 / s_1`; if `rho > 1` the second is damped with
//!   `1 - tanh(alpha rho)`, else the first with `1 - tanh(alpha / rho)`
//!   (a tie damps the first modality in model order, as the official code
//!   damps audio).
//! - More modalities, `official`: `rho_m` is the mean over `k != m` of
//!   `s_m / s_k` (BalanceBenchmark's OGM_GE3) and every modality with
//!   `rho_m > 1` is damped.
//! - `continuous`: `k_m = 1 - tanh(alpha relu(rho_m - 1))` for every
//!   modality, with the same `rho_m`.
//!
//! A modality absent from a batch is left out of that step's comparison
//! (with fewer than two present nothing is damped). Deviation: scores are
//! means over the samples where a modality is present (the official code sums over the batch; with every modality
//! present the ratios are the same). Host reads per step: the M scores.

use super::gradops::{standard_normal, std_unbiased};
use super::{host_labels, joint_forward, sum_over_ranks, upload_batch, Method, StepCtx};
use crate::data::Batch;
use crate::encoders::Encoder;
use crate::metrics::NamedValues;
use crate::rng::Rng;
use crate::trainer::config::{MethodKind, ModulatedTensors, OgmParams, OgmRule, TrainConfig};
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::EpochRecord;
use crate::trainer::stats::Pending;
use crate::trainer::Result;
use mla_core::{Backend, Indices, Tape, Tensor};

/// Label of the noise streams (with the epoch and step).
const NOISE_STREAM: u64 = 0x0_6E0D_0000;

pub struct Ogm {
    kind: MethodKind,
    params: OgmParams,
    seed: u64,
    names: Vec<String>,
    /// `encoder.<modality>.` of each modality.
    prefixes: Vec<String>,
    /// This epoch: sums of k and damped-step counts per modality, steps in the window.
    k_sum: Vec<f64>,
    damped: Vec<u64>,
    steps: u64,
}

impl Ogm {
    pub fn new(cfg: &TrainConfig, layout: &ModelLayout) -> Result<Self> {
        let m = super::balanced_modalities(cfg, layout)?;
        Ok(Ogm {
            kind: cfg.method,
            params: cfg.ogm_params(),
            seed: cfg.seed,
            names: layout.modalities.clone(),
            prefixes: layout
                .modalities
                .iter()
                .map(|m| Encoder::prefix_for(m))
                .collect(),
            k_sum: vec![0.0; m],
            damped: vec![0; m],
            steps: 0,
        })
    }

    fn noise(&self) -> bool {
        self.kind == MethodKind::OgmGe
    }
}

/// Mean probability of the true class over the rows of `logits` (`[n, C]`, host).
pub fn true_class_score(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    let mut sum = 0.0;
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        sum += (row[y as usize] as f64 - max).exp() / z;
    }
    sum / labels.len().max(1) as f64
}

/// Each modality's `rho_m` from its score: for two modalities `s_m / s_other`,
/// for more the mean over the others of `s_m / s_k`. A 0/0 ratio counts as 1.
pub fn ratios(scores: &[f64]) -> Vec<f64> {
    let m = scores.len();
    let ratio = |a: f64, b: f64| {
        let r = a / b;
        if r.is_nan() {
            1.0
        } else {
            r
        }
    };
    (0..m)
        .map(|i| {
            let sum: f64 = (0..m)
                .filter(|&k| k != i)
                .map(|k| ratio(scores[i], scores[k]))
                .sum();
            sum / (m - 1).max(1) as f64
        })
        .collect()
}

/// The coefficients `k_m` (BASELINES.md section 2, step 6; see the module doc).
pub fn coefficients(scores: &[f64], alpha: f64, rule: OgmRule) -> Vec<f64> {
    let rho = ratios(scores);
    let damp = |r: f64| 1.0 - (alpha * r).tanh();
    match rule {
        OgmRule::Continuous => rho.iter().map(|&r| damp((r - 1.0).max(0.0))).collect(),
        OgmRule::Official if scores.len() == 2 => {
            let mut k = vec![1.0; 2];
            if rho[1] > 1.0 {
                k[1] = damp(rho[1]);
            } else {
                k[0] = damp(rho[0]);
            }
            k
        }
        OgmRule::Official => rho
            .iter()
            .map(|&r| if r > 1.0 { damp(r) } else { 1.0 })
            .collect(),
    }
}

/// [`coefficients`] among the modalities present in the batch (`None`:
/// absent, it has no gradient and no score); with fewer than two present
/// nothing is compared and every k is 1.
pub fn present_coefficients(scores: &[Option<f64>], alpha: f64, rule: OgmRule) -> Vec<f64> {
    let present: Vec<usize> = (0..scores.len()).filter(|&m| scores[m].is_some()).collect();
    let mut k = vec![1.0; scores.len()];
    if present.len() >= 2 {
        let s: Vec<f64> = present.iter().map(|&m| scores[m].unwrap_or(0.0)).collect();
        for (&m, v) in present.iter().zip(coefficients(&s, alpha, rule)) {
            k[m] = v;
        }
    }
    k
}

/// Whether OGM modulates a gradient tensor of these dims.
pub fn modulated(dims: &[usize], tensors: ModulatedTensors) -> bool {
    match tensors {
        ModulatedTensors::Weights => dims.len() >= 2,
        ModulatedTensors::ConvKernels => dims.len() == 4,
    }
}

/// `k g + N(0, sigma^2)` with `sigma = std_unbiased(g) + 1e-8` when `noise`
/// is given, else `k g`; `k = 1` without noise returns `g` untouched (so
/// `alpha = 0` is the joint step bit for bit).
pub fn modulate<B: Backend<f32>>(
    g: &Tensor<f32, B>,
    k: f64,
    noise: Option<&mut Rng>,
) -> Result<Tensor<f32, B>> {
    let scaled = if k == 1.0 { g.clone() } else { g.scale(k)? };
    match noise {
        None => Ok(scaled),
        Some(rng) => {
            let sigma = std_unbiased(g)?.affine(1.0, 1e-8)?;
            let eps = standard_normal(g.backend(), g.dims(), rng)?.mul(&sigma)?;
            Ok(scaled.add(&eps)?)
        }
    }
}

impl<B: Backend<f32>> Method<B> for Ogm {
    fn kind(&self) -> MethodKind {
        self.kind
    }

    fn begin_epoch(&mut self, _ctx: &super::EpochCtx<'_, B>) -> Result<()> {
        self.k_sum.iter_mut().for_each(|v| *v = 0.0);
        self.damped.iter_mut().for_each(|v| *v = 0);
        self.steps = 0;
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        let active = self.params.window.contains(ctx.epoch);
        let classes = ctx.layout.num_classes;
        let n = batch.len();
        // A rank's share of the last global batch may be empty.
        let local = if n == 0 {
            None
        } else {
            let inputs = upload_batch(ctx.backend, ctx.layout, batch)?;
            let labels = Indices::new(ctx.backend, &batch.labels)?;
            let tape = Tape::new(ctx.backend);
            let p = ctx.model.track(&tape, |_| true);
            let f = joint_forward(ctx.model, ctx.layout, &p, &tape, inputs, n)?;
            let loss = f.logits.cross_entropy(&labels)?;
            let mut scores = Vec::new();
            if active {
                for (mi, h) in f.feats.iter().enumerate() {
                    let name = &ctx.layout.modalities[mi];
                    let mb = &batch.modalities[ctx.layout.data_index[mi]];
                    scores.push(match h {
                        None => None,
                        Some(h) => {
                            let z = ctx.model.modality_logits(&p, name, &h.detach())?;
                            let y = host_labels(batch, &mb.present);
                            Some(true_class_score(&z.value().to_vec()?, &y, classes))
                        }
                    });
                }
            }
            let g = tape.backward(&loss)?;
            Some((p.gradients(g), loss.into_value(), scores))
        };
        let (mut grads, loss, scores) = match (ctx.dist, local) {
            (None, Some(l)) => l,
            (None, None) => return Ok(()),
            // The scores are the global batch's: per modality, the sum of
            // the true-class probabilities and the rows that have it.
            (Some(d), local) => {
                let m = ctx.layout.modalities.len();
                let mut extra = vec![0f32; 2 * m];
                if let Some((_, _, scores)) = &local {
                    for (mi, s) in scores.iter().enumerate() {
                        if let Some(s) = s {
                            let rows = batch.modalities[ctx.layout.data_index[mi]].present.len();
                            extra[2 * mi] = (s * rows as f64) as f32;
                            extra[2 * mi + 1] = rows as f32;
                        }
                    }
                }
                let l = local.as_ref().map(|(g, l, _)| (g.as_slice(), l));
                let Some(r) = sum_over_ranks(d, ctx.backend, ctx.model, |_| true, l, n, &extra)?
                else {
                    return Ok(());
                };
                let scores = match active {
                    true => (0..m)
                        .map(|mi| {
                            let rows = r.extra[2 * mi + 1];
                            (rows > 0.0).then(|| r.extra[2 * mi] as f64 / rows as f64)
                        })
                        .collect(),
                    false => Vec::new(),
                };
                (r.grads, r.loss, scores)
            }
        };
        if active {
            let k = present_coefficients(&scores, self.params.alpha, self.params.rule);
            let mut rng = Rng::derive(
                self.seed,
                NOISE_STREAM ^ ((ctx.epoch as u64) << 32 | ctx.step as u64),
            );
            for (name, g) in grads.iter_mut() {
                let Some(mi) = self
                    .prefixes
                    .iter()
                    .position(|p| name.starts_with(p.as_str()))
                else {
                    continue;
                };
                if !modulated(g.dims(), self.params.tensors) {
                    continue;
                }
                let noise = self.noise().then_some(&mut rng);
                *g = modulate(g, k[mi], noise)?;
            }
            for (mi, &km) in k.iter().enumerate() {
                self.k_sum[mi] += km;
                self.damped[mi] += u64::from(km < 1.0);
            }
            self.steps += 1;
        }
        ctx.optim.step(ctx.model.params_mut(), &grads)?;
        out.push(ctx.step, None, loss);
        Ok(())
    }

    fn end_epoch(&mut self, record: &mut EpochRecord) -> Result<()> {
        if self.steps == 0 {
            return Ok(());
        }
        let n = self.steps as f64;
        let mut v = NamedValues::default();
        for (mi, name) in self.names.iter().enumerate() {
            v.push(format!("k_mean.{name}"), self.k_sum[mi] / n);
            v.push(
                format!("damped_fraction.{name}"),
                self.damped[mi] as f64 / n,
            );
        }
        record.method_stats = Some(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mla_cpu::Cpu;

    fn lcg(seed: u64, n: usize) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.uniform()).collect()
    }

    #[test]
    fn two_modalities_official_damps_exactly_the_dominant_one() {
        for (i, s) in lcg(1, 400).chunks(2).enumerate() {
            let scores = [s[0] + 1e-3, s[1] + 1e-3];
            let alpha = [0.1, 0.3, 0.8, 2.0][i % 4];
            let k = coefficients(&scores, alpha, OgmRule::Official);
            let rho = ratios(&scores);
            assert!((rho[0] * rho[1] - 1.0).abs() < 1e-12);
            let damped: Vec<usize> = (0..2).filter(|&m| k[m] < 1.0).collect();
            assert_eq!(damped.len(), 1, "{scores:?} {k:?}");
            let d = damped[0];
            assert_eq!(d, usize::from(scores[1] > scores[0]));
            // (0, 1 - tanh(alpha)] in exact arithmetic; tanh rounds to 1 for huge rho.
            assert!(k[d] >= 0.0 && k[d] <= 1.0 - alpha.tanh() + 1e-15);
            assert_eq!(k[1 - d], 1.0);
            // The formula itself, in f64.
            let want = 1.0 - (alpha * (scores[d] / scores[1 - d])).tanh();
            assert!((k[d] - want).abs() < 1e-15, "{} vs {want}", k[d]);
            // Swapping the modality order swaps the coefficients.
            let swapped = coefficients(&[scores[1], scores[0]], alpha, OgmRule::Official);
            assert_eq!(swapped, vec![k[1], k[0]]);
        }
        // A tie damps the first modality, as the official code damps audio.
        let k = coefficients(&[0.5, 0.5], 0.8, OgmRule::Official);
        assert_eq!(k, vec![1.0 - 0.8f64.tanh(), 1.0]);
        // rho = 2, alpha = 0.8 gives k = 0.078 (BASELINES.md).
        let k = coefficients(&[0.25, 0.5], 0.8, OgmRule::Official);
        assert!((k[1] - 0.0784).abs() < 1e-3, "{k:?}");
    }

    #[test]
    fn alpha_zero_never_damps() {
        for rule in OgmRule::ALL {
            for s in lcg(2, 90).chunks(3) {
                assert!(coefficients(s, 0.0, *rule).iter().all(|&k| k == 1.0));
                assert!(coefficients(&s[..2], 0.0, *rule).iter().all(|&k| k == 1.0));
            }
        }
    }

    #[test]
    fn continuous_rule_and_three_modalities_follow_their_formulas() {
        let s = [0.2, 0.5, 0.9];
        let rho = ratios(&s);
        for m in 0..3 {
            let direct: f64 = (0..3).filter(|&k| k != m).map(|k| s[m] / s[k]).sum::<f64>() / 2.0;
            assert!((rho[m] - direct).abs() < 1e-15);
        }
        let k = coefficients(&s, 0.5, OgmRule::Official);
        for m in 0..3 {
            let want = if rho[m] > 1.0 {
                1.0 - (0.5 * rho[m]).tanh()
            } else {
                1.0
            };
            assert_eq!(k[m], want);
        }
        let k = coefficients(&s, 0.5, OgmRule::Continuous);
        for m in 0..3 {
            assert_eq!(k[m], 1.0 - (0.5 * (rho[m] - 1.0).max(0.0)).tanh());
        }
        // Continuous at a tie is 1 for both (no jump).
        assert_eq!(
            coefficients(&[0.4, 0.4], 0.8, OgmRule::Continuous),
            vec![1.0, 1.0]
        );
    }

    #[test]
    fn true_class_score_is_the_mean_softmax_probability() {
        let logits: Vec<f32> = lcg(3, 12).iter().map(|v| (v * 6.0 - 3.0) as f32).collect();
        let labels = [2u32, 0, 1, 3];
        let mut want = 0.0;
        for (r, &y) in labels.iter().enumerate() {
            let row = &logits[r * 3..r * 3 + 3];
            let y = y as usize % 3;
            let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
            want += (row[y] as f64).exp() / z;
        }
        let labels3: Vec<u32> = labels.iter().map(|y| y % 3).collect();
        let got = true_class_score(&logits, &labels3, 3);
        assert!((got - want / 4.0).abs() < 1e-12);
    }

    #[test]
    fn modulation_scales_by_k_and_adds_noise_of_the_gradient_std() {
        let n = 20_000;
        let g: Vec<f32> = lcg(4, n).iter().map(|v| (v * 3.0 - 1.0) as f32).collect();
        let t = Tensor::from_slice(&Cpu, &g, vec![100, 200]).unwrap();
        let k = 0.37;
        let plain = modulate(&t, k, None).unwrap().to_vec().unwrap();
        for (a, b) in plain.iter().zip(&g) {
            assert!(((*a as f64) - k * (*b as f64)).abs() <= 1e-6 * (b.abs() as f64 + 1.0));
        }
        // k = 1 without noise returns the gradient unchanged (bit for bit).
        assert_eq!(modulate(&t, 1.0, None).unwrap().to_vec().unwrap(), g);
        let mean: f64 = g.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var: f64 = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sigma = var.sqrt() + 1e-8;
        let dev = std_unbiased(&t).unwrap().to_scalar().unwrap() as f64;
        assert!((dev - var.sqrt()).abs() < 1e-5, "{dev} vs {}", var.sqrt());
        let mut rng = Rng::new(9);
        let noisy = modulate(&t, k, Some(&mut rng)).unwrap().to_vec().unwrap();
        let eps: Vec<f64> = noisy
            .iter()
            .zip(&g)
            .map(|(a, b)| *a as f64 - k * *b as f64)
            .collect();
        let em = eps.iter().sum::<f64>() / n as f64;
        let es = (eps.iter().map(|e| (e - em).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        // 20,000 draws: the mean is within 4 standard errors of 0, the std within 3%.
        assert!(em.abs() < 4.0 * sigma / (n as f64).sqrt(), "{em}");
        assert!((es / sigma - 1.0).abs() < 0.03, "{es} vs {sigma}");
        // The same stream gives the same noise.
        let again = modulate(&t, k, Some(&mut Rng::new(9)))
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(again, noisy);
    }

    #[test]
    fn absent_modalities_are_left_out_of_the_comparison() {
        let k = present_coefficients(&[Some(0.2), None, Some(0.6)], 0.8, OgmRule::Official);
        assert_eq!(k, {
            let two = coefficients(&[0.2, 0.6], 0.8, OgmRule::Official);
            vec![two[0], 1.0, two[1]]
        });
        // One modality present: nothing to compare, no damping.
        assert_eq!(
            present_coefficients(&[None, Some(0.9)], 0.8, OgmRule::Official),
            vec![1.0, 1.0]
        );
    }

    #[test]
    fn modulated_tensor_sets() {
        assert!(modulated(&[4, 3], ModulatedTensors::Weights));
        assert!(modulated(&[8, 1, 3, 3], ModulatedTensors::Weights));
        assert!(!modulated(&[8], ModulatedTensors::Weights));
        assert!(!modulated(&[4, 3], ModulatedTensors::ConvKernels));
        assert!(modulated(&[8, 1, 3, 3], ModulatedTensors::ConvKernels));
    }
}
