//! `reconboost`: alternating boosting with modality reconcilement
//! (BASELINES.md section 6). One shared head `g` and a learnable ensemble
//! scale `beta` (`HeadKind::Ensemble`, `head.beta`, initialised to 1 as the
//! official code); the ensemble is `F = beta * sum_m g(phi_m(x_m))`.
//!
//! Training runs in stages (`--reconboost-schedule STAGE:CORRECT`, epochs):
//! stage k trains modality `k mod M` (model order) for STAGE epochs
//! (phase 1), then everything in the ensemble for CORRECT epochs (phase 2).
//! The ensemble holds the modalities that have had a phase 1, so stage and
//! ensemble follow from the epoch number alone (a checkpoint's epoch count
//! restores them exactly).
//!
//! - Phase 1, modality m: `q = softmax(F_{-m}(x))[y]` from the other
//!   ensemble members (no gradient; 1 for a sample that none of them sees, as
//!   the official constant for an empty ensemble), `p = softmax(g(phi_m(x_m)))`,
//!   loss `mean_i (w1 - w2 q_i) (-log p_i[y_i]) / C` (the official `/C` of its
//!   mean over one-hot classes). Only `phi_m`, `head.weight` and `head.bias`
//!   are stepped; beta gets no gradient in phase 1.
//! - Phase 2: `CE(beta * sum_{m in ensemble} g(phi_m(x_m)), y)` over the
//!   samples that some member sees, every member's encoder, the head and
//!   beta stepped.
//! - The optimizer is reset at the start of every phase (the official code
//!   creates a fresh SGD per phase; `reset_optimizer: false` keeps one, as
//!   BalanceBenchmark).
//! - The official reconcilement ("GA") term compares two detached
//!   softmaxes, so it changes no gradient; it is not computed.
//!
//! Evaluation: a modality's logits are `beta * g(h_m)` and the fused
//! prediction is the run's `--fusion` rule over them; `mean` is the
//! official ensemble `argmax F`. Every modality is evaluated, also one not
//! yet in the ensemble. Host reads per phase-1 step: the other members'
//! logits (`[batch, C]` each) for `q`; none in phase 2.

use super::{labels_at, sum_over_ranks, upload_modality, EpochCtx, Method, StepCtx};
use crate::data::Batch;
use crate::metrics::NamedValues;
use crate::model::{scatter_rows, Model, HEAD_BETA, HEAD_BIAS, HEAD_PREFIX, HEAD_WEIGHT};
use crate::params::TrackedParams;
use crate::trainer::config::{MethodKind, ReconboostParams, TrainConfig};
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::EpochRecord;
use crate::trainer::stats::Pending;
use crate::trainer::Result;
use mla_core::{Backend, Indices, Tape, Tensor, Var};

pub struct Reconboost {
    params: ReconboostParams,
    names: Vec<String>,
    /// This epoch: stage, phase-1 modality (`None`: phase 2), ensemble size.
    stage: usize,
    trained: Option<usize>,
    members: usize,
    /// Phase 1 of this epoch: sum of `q_y` over the samples and their count.
    q_sum: f64,
    q_count: u64,
    /// beta at the start of the epoch.
    beta: Option<f64>,
    /// No step of this epoch has run yet.
    epoch_start: bool,
}

impl Reconboost {
    pub fn new(cfg: &TrainConfig, layout: &ModelLayout) -> Result<Self> {
        super::balanced_modalities(cfg, layout)?;
        Ok(Reconboost {
            params: cfg.reconboost_params(),
            names: layout.modalities.clone(),
            stage: 0,
            trained: None,
            members: 0,
            q_sum: 0.0,
            q_count: 0,
            beta: None,
            epoch_start: false,
        })
    }
}

/// Where 1-based `epoch` falls for `m` modalities: its stage, the modality
/// phase 1 trains (`None` in phase 2), and the ensemble's size (its members
/// are the first that many modalities in model order).
pub fn schedule_at(p: &ReconboostParams, m: usize, epoch: usize) -> (usize, Option<usize>, usize) {
    let (stage, phase1) = p.schedule.at(epoch);
    let members = (stage + 1).min(m);
    (stage, phase1.then_some(stage % m), members)
}

/// Whether 1-based `epoch` starts a phase.
pub fn starts_phase(p: &ReconboostParams, epoch: usize) -> bool {
    let within = epoch.saturating_sub(1) % p.schedule.epochs_per_stage();
    within == 0 || within == p.schedule.stage
}

/// Phase-1 sample weights `(w1 - w2 q_i) / C`.
pub fn sample_weights(p: &ReconboostParams, q: &[f64], classes: usize) -> Vec<f64> {
    q.iter()
        .map(|&q| (p.w1 - p.w2 * q) / classes as f64)
        .collect()
}

/// `softmax(f)[y]` in f64 for one row of logits.
pub fn true_class_prob(f: &[f64], y: usize) -> f64 {
    let max = f.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = f.iter().map(|v| (v - max).exp()).sum();
    (f[y] - max).exp() / z
}

