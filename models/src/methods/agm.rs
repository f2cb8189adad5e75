//! `agm`: adaptive gradient modulation with Shapley-based unimodal outputs
//! (BASELINES.md section 4, the official AV-MNIST code).
//!
//! Per step, the joint model runs on every non-empty coalition of
//! modalities, the others' inputs replaced by zeros (their encoders run on
//! the zeros, with gradient): `f(S)`. The Shapley decomposition of the fused
//! logits with `f(empty) = 0` gives each modality's logits `phi_m`
//! (`sum_m phi_m = f(all) = z`). Scores `s_m` are the batch-mean CE of
//! `phi_m` (a sample with `q < 1e-8` counts `-log 1e-8`); `r_m = exp(M/(M-1)
//! (mean_k s_k - s_m))`, the target `rbar_m` the same of the cumulative means
//! `S_m` of all earlier scores, and `kappa_m = exp(alpha (rbar_m - r_m))`
//! (optionally clamped above). Inside the window the loss is the hook-free
//! surrogate `sum_m kappa_m <sg(G), phi_m>`, `G = (softmax(z) - onehot) / B`,
//! whose gradient is the official hooks' (each modality's share of the
//! gradient reaching the logits scaled by its kappa). Then, if any element of
//! the head weight's gradient is outside [-1, 1], all gradients are clipped to
//! total norm 1 (the official rule).
//!
//! Fixed against the official code: outside the window kappa is 1 (the
//! official hooks keep the last kappa forever; `--agm-stale-kappa` restores
//! that). Deviation: per-modality accuracy is read from the concat head's
//! slices (like joint), not from `phi_m`. Our encoders have no batch norm or
//! dropout, so the official switch to eval mode for the zero-input passes
//! changes nothing here. Host reads per step: the `phi_m` rows (for the
//! scores) and, for clipping, two scalars.

use super::{joint_forward, step_gradients, upload_batch, Input, Method, StepCtx, T32};
use crate::data::Batch;
use crate::dist::Weights;
use crate::metrics::NamedValues;
use crate::params::StateDict;
use crate::shapley::coalition_weight;
use crate::trainer::config::{AgmParams, MethodKind, TrainConfig};
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::EpochRecord;
use crate::trainer::stats::Pending;
use crate::trainer::{Result, TrainError};
use mla_core::{Backend, Indices, Tape, Tensor};

/// `-log(1e-8)`: the score of a sample whose true-class probability underflows.
pub const MAX_SAMPLE_SCORE: f64 = 18.420680743952367;

pub struct Agm {
    params: AgmParams,
    names: Vec<String>,
    /// Cumulative means `S_m` of all earlier batch scores, and their count.
    running: Vec<f64>,
    count: u64,
    /// The last kappa (for `stale_kappa`).
    kappa: Vec<f64>,
    /// This epoch: sums of kappa, steps in the window, clipped steps.
    kappa_sum: Vec<f64>,
    steps: u64,
    clipped: u64,
}

impl Agm {
    pub fn new(cfg: &TrainConfig, layout: &ModelLayout) -> Result<Self> {
        let m = layout.modalities.len();
        if !(2..=8).contains(&m) {
            return Err(TrainError::Config(format!(
                "--method agm decomposes the logits over all coalitions of 2 to 8 modalities; the model has {m}"
            )));
        }
        Ok(Agm {
            params: cfg.agm_params(),
            names: layout.modalities.clone(),
            running: vec![0.0; m],
            count: 0,
            kappa: vec![1.0; m],
            kappa_sum: vec![0.0; m],
            steps: 0,
            clipped: 0,
        })
    }
}

/// Coefficient of coalition `mask` (non-empty) in `phi_m`: `+w(|S| - 1)` when
/// `m` is in it (as `f(S u {m})`), `-w(|S|)` when not (as `f(S)`).
pub fn decomposition_coefficient(modalities: usize, mask: usize, m: usize) -> f64 {
    let size = mask.count_ones() as usize;
    if mask & (1 << m) != 0 {
        coalition_weight(modalities, size - 1)
    } else {
        -coalition_weight(modalities, size)
    }
}

