//! `pmr`: prototypical modal rebalance, the prototypical cross-entropy part
//! of the official release (BASELINES.md section 5; the paper's entropy
//! regulariser was never released). Called "PMR (PCE, official release)".
//!
//! Before every epoch each modality's class prototypes `P_m[c]` are the
//! class means of its features over the first tenth of the batches of a
//! shuffled pass over the training set (no gradient), mixed with the old
//! ones by `momentum` from the second epoch on. A step is the joint step
//! plus, inside the epoch window, `alpha * CE(-d_m, y)` for the weaker
//! modality, `d_m` the distances of its features to its prototypes, judged
//! by the mean prototype probability of the true class `s_m`:
//! two modalities: the one with the smaller `s` (none on a tie, as the
//! official code); more: every `m` with `s_m` below the mean of the others'.
//! A modality absent from a batch is left out of that step's comparison.
//!
//! Deviations: distances are `sqrt(max(|h - P|^2, 1e-12))` (the official
//! `sqrt` has an infinite gradient at distance 0); a class absent from the
//! prototype batches keeps its previous prototype (zero before the first)
//! instead of the official 0/0 = NaN; scores are means over present samples.
//! Host reads per step: the M prototype scores.

use super::ogm::true_class_score;
use super::step_gradients;
use super::{
    host_labels, joint_forward, labels_at, upload_batch, upload_modality, EpochCtx, Method,
    StepCtx, T32,
};
use crate::data::{Batch, Loader};
use crate::dist::Weights;
use crate::metrics::NamedValues;
use crate::model::Model;
use crate::params::StateDict;
use crate::trainer::config::{MethodKind, PmrParams, TrainConfig};
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::EpochRecord;
use crate::trainer::stats::Pending;
use crate::trainer::{Result, TrainError};
use mla_core::{Backend, Indices, Tape, Tensor, Var};

/// Shuffle stream of the prototype pass (distinct from the training order).
const PROTO_STREAM: u64 = 0x9A07_0000_0000;
/// Squared distances are clamped here before the square root.
pub const MIN_SQ_DIST: f64 = 1e-12;

pub struct Pmr<B: Backend<f32>> {
    params: PmrParams,
    seed: u64,
    batch_size: usize,
    names: Vec<String>,
    classes: usize,
    feature_size: usize,
    /// `P_m`, `[C, s]` per modality (`None` before the first epoch).
    protos: Vec<Option<T32<B>>>,
    backend: B,
    /// This epoch: steps each modality got the prototype loss, steps in the window.
    active: Vec<u64>,
    steps: u64,
}

impl<B: Backend<f32>> Pmr<B> {
    pub fn new(backend: &B, cfg: &TrainConfig, layout: &ModelLayout) -> Result<Self> {
        let m = super::balanced_modalities(cfg, layout)?;
        Ok(Pmr {
            params: cfg.pmr_params(),
            seed: cfg.seed,
            batch_size: cfg.batch_size,
            names: layout.modalities.clone(),
            classes: layout.num_classes,
            feature_size: cfg.feature_size,
            protos: vec![None; m],
            backend: backend.clone(),
            active: vec![0; m],
            steps: 0,
        })
    }

    /// The prototypes of the current epoch (tests and diagnostics).
    pub fn prototypes(&self) -> &[Option<T32<B>>] {
        &self.protos
    }

    fn state_name(&self, mi: usize) -> String {
        format!("method.pmr.prototypes.{}", self.names[mi])
    }
}

/// Class means of `feats` (`[n, s]` rows, host) by `labels`: the sums and counts.
pub fn class_sums(feats: &[f32], labels: &[u32], classes: usize, s: usize) -> (Vec<f64>, Vec<u64>) {
    let mut sums = vec![0.0; classes * s];
    let mut counts = vec![0u64; classes];
    for (row, &y) in feats.chunks_exact(s).zip(labels) {
        let c = y as usize;
        counts[c] += 1;
        for (acc, &v) in sums[c * s..(c + 1) * s].iter_mut().zip(row) {
            *acc += v as f64;
        }
    }
    (sums, counts)
}