/// `sum_i weights_i * (-log softmax(z_i)[y_i]) / n`: the weighted mean CE of
/// `z` (`[n, C]`) through a constant matrix holding `weights_i / n` at
/// `(i, y_i)`.
pub fn weighted_ce<'t, B: Backend<f32>>(
    z: &Var<'t, f32, B>,
    labels: &[u32],
    weights: &[f64],
) -> Result<Var<'t, f32, B>> {
    let (n, c) = (labels.len(), z.dims()[1]);
    let mut w = vec![0f32; n * c];
    for (i, (&y, &wi)) in labels.iter().zip(weights).enumerate() {
        w[i * c + y as usize] = (wi / n as f64) as f32;
    }
    let wt = z
        .tape()
        .constant(Tensor::from_slice(z.value().backend(), &w, [n, c])?);
    Ok(z.log_softmax()?.mul(&wt)?.sum_all()?.neg()?)
}

/// `beta * g(phi_k(x_k))` on the rows of `batch` that have modality `k`.
fn member_logits<'t, B: Backend<f32>>(
    ctx: &StepCtx<'_, B>,
    tape: &'t Tape<f32, B>,
    p: &TrackedParams<'t, B>,
    batch: &Batch,
    k: usize,
) -> Result<Var<'t, f32, B>> {
    let name = &ctx.layout.modalities[k];
    let x = upload_modality(ctx.backend, ctx.layout, batch, k)?;
    let h = ctx.model.features(p, name, &tape.constant(x))?;
    Ok(ctx.model.modality_logits(p, name, &h)?)
}

impl Reconboost {
    /// `q_i` of the rows of modality `mi` from the other ensemble members.
    fn reconcile_q<B: Backend<f32>>(
        &self,
        ctx: &StepCtx<'_, B>,
        batch: &Batch,
        mi: usize,
    ) -> Result<Vec<f64>> {
        let c = ctx.layout.num_classes;
        let n = batch.len();
        let mut f = vec![0f64; n * c];
        let mut seen = vec![false; n];
        let tape = Tape::no_grad(ctx.backend);
        let p = ctx.model.track(&tape, |_| false);
        for k in (0..self.members).filter(|&k| k != mi) {
            let kb = &batch.modalities[ctx.layout.data_index[k]];
            if kb.present.is_empty() {
                continue;
            }
            // beta * g(h_k): the member's share of F.
            let z = member_logits(ctx, &tape, &p, batch, k)?
                .into_value()
                .to_vec()?;
            for (row, &pos) in kb.present.iter().enumerate() {
                seen[pos] = true;
                for j in 0..c {
                    f[pos * c + j] += z[row * c + j] as f64;
                }
            }
        }
        let mb = &batch.modalities[ctx.layout.data_index[mi]];
        Ok(mb
            .present
            .iter()
            .map(|&pos| {
                if seen[pos] {
                    true_class_prob(&f[pos * c..(pos + 1) * c], batch.labels[pos] as usize)
                } else {
                    1.0
                }
            })
            .collect())
    }

    fn phase1_step<B: Backend<f32>>(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        mi: usize,
        out: &mut Pending<B>,
    ) -> Result<()> {
        let mb = &batch.modalities[ctx.layout.data_index[mi]];
        let rows = mb.present.len();
        let name = &ctx.layout.modalities[mi];
        let prefix = Model::<B>::encoder_prefix(name);
        let trainable = |n: &str| n.starts_with(&prefix) || n == HEAD_WEIGHT || n == HEAD_BIAS;
        // A rank's share may have no row of the modality; it still takes
        // part in the reduction.
        let local = if rows == 0 {
            None
        } else {
            let q = self.reconcile_q(ctx, batch, mi)?;
            let weights = sample_weights(&self.params, &q, ctx.layout.num_classes);
            let labels: Vec<u32> = mb.present.iter().map(|&p| batch.labels[p]).collect();
            let x = upload_modality(ctx.backend, ctx.layout, batch, mi)?;
            let tape = Tape::new(ctx.backend);
            let p = ctx.model.track(&tape, trainable);
            let h = ctx.model.features(&p, name, &tape.constant(x))?;
            let f = ctx.model.head_logits(&p, &h)?;
            let loss = weighted_ce(&f, &labels, &weights)?;
            let g = tape.backward(&loss)?;
            Some((p.gradients(g), loss.into_value(), q.iter().sum::<f64>()))
        };
        let (grads, loss, q_sum, q_rows) = match ctx.dist {
            None => match local {
                None => return Ok(()),
                Some((g, l, q)) => (g, l, q, rows),
            },
            // The loss is a mean over the modality's rows: the gradients are
            // averaged over the global batch's such rows; q's sum travels along.
            Some(d) => {
                let l = local.as_ref().map(|(g, l, _)| (g.as_slice(), l));
                let q = [local.as_ref().map_or(0.0, |(_, _, q)| *q as f32)];
                let Some(r) = sum_over_ranks(d, ctx.backend, ctx.model, trainable, l, rows, &q)?
                else {
                    return Ok(());
                };
                (r.grads, r.loss, r.extra[0] as f64, r.rows)
            }
        };
        self.q_sum += q_sum;
        self.q_count += q_rows as u64;
        ctx.optim.step(ctx.model.params_mut(), &grads)?;
        out.push(ctx.step, Some(mi), loss);
        Ok(())
    }