/// A batch score: mean over rows of `-log softmax(row)[y]`, each at most
/// [`MAX_SAMPLE_SCORE`] (f64, host).
pub fn batch_score(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    score_sum(logits, labels, classes) / labels.len().max(1) as f64
}

/// The sum over rows of the per-sample scores of [`batch_score`].
pub fn score_sum(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    let mut sum = 0.0;
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let nll = lse - row[y as usize] as f64;
        // q < 1e-8 (or an infinite log) counts as q = 1e-8.
        sum += if nll.is_finite() {
            nll.min(MAX_SAMPLE_SCORE)
        } else {
            MAX_SAMPLE_SCORE
        };
    }
    sum
}

/// `exp(M/(M-1) (mean_k s_k - s_m))` for every m.
pub fn ratios(scores: &[f64]) -> Vec<f64> {
    let m = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / m;
    scores
        .iter()
        .map(|s| (m / (m - 1.0) * (mean - s)).exp())
        .collect()
}

/// `kappa_m = exp(alpha min(rbar_m - r_m, clamp))`.
pub fn kappas(running: &[f64], scores: &[f64], alpha: f64, clamp: Option<f64>) -> Vec<f64> {
    let (r, rbar) = (ratios(scores), ratios(running));
    r.iter()
        .zip(&rbar)
        .map(|(r, rb)| {
            let d = rb - r;
            (alpha * clamp.map_or(d, |c| d.min(c))).exp()
        })
        .collect()
}

/// The cumulative mean after the `count`-th value `x` (1-based).
pub fn running_mean(prev: f64, x: f64, count: u64) -> f64 {
    let t = count as f64;
    prev * (t - 1.0) / t + x / t
}

impl<B: Backend<f32>> Method<B> for Agm {
    fn kind(&self) -> MethodKind {
        MethodKind::Agm
    }