/// New prototypes from class sums: mean where a class was seen (mixed with
/// `old` by `momentum` when there is an old one), else the old prototype
/// (zero when none).
pub fn mix_prototypes(
    sums: &[f64],
    counts: &[u64],
    old: Option<&[f32]>,
    momentum: f64,
    s: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; sums.len()];
    for (c, &n) in counts.iter().enumerate() {
        for j in 0..s {
            let i = c * s + j;
            let prev = old.map(|o| o[i] as f64);
            out[i] = match (n, prev) {
                (0, Some(p)) => p as f32,
                (0, None) => 0.0,
                (n, None) => (sums[i] / n as f64) as f32,
                (n, Some(p)) => ((1.0 - momentum) * (sums[i] / n as f64) + momentum * p) as f32,
            };
        }
    }
    out
}

/// `-d`, `d_{i,c} = sqrt(max(|h_i - P_c|^2, 1e-12))`: prototype logits `[n, C]`
/// (differentiable in `h`; `P` is a constant).
pub fn prototype_logits<'t, B: Backend<f32>>(
    h: &Var<'t, f32, B>,
    protos: &T32<B>,
) -> Result<Var<'t, f32, B>> {
    let tape = h.tape();
    let p = tape.constant(protos.clone());
    let hh = h.sqr()?.sum_axis(1, true)?; // [n, 1]
    let pp = tape.constant(
        protos
            .sqr()?
            .sum_axis(1, false)?
            .reshape(vec![1, protos.dims()[0]])?,
    );
    let cross = h.matmul_t(&p, false, true)?.scale(-2.0)?; // [n, C]
    let d2 = cross.add(&hh)?.add(&pp)?;
    // max(d2, eps) = relu(d2 - eps) + eps: finite gradient at h = P_c.
    let d = d2
        .affine(1.0, -MIN_SQ_DIST)?
        .relu()?
        .affine(1.0, MIN_SQ_DIST)?
        .sqrt()?;
    Ok(d.neg()?)
}

/// Which modalities get the prototype loss, from their scores (module doc).
pub fn weaker(scores: &[f64]) -> Vec<bool> {
    let m = scores.len();
    (0..m)
        .map(|i| {
            let others: f64 = (0..m).filter(|&k| k != i).map(|k| scores[k]).sum::<f64>();
            scores[i] < others / (m - 1).max(1) as f64
        })
        .collect()
}

/// [`weaker`] among the modalities present in the batch (`None`: absent);
/// with fewer than two present, none.
pub fn weaker_present(scores: &[Option<f64>]) -> Vec<bool> {
    let present: Vec<usize> = (0..scores.len()).filter(|&m| scores[m].is_some()).collect();
    let mut out = vec![false; scores.len()];
    if present.len() >= 2 {
        let s: Vec<f64> = present.iter().map(|&m| scores[m].unwrap_or(0.0)).collect();
        for (&m, w) in present.iter().zip(weaker(&s)) {
            out[m] = w;
        }
    }
    out
}

/// The global batch's rows, overall and per modality.
struct GlobalRows {
    rows: usize,
    rows_m: Vec<usize>,
}

/// PMR's choice of the weaker modalities from the scores of every rank's
/// share (one sum per step).
fn global_choice(
    d: &crate::dist::Dist,
    scores: &[Option<f64>],
    rows_m: &[usize],
    rows: usize,
) -> Result<(Vec<bool>, GlobalRows)> {
    let m = scores.len();
    // Per modality: scores x rows where scored, the scored rows, all rows
    // with the modality (the prototype term's mean); then the batch's rows.
    let mut buf = vec![0f64; 3 * m + 1];
    for mi in 0..m {
        if let Some(s) = scores[mi] {
            buf[3 * mi] = s * rows_m[mi] as f64;
            buf[3 * mi + 1] = rows_m[mi] as f64;
        }
        buf[3 * mi + 2] = rows_m[mi] as f64;
    }
    buf[3 * m] = rows as f64;
    d.sum_f64(&mut buf)?;
    let global: Vec<Option<f64>> = (0..m)
        .map(|mi| (buf[3 * mi + 1] > 0.0).then(|| buf[3 * mi] / buf[3 * mi + 1]))
        .collect();
    Ok((
        weaker_present(&global),
        GlobalRows {
            rows: buf[3 * m] as usize,
            rows_m: (0..m).map(|mi| buf[3 * mi + 2] as usize).collect(),
        },
    ))
}