    fn phase2_step<B: Backend<f32>>(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        let n = batch.len();
        let members: Vec<usize> = (0..self.members)
            .filter(|&k| {
                !batch.modalities[ctx.layout.data_index[k]]
                    .present
                    .is_empty()
            })
            .collect();
        let mut seen = vec![false; n];
        for &k in &members {
            for &pos in &batch.modalities[ctx.layout.data_index[k]].present {
                seen[pos] = true;
            }
        }
        let rows: Vec<usize> = (0..n).filter(|&i| seen[i]).collect();
        // Every ensemble member's encoder may train (the same names on every
        // rank); only the members with rows here run.
        let prefixes: Vec<String> = (0..self.members)
            .map(|k| Model::<B>::encoder_prefix(&ctx.layout.modalities[k]))
            .collect();
        let trainable = |name: &str| {
            name.starts_with(HEAD_PREFIX) || prefixes.iter().any(|pre| name.starts_with(pre))
        };
        let local = if rows.is_empty() {
            None
        } else {
            let labels = labels_at(ctx.backend, batch, &rows)?;
            let tape = Tape::new(ctx.backend);
            let p = ctx.model.track(&tape, trainable);
            let mut sum: Option<Var<'_, f32, B>> = None;
            for &k in &members {
                let kb = &batch.modalities[ctx.layout.data_index[k]];
                let z = member_logits(ctx, &tape, &p, batch, k)?;
                let z = if kb.present.len() == n {
                    z
                } else {
                    scatter_rows(&z, &kb.present, n)?
                };
                sum = Some(match sum {
                    None => z,
                    Some(s) => s.add(&z)?,
                });
            }
            let f = sum.expect("at least one member");
            let f = if rows.len() == n {
                f
            } else {
                f.gather_rows(&Indices::from_usize(ctx.backend, &rows)?)?
            };
            let loss = f.cross_entropy(&labels)?;
            let g = tape.backward(&loss)?;
            Some((p.gradients(g), loss.into_value()))
        };
        let local = match ctx.dist {
            None => local,
            // A mean over the rows some member sees: averaged over the
            // global batch's such rows.
            Some(d) => {
                let l = local.as_ref().map(|(g, l)| (g.as_slice(), l));
                sum_over_ranks(d, ctx.backend, ctx.model, trainable, l, rows.len(), &[])?
                    .map(|r| (r.grads, r.loss))
            }
        };
        let Some((grads, loss)) = local else {
            return Ok(());
        };
        ctx.optim.step(ctx.model.params_mut(), &grads)?;
        out.push(ctx.step, None, loss);
        Ok(())
    }
}

impl<B: Backend<f32>> Method<B> for Reconboost {
    fn kind(&self) -> MethodKind {
        MethodKind::Reconboost
    }

    fn begin_epoch(&mut self, ctx: &EpochCtx<'_, B>) -> Result<()> {
        let (stage, trained, members) = schedule_at(&self.params, self.names.len(), ctx.epoch);
        self.stage = stage;
        self.trained = trained;
        self.members = members;
        self.q_sum = 0.0;
        self.q_count = 0;
        self.beta = Some(ctx.model.params().get(HEAD_BETA)?.to_vec()?[0] as f64);
        self.epoch_start = true;
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        // A phase starts with an epoch, so its first step resets (a resumed
        // epoch that continues a phase keeps the checkpointed state).
        if std::mem::take(&mut self.epoch_start)
            && self.params.reset_optimizer
            && starts_phase(&self.params, ctx.epoch)
        {
            ctx.optim.reset();
        }
        match self.trained {
            Some(mi) => self.phase1_step(ctx, batch, mi, out),
            None => self.phase2_step(ctx, batch, out),
        }
    }

    fn end_epoch(&mut self, record: &mut EpochRecord) -> Result<()> {
        let mut v = NamedValues::default();
        v.push("stage", self.stage as f64);
        v.push("phase", if self.trained.is_some() { 1.0 } else { 2.0 });
        for (mi, name) in self.names.iter().enumerate() {
            v.push(
                format!("trained.{name}"),
                match self.trained {
                    Some(t) => (t == mi) as u8 as f64,
                    None => (mi < self.members) as u8 as f64,
                },
            );
        }
        v.push("ensemble_size", self.members as f64);
        if self.q_count > 0 {
            v.push("mean_q", self.q_sum / self.q_count as f64);
        }
        if let Some(b) = self.beta {
            v.push("beta_at_start", b);
        }
        record.method_stats = Some(v);
        Ok(())
    }
}