    fn begin_epoch(&mut self, _ctx: &super::EpochCtx<'_, B>) -> Result<()> {
        self.kappa_sum.iter_mut().for_each(|v| *v = 0.0);
        self.steps = 0;
        self.clipped = 0;
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        let active = self.params.window.contains(ctx.epoch);
        let m = self.names.len();
        let n = batch.len();
        let classes = ctx.layout.num_classes;
        if !active && !self.params.stale_kappa {
            // Fixed against the official hooks: kappa is 1 outside the window.
            self.kappa = vec![1.0; m];
        }
        // Outside the window only a stale kappa (not all 1) needs the
        // decomposition; kappa = 1 is the joint gradient exactly.
        let decompose = active || self.kappa.iter().any(|&k| k != 1.0);
        // A rank's share of the last global batch may be empty; it still
        // takes part in every reduction.
        let local = if n == 0 {
            if decompose {
                self.reduce_scores(ctx, vec![0.0; m], 0, active)?;
            }
            None
        } else {
            let inputs = upload_batch(ctx.backend, ctx.layout, batch)?;
            let labels = Indices::new(ctx.backend, &batch.labels)?;
            let tape = Tape::new(ctx.backend);
            let p = ctx.model.track(&tape, |_| true);
            if !decompose {
                let f = joint_forward(ctx.model, ctx.layout, &p, &tape, inputs, n)?;
                let loss = f.logits.cross_entropy(&labels)?;
                let g = tape.backward(&loss)?;
                Some((p.gradients(g), loss.into_value()))
            } else {
                // Coalition forwards: inputs of the modalities outside S are
                // zeros (every row); a modality missing from the batch stays
                // missing (zero features) in every coalition.
                let all: Vec<usize> = (0..n).collect();
                let mut coalitions = Vec::with_capacity((1 << m) - 1);
                for mask in 1..(1usize << m) {
                    let mut ins: Vec<Option<Input<'_, B>>> = Vec::with_capacity(m);
                    for (mi, input) in inputs.iter().enumerate() {
                        ins.push(match (mask & (1 << mi) != 0, input) {
                            (true, Some(i)) => Some(Input {
                                x: i.x.clone(),
                                present: i.present,
                            }),
                            (true, None) => None,
                            (false, _) => {
                                let mut dims = vec![n];
                                dims.extend_from_slice(&ctx.layout.shapes[mi]);
                                Some(Input {
                                    x: Tensor::zeros(ctx.backend, dims)?,
                                    present: &all,
                                })
                            }
                        });
                    }
                    coalitions
                        .push(joint_forward(ctx.model, ctx.layout, &p, &tape, ins, n)?.logits);
                }
                let z = coalitions.last().expect("the full coalition").clone();
                let loss = z.cross_entropy(&labels)?;
                // phi_m on the host for the scores: each modality's summed
                // per-sample score over this rank's rows.
                let mut sums = vec![0.0; m];
                if active {
                    let zs: Vec<Vec<f32>> = coalitions
                        .iter()
                        .map(|c| c.value().to_vec())
                        .collect::<std::result::Result<_, _>>()?;
                    for (mi, sum) in sums.iter_mut().enumerate() {
                        let mut phi = vec![0.0f64; n * classes];
                        for (k, zk) in zs.iter().enumerate() {
                            let c = decomposition_coefficient(m, k + 1, mi);
                            phi.iter_mut()
                                .zip(zk)
                                .for_each(|(p, &v)| *p += c * v as f64);
                        }
                        let phi: Vec<f32> = phi.iter().map(|&v| v as f32).collect();
                        *sum = score_sum(&phi, &batch.labels, classes);
                    }
                }
                let rows = self.reduce_scores(ctx, sums, n, active)?;
                let surrogate = self.surrogate(ctx, &tape, batch, &z, &coalitions, rows)?;
                let g = tape.backward(&surrogate)?;
                // Summed over ranks below: this rank's share of the global mean.
                let loss = if rows == n {
                    loss.into_value()
                } else {
                    loss.into_value().scale(n as f64 / rows as f64)?
                };
                Some((p.gradients(g), loss))
            }
        };
        // The surrogate already divides by the global batch: its gradients
        // are summed over ranks; the joint loss is a mean per rank.
        let weights = if decompose {
            Weights::Sum
        } else {
            Weights::MeanOver(&|_| n)
        };
        let Some((mut grads, loss)) = step_gradients(ctx, local, weights, n)? else {
            return Ok(());
        };
        if active {
            self.steps += 1;
            for (a, k) in self.kappa_sum.iter_mut().zip(&self.kappa) {
                *a += k;
            }
            if self.params.clip && clip(&mut grads)? {
                self.clipped += 1;
            }
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
            v.push(format!("kappa_mean.{name}"), self.kappa_sum[mi] / n);
            v.push(format!("running_score.{name}"), self.running[mi]);
        }
        v.push("clipped_fraction", self.clipped as f64 / n);
        record.method_stats = Some(v);
        Ok(())
    }

    fn state(&self) -> Result<StateDict<B>> {
        let mut sd = StateDict::default();
        sd.scalars
            .push(("method.agm.count".into(), self.count as f64));
        for (mi, name) in self.names.iter().enumerate() {
            sd.scalars
                .push((format!("method.agm.running.{name}"), self.running[mi]));
            sd.scalars
                .push((format!("method.agm.kappa.{name}"), self.kappa[mi]));
        }
        Ok(sd)
    }