impl<B: Backend<f32>> Pmr<B> {
    /// The optimizer step on the step's gradients and the step's statistics.
    fn finish(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        active: bool,
        chosen: &[bool],
        grads: &[(String, T32<B>)],
        loss: T32<B>,
        out: &mut Pending<B>,
    ) -> Result<()> {
        ctx.optim.step(ctx.model.params_mut(), grads)?;
        if active {
            self.steps += 1;
            for (a, &c) in self.active.iter_mut().zip(chosen) {
                *a += u64::from(c);
            }
        }
        out.push(ctx.step, None, loss);
        Ok(())
    }
}

impl<B: Backend<f32>> Method<B> for Pmr<B> {
    fn kind(&self) -> MethodKind {
        MethodKind::Pmr
    }

    fn begin_epoch(&mut self, ctx: &EpochCtx<'_, B>) -> Result<()> {
        self.active.iter_mut().for_each(|v| *v = 0);
        self.steps = 0;
        let loader = Loader::new(
            ctx.dataset.clone(),
            ctx.train.to_vec(),
            self.batch_size,
            Some(self.seed ^ PROTO_STREAM),
            ctx.epoch as u64,
        )?;
        let take = (loader.num_batches() / 10).max(1);
        let (c, s) = (self.classes, self.feature_size);
        let m = self.names.len();
        let mut sums = vec![vec![0.0; c * s]; m];
        let mut counts = vec![vec![0u64; c]; m];
        for batch in loader.take(take) {
            let batch = batch?;
            for mi in 0..m {
                let mb = &batch.modalities[ctx.layout.data_index[mi]];
                if mb.present.is_empty() {
                    continue;
                }
                let h = features(ctx.model, ctx.layout, mi, &batch)?;
                let y = host_labels(&batch, &mb.present);
                let (bs, bc) = class_sums(&h, &y, c, s);
                sums[mi].iter_mut().zip(&bs).for_each(|(a, b)| *a += b);
                counts[mi].iter_mut().zip(&bc).for_each(|(a, b)| *a += b);
            }
        }
        for mi in 0..m {
            let old = match &self.protos[mi] {
                Some(p) => Some(p.to_vec()?),
                None => None,
            };
            let mix = mix_prototypes(
                &sums[mi],
                &counts[mi],
                old.as_deref(),
                self.params.momentum,
                s,
            );
            self.protos[mi] = Some(Tensor::from_slice(&self.backend, &mix, vec![c, s])?);
        }
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        let active = self.params.window.contains(ctx.epoch) && self.params.alpha != 0.0;
        let classes = ctx.layout.num_classes;
        let m = self.names.len();
        let n = batch.len();
        let rows_m: Vec<usize> = (0..m)
            .map(|mi| batch.modalities[ctx.layout.data_index[mi]].present.len())
            .collect();
        // A rank's share of the last global batch may be empty: it still
        // joins the score reduction and the gradient sum.
        let (local, chosen) = if n == 0 {
            let Some(d) = ctx.dist else { return Ok(()) };
            (None, global_choice(d, &vec![None; m], &rows_m, n)?.0)
        } else {
            let inputs = upload_batch(ctx.backend, ctx.layout, batch)?;
            let labels = Indices::new(ctx.backend, &batch.labels)?;
            let tape = Tape::new(ctx.backend);
            let p = ctx.model.track(&tape, |_| true);
            let f = joint_forward(ctx.model, ctx.layout, &p, &tape, inputs, n)?;
            let mut loss = f.logits.cross_entropy(&labels)?;
            let mut terms = Vec::new();
            let mut scores = Vec::new();
            if active {
                for (mi, h) in f.feats.iter().enumerate() {
                    let (Some(h), Some(protos)) = (h, &self.protos[mi]) else {
                        // Absent from the batch: left out of the comparison.
                        scores.push(None);
                        terms.push(None);
                        continue;
                    };
                    let mb = &batch.modalities[ctx.layout.data_index[mi]];
                    let z = prototype_logits(h, protos)?;
                    let y = host_labels(batch, &mb.present);
                    scores.push(Some(true_class_score(&z.value().to_vec()?, &y, classes)));
                    terms.push(Some((z, labels_at(ctx.backend, batch, &mb.present)?)));
                }
            } else {
                scores = vec![None; m];
            }
            // Data parallel: the choice comes from the global batch's
            // scores, and each term is scaled to its share of the global
            // mean (its rows over the global rows), so the ranks' gradients sum.
            let (chosen, share) = match ctx.dist {
                None => (weaker_present(&scores), None),
                Some(d) => {
                    let (chosen, global) = global_choice(d, &scores, &rows_m, n)?;
                    (chosen, Some(global))
                }
            };
            if let Some(g) = &share {
                loss = loss.scale(n as f64 / g.rows as f64)?;
            }
            if active {
                for (mi, t) in terms.iter().enumerate() {
                    if let (true, Some((z, y))) = (chosen[mi], t) {
                        let w = match &share {
                            None => self.params.alpha,
                            Some(g) => self.params.alpha * rows_m[mi] as f64 / g.rows_m[mi] as f64,
                        };
                        loss = loss.add(&z.cross_entropy(y)?.scale(w)?)?;
                    }
                }
            }
            let g = tape.backward(&loss)?;
            (Some((p.gradients(g), loss.into_value())), chosen)
        };
        let Some((grads, loss)) = step_gradients(ctx, local, Weights::Sum, n)? else {
            return Ok(());
        };
        self.finish(ctx, active, &chosen, &grads, loss, out)
    }

    fn end_epoch(&mut self, record: &mut EpochRecord) -> Result<()> {
        if self.steps == 0 {
            return Ok(());
        }
        let mut v = NamedValues::default();
        for (name, &a) in self.names.iter().zip(&self.active) {
            v.push(
                format!("prototype_loss_fraction.{name}"),
                a as f64 / self.steps as f64,
            );
        }
        record.method_stats = Some(v);
        Ok(())
    }

    fn state(&self) -> Result<StateDict<B>> {
        let mut sd = StateDict::default();
        for (mi, p) in self.protos.iter().enumerate() {
            if let Some(p) = p {
                sd.tensors.push((self.state_name(mi), p.clone()));
            }
        }
        Ok(sd)
    }

    fn load_state(&mut self, sd: &StateDict<B>) -> Result<()> {
        let (c, s) = (self.classes, self.feature_size);
        for (name, _) in &sd.tensors {
            if !(0..self.names.len()).any(|mi| *name == self.state_name(mi)) {
                return Err(TrainError::Config(format!(
                    "unknown PMR state tensor `{name}`"
                )));
            }
        }
        for mi in 0..self.names.len() {
            let name = self.state_name(mi);
            self.protos[mi] = match sd.tensor(&name) {
                None => None,
                Some(t) if t.dims() == [c, s] => Some(t.clone()),
                Some(t) => {
                    return Err(TrainError::Config(format!(
                        "PMR state `{name}` has shape {:?}, expected [{c}, {s}]",
                        t.dims()
                    )))
                }
            };
        }
        Ok(())
    }
}