    fn load_state(&mut self, sd: &StateDict<B>) -> Result<()> {
        let get = |k: &str| {
            sd.scalar(k)
                .filter(|v| v.is_finite())
                .ok_or_else(|| TrainError::Config(format!("AGM state `{k}` missing or not finite")))
        };
        let count = get("method.agm.count")?;
        if !(count >= 0.0 && count.fract() == 0.0 && count < 9.0e15) {
            return Err(TrainError::Config(format!(
                "AGM state count {count} is not a count"
            )));
        }
        self.count = count as u64;
        for (mi, name) in self.names.clone().iter().enumerate() {
            self.running[mi] = get(&format!("method.agm.running.{name}"))?;
            self.kappa[mi] = get(&format!("method.agm.kappa.{name}"))?;
        }
        if !sd.tensors.is_empty() || sd.scalars.len() != 1 + 2 * self.names.len() {
            return Err(TrainError::Config(
                "unexpected entries in the AGM state".into(),
            ));
        }
        Ok(())
    }
}

impl Agm {
    /// The global batch's rows and, in the window, its scores (each
    /// modality's summed per-sample score over the ranks, divided by the
    /// global rows): kappa and the running means move identically on every
    /// rank. One process: `sums` and `n` as they are.
    fn reduce_scores<B: Backend<f32>>(
        &mut self,
        ctx: &StepCtx<'_, B>,
        mut sums: Vec<f64>,
        n: usize,
        active: bool,
    ) -> Result<usize> {
        let rows = match ctx.dist {
            None => n,
            Some(d) => {
                sums.push(n as f64);
                d.sum_f64(&mut sums)?;
                sums.pop().unwrap_or(0.0) as usize
            }
        };
        if active && rows > 0 {
            let scores: Vec<f64> = sums.iter().map(|s| s / rows as f64).collect();
            // The target comes from the means before this batch.
            self.kappa = kappas(&self.running, &scores, self.params.alpha, self.params.clamp);
            self.count += 1;
            for (s, &x) in self.running.iter_mut().zip(&scores) {
                *s = running_mean(*s, x, self.count);
            }
        }
        Ok(rows)
    }

    /// `sum_m kappa_m <sg(G), phi_m>` = `sum_S c_S <sg(G), f(S)>` with
    /// `c_S = sum_m kappa_m coef_m(S)` over the non-empty coalitions.
    fn surrogate<'t, B: Backend<f32>>(
        &self,
        ctx: &StepCtx<'_, B>,
        tape: &'t Tape<f32, B>,
        batch: &Batch,
        z: &mla_core::Var<'t, f32, B>,
        coalitions: &[mla_core::Var<'t, f32, B>],
        rows: usize,
    ) -> Result<mla_core::Var<'t, f32, B>> {
        let m = self.names.len();
        let classes = ctx.layout.num_classes;
        // G = (softmax(z) - onehot(y)) / rows (the global batch), detached.
        let mut g = z.value().softmax()?.to_vec()?;
        for (i, &y) in batch.labels.iter().enumerate() {
            g[i * classes + y as usize] -= 1.0;
        }
        g.iter_mut().for_each(|v| *v /= rows as f32);
        let g = tape.constant(Tensor::from_slice(
            ctx.backend,
            &g,
            vec![batch.len(), classes],
        )?);
        let mut total: Option<mla_core::Var<'t, f32, B>> = None;
        for (k, f) in coalitions.iter().enumerate() {
            let c: f64 = (0..m)
                .map(|mi| self.kappa[mi] * decomposition_coefficient(m, k + 1, mi))
                .sum();
            if c == 0.0 {
                continue;
            }
            let term = g.mul(f)?.sum_all()?.scale(c)?;
            total = Some(match total {
                None => term,
                Some(t) => t.add(&term)?,
            });
        }
        total.ok_or_else(|| TrainError::Config("agm: every coalition coefficient is zero".into()))
    }
}