/// Modality `mi`'s features of `batch`'s present rows, on the host (no gradient).
fn features<B: Backend<f32>>(
    model: &Model<B>,
    layout: &ModelLayout,
    mi: usize,
    batch: &Batch,
) -> Result<Vec<f32>> {
    let backend = model.params().backend();
    let x = upload_modality(backend, layout, batch, mi)?;
    let tape = Tape::no_grad(backend);
    let p = model.track(&tape, |_| false);
    let h = model.features(&p, &layout.modalities[mi], &tape.constant(x))?;
    Ok(h.into_value().to_vec()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use mla_cpu::Cpu;

    fn randn(seed: u64, n: usize) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    #[test]
    fn prototypes_are_class_means_with_momentum_and_keep_unseen_classes() {
        let (n, c, s) = (30, 4, 3);
        let h = randn(1, n * s);
        // Class 3 never appears.
        let y: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let (sums, counts) = class_sums(&h, &y, c, s);
        assert_eq!(counts, vec![10, 10, 10, 0]);
        let fresh = mix_prototypes(&sums, &counts, None, 0.5, s);
        for k in 0..3 {
            for j in 0..s {
                let rows: Vec<f64> = (0..n)
                    .filter(|&i| y[i] == k as u32)
                    .map(|i| h[i * s + j] as f64)
                    .collect();
                let mean = rows.iter().sum::<f64>() / rows.len() as f64;
                assert!((fresh[k * s + j] as f64 - mean).abs() < 1e-6);
            }
        }
        assert!(fresh[9..12].iter().all(|&v| v == 0.0));
        let old: Vec<f32> = (0..c * s).map(|i| i as f32).collect();
        let mixed = mix_prototypes(&sums, &counts, Some(&old), 0.2, s);
        for i in 0..9 {
            let want = 0.8 * fresh[i] as f64 + 0.2 * old[i] as f64;
            assert!((mixed[i] as f64 - want).abs() < 1e-5);
        }
        assert_eq!(&mixed[9..12], &old[9..12]);
        // mu = 0: no memory.
        assert_eq!(
            mix_prototypes(&sums, &counts, Some(&old), 0.0, s)[..9],
            fresh[..9]
        );
    }

    #[test]
    fn prototype_logits_are_negative_distances_with_finite_gradient_at_zero() {
        let (n, c, s) = (5, 3, 4);
        let h = randn(2, n * s);
        let mut p = randn(3, c * s);
        // Row 0 sits exactly on prototype 1.
        p[s..2 * s].copy_from_slice(&h[..s]);
        let tape = Tape::new(&Cpu);
        let hv = tape.var(Tensor::from_slice(&Cpu, &h, vec![n, s]).unwrap());
        let pt = Tensor::from_slice(&Cpu, &p, vec![c, s]).unwrap();
        let z = prototype_logits(&hv, &pt).unwrap();
        let zv = z.value().to_vec().unwrap();
        for i in 0..n {
            for k in 0..c {
                let d2: f64 = (0..s)
                    .map(|j| (h[i * s + j] as f64 - p[k * s + j] as f64).powi(2))
                    .sum();
                let want = -d2.max(MIN_SQ_DIST).sqrt();
                assert!((zv[i * c + k] as f64 - want).abs() < 1e-4, "{i} {k}");
            }
        }
        let loss = z.sum_all().unwrap();
        let g = tape.backward(&loss).unwrap();
        let gh = g.get(&hv).unwrap().to_vec().unwrap();
        assert!(gh.iter().all(|v| v.is_finite()), "{gh:?}");
    }

    #[test]
    fn the_weaker_modality_gets_the_prototype_loss() {
        assert_eq!(weaker(&[0.3, 0.7]), vec![true, false]);
        assert_eq!(weaker(&[0.7, 0.3]), vec![false, true]);
        // A tie: neither (rho == 1 in the official code).
        assert_eq!(weaker(&[0.5, 0.5]), vec![false, false]);
        // Three: below the mean of the other two.
        assert_eq!(weaker(&[0.2, 0.5, 0.9]), vec![true, true, false]);
        // A modality absent from the batch is left out; alone, none is weaker.
        assert_eq!(weaker_present(&[Some(0.4), None]), vec![false, false]);
        assert_eq!(
            weaker_present(&[Some(0.4), None, Some(0.9)]),
            vec![true, false, false]
        );
    }
}