/// The official clipping: when an element of the head weight's gradient is
/// outside [-1, 1], every gradient is scaled to total norm 1 (torch's
/// `clip_grad_norm_(max_norm = 1)`: factor `1 / (norm + 1e-6)` when below 1).
/// Returns whether it clipped.
fn clip<B: Backend<f32>>(grads: &mut [(String, T32<B>)]) -> Result<bool> {
    let head = grads
        .iter()
        .find(|(n, _)| n == crate::model::HEAD_WEIGHT)
        .map(|(_, g)| g.clone());
    let Some(head) = head else { return Ok(false) };
    // Any |g| > 1: the sum of relu(|g| - 1) is positive.
    let over = head
        .sqr()?
        .sqrt()?
        .affine(1.0, -1.0)?
        .relu()?
        .sum_all()?
        .to_scalar()?;
    if over <= 0.0 {
        return Ok(false);
    }
    let mut sq = 0.0f64;
    for (_, g) in grads.iter() {
        sq += g.sqr()?.sum_all()?.to_scalar()? as f64;
    }
    let factor = 1.0 / (sq.sqrt() + 1e-6);
    if factor < 1.0 {
        for (_, g) in grads.iter_mut() {
            *g = g.scale(factor)?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decomposition_sums_to_the_fused_logits() {
        for m in 2..=5 {
            let full = (1usize << m) - 1;
            for mask in 1..=full {
                let sum: f64 = (0..m).map(|k| decomposition_coefficient(m, mask, k)).sum();
                let want = if mask == full { 1.0 } else { 0.0 };
                assert!((sum - want).abs() < 1e-12, "M {m} mask {mask:#b}: {sum}");
            }
        }
        // Two modalities: phi_a = (z - z_V + z_A) / 2 with z_A = f({a}) (mask 0b01).
        assert_eq!(decomposition_coefficient(2, 0b01, 0), 0.5);
        assert_eq!(decomposition_coefficient(2, 0b10, 0), -0.5);
        assert_eq!(decomposition_coefficient(2, 0b11, 0), 0.5);
    }

    #[test]
    fn scores_clamp_underflowing_samples() {
        // Row 0: true class probability about e^-60 < 1e-8.
        let logits = [60.0f32, 0.0, 0.0, 1.0];
        let s = batch_score(&logits, &[1, 1], 2);
        let second = (1.0f64 + (-1.0f64).exp()).ln();
        assert!((s - (MAX_SAMPLE_SCORE + second) / 2.0).abs() < 1e-9, "{s}");
        assert!((MAX_SAMPLE_SCORE - (1e-8f64).ln().abs()).abs() < 1e-12);
    }

    #[test]
    fn kappa_follows_the_official_sign_and_clamp() {
        // Step 1 (running means 0) with equal scores: kappa = 1.
        assert_eq!(kappas(&[0.0, 0.0], &[0.7, 0.7], 2.5, None), vec![1.0, 1.0]);
        // kappa_m decreases as s_other - s_m grows (official sign).
        let mut last = f64::INFINITY;
        for d in [-1.0, -0.3, 0.0, 0.4, 1.2] {
            let k = kappas(&[0.5, 0.5], &[1.0, 1.0 + d], 1.0, None)[0];
            assert!(k < last, "{d}: {k}");
            last = k;
        }
        // Direct formula, M = 3.
        let (run, s) = ([0.4, 0.9, 1.3], [0.2, 1.1, 0.8]);
        let k = kappas(&run, &s, 0.7, None);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / 3.0;
        for m in 0..3 {
            let r = (1.5 * (mean(&s) - s[m])).exp();
            let rb = (1.5 * (mean(&run) - run[m])).exp();
            assert!((k[m] - (0.7 * (rb - r)).exp()).abs() < 1e-12);
        }
        // The clamp bounds kappa by exp(alpha * clamp).
        let k = kappas(&[5.0, 0.0], &[0.0, 0.0], 1.0, Some(0.5))[1];
        assert!((k - 0.5f64.exp()).abs() < 1e-12, "{k}");
    }

    #[test]
    fn the_running_mean_is_the_mean_of_all_scores() {
        let xs = [0.3, 1.7, 0.9, 2.2, 0.1];
        let mut m = 0.0;
        for (t, &x) in xs.iter().enumerate() {
            m = running_mean(m, x, t as u64 + 1);
            let want = xs[..=t].iter().sum::<f64>() / (t + 1) as f64;
            assert!((m - want).abs() < 1e-12);
        }
    }
}
