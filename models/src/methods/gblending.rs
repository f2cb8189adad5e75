//! `gblending`: gradient blending (BASELINES.md section 8; no official code
//! exists, the spec follows BalanceBenchmark's trainer with its pitfalls
//! fixed). The concatenation head; the loss of a step is
//! `sum_m w_m CE(z_m, y) + w_out CE(z, y)`, `z_m` the slice logits
//! (`W_m h_m + b / M`) on the samples having modality m and `z` the fused
//! logits (zero features for a missing modality, as `joint`).
//!
//! The weights are estimated before epoch 1 and then before every
//! `every`-th epoch (`every = 0`: only before epoch 1): for each modality m
//! and for the fused output, a copy of the current model is trained
//! `epochs` epochs with a fresh optimizer on the fused loss, with the other
//! modalities' inputs zeroed (for the output nothing is zeroed), and from
//! its per-sample mean train and validation losses before (`pre`) and after
//! (`now`): `G = Lval_pre - Lval_now`, `O = (Lval_now - Ltr_now) -
//! (Lval_pre - Ltr_pre)`, `w ∝ max(G, 0) / max(O^2, 1e-4)`, normalised to
//! sum 1 (uniform if every `G <= 0`). `rule = bb` measures `pre` after the
//! first estimation epoch and the train losses as the running mean of that
//! epoch's batches, and takes `|G / O^2|`, as BalanceBenchmark (which also
//! sums losses over batches instead of averaging them; both rules average).
//! `O^2` is floored at 1e-4 (|O| = 0.01 nats) because O can be about 0.
//!
//! Cost: `(M + 1) * epochs` extra epochs per estimation (plus, for `paper`,
//! two loss passes over train and validation per copy). The estimation runs
//! in `begin_epoch` and is part of the epoch's training time. The weights
//! are method state (checkpointed); an estimation is deterministic (its own
//! shuffle stream), so resume is exact. Host reads: none per step.

use super::{joint_forward, step_gradients, upload_batch, EpochCtx, Method, StepCtx};
use crate::data::{Batch, Loader};
use crate::dist::Weights;
use crate::metrics::NamedValues;
use crate::model::Model;
use crate::optim::Optimizer;
use crate::params::StateDict;
use crate::trainer::config::{BlendRule, GblendingParams, MethodKind, TrainConfig};
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::EpochRecord;
use crate::trainer::stats::Pending;
use crate::trainer::{Result, TrainError};
use mla_core::{Backend, Indices, Tape};

/// Shuffle stream of the estimation copies (distinct from the training order).
const BLEND_STREAM: u64 = 0x6B1E_0000_0000;
/// Floor of `O^2`.
pub const MIN_O_SQ: f64 = 1e-4;

/// One estimation's losses for one configuration (a modality or the output).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlendLosses {
    pub train_pre: f64,
    pub val_pre: f64,
    pub train_now: f64,
    pub val_now: f64,
}

impl BlendLosses {
    /// The unnormalised weight of this configuration under `rule`.
    pub fn raw_weight(&self, rule: BlendRule) -> f64 {
        let overfit = (self.val_now - self.train_now) - (self.val_pre - self.train_pre);
        let o2 = (overfit * overfit).max(MIN_O_SQ);
        match rule {
            BlendRule::Paper => (self.val_pre - self.val_now).max(0.0) / o2,
            BlendRule::Bb => (self.val_now - self.val_pre).abs() / o2,
        }
    }
}

/// Weights from raw weights: normalised to sum 1, uniform when all are 0.
pub fn normalise(raw: &[f64]) -> Vec<f64> {
    let total: f64 = raw.iter().sum();
    if total > 0.0 && total.is_finite() {
        raw.iter().map(|w| w / total).collect()
    } else {
        vec![1.0 / raw.len() as f64; raw.len()]
    }
}

pub struct Gblending<B: Backend<f32>> {
    params: GblendingParams,
    cfg: TrainConfig,
    names: Vec<String>,
    /// `w_m` for each modality, then `w_out`.
    weights: Vec<f64>,
    /// The losses of the estimation run before this epoch (if any).
    estimated: Option<Vec<BlendLosses>>,
    /// Off in benchmarks, which time the step alone (the estimation's
    /// cost is its `(M + 1) * epochs` epochs).
    estimating: bool,
    backend: B,
}

impl<B: Backend<f32>> Gblending<B> {
    pub fn new(backend: &B, cfg: &TrainConfig, layout: &ModelLayout) -> Result<Self> {
        let m = super::balanced_modalities(cfg, layout)?;
        Ok(Gblending {
            params: cfg.gblending_params(),
            cfg: cfg.clone(),
            names: layout.modalities.clone(),
            weights: vec![1.0 / (m + 1) as f64; m + 1],
            estimated: None,
            estimating: true,
            backend: backend.clone(),
        })
    }

    /// The current weights (modalities in model order, then the output).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Whether the weights are estimated before 1-based `epoch`.
    pub fn estimates_before(&self, epoch: usize) -> bool {
        match self.params.every {
            0 => epoch == 1,
            n => (epoch - 1).is_multiple_of(n),
        }
    }

    /// The estimation of every configuration from the current `model`.
    pub fn estimate(&self, ctx: &EpochCtx<'_, B>) -> Result<Vec<BlendLosses>> {
        let m = self.names.len();
        (0..=m)
            .map(|c| self.estimate_one(ctx, (c < m).then_some(c)))
            .collect()
    }

    /// One configuration: modality `keep` alone (the others zeroed), or
    /// everything (`None`).
    fn estimate_one(&self, ctx: &EpochCtx<'_, B>, keep: Option<usize>) -> Result<BlendLosses> {
        let mut copy = Model::new(&self.backend, ctx.model.spec().clone(), self.cfg.seed)?;
        copy.set_params(ctx.model.params().clone())?;
        let mut optim = Optimizer::new(self.cfg.optim_config())?;
        let bb = self.params.rule == BlendRule::Bb;
        let (mut train_pre, mut val_pre) = if bb {
            (f64::NAN, f64::NAN)
        } else {
            (
                self.mean_loss(&copy, ctx, ctx.train, keep)?,
                self.mean_loss(&copy, ctx, ctx.val, keep)?,
            )
        };
        let mut running = f64::NAN;
        let which = keep.unwrap_or(self.names.len()) as u64;
        for e in 1..=self.params.epochs {
            let loader = Loader::new(
                ctx.dataset.clone(),
                ctx.train.to_vec(),
                self.cfg.batch_size,
                Some(self.cfg.seed ^ BLEND_STREAM ^ (which << 20)),
                (ctx.epoch as u64) << 16 | e as u64,
            )?;
            let (mut sum, mut count) = (0.0, 0u64);
            for batch in loader {
                let batch = pad(&batch?, ctx.layout, keep);
                let labels = Indices::new(&self.backend, &batch.labels)?;
                let inputs = upload_batch(&self.backend, ctx.layout, &batch)?;
                let (grads, loss) = {
                    let tape = Tape::new(&self.backend);
                    let p = copy.track(&tape, |_| true);
                    let f = joint_forward(&copy, ctx.layout, &p, &tape, inputs, batch.len())?;
                    let loss = f.logits.cross_entropy(&labels)?;
                    let g = tape.backward(&loss)?;
                    (p.gradients(g), loss.into_value().to_scalar()? as f64)
                };
                optim.step(copy.params_mut(), &grads)?;
                copy.commit_buffers()?;
                sum += loss * batch.len() as f64;
                count += batch.len() as u64;
            }
            running = sum / count.max(1) as f64;
            if bb && e == 1 {
                train_pre = running;
                val_pre = self.mean_loss(&copy, ctx, ctx.val, keep)?;
            }
        }
        let train_now = if bb {
            running
        } else {
            self.mean_loss(&copy, ctx, ctx.train, keep)?
        };
        let val_now = self.mean_loss(&copy, ctx, ctx.val, keep)?;
        let l = BlendLosses {
            train_pre,
            val_pre,
            train_now,
            val_now,
        };
        if ![train_pre, val_pre, train_now, val_now]
            .iter()
            .all(|v| v.is_finite())
        {
            return Err(TrainError::Config(format!(
                "G-Blending estimation (epoch {}, {}): a loss is not finite: {l:?}",
                ctx.epoch,
                keep.map_or("output", |k| self.names[k].as_str())
            )));
        }
        Ok(l)
    }

    /// Per-sample mean CE of the fused logits of `model` on `samples`
    /// (the others zeroed when `keep` is a modality).
    fn mean_loss(
        &self,
        model: &Model<B>,
        ctx: &EpochCtx<'_, B>,
        samples: &[usize],
        keep: Option<usize>,
    ) -> Result<f64> {
        let loader = Loader::new(
            ctx.dataset.clone(),
            samples.to_vec(),
            self.cfg.eval_batch_size,
            None,
            0,
        )?;
        let (mut sum, mut count) = (0.0, 0u64);
        for batch in loader {
            let batch = pad(&batch?, ctx.layout, keep);
            let labels = Indices::new(&self.backend, &batch.labels)?;
            let inputs = upload_batch(&self.backend, ctx.layout, &batch)?;
            let tape = Tape::no_grad(&self.backend);
            let p = model.track(&tape, |_| false);
            let f = joint_forward(model, ctx.layout, &p, &tape, inputs, batch.len())?;
            sum += f.logits.cross_entropy(&labels)?.into_value().to_scalar()? as f64
                * batch.len() as f64;
            count += batch.len() as u64;
        }
        Ok(sum / count.max(1) as f64)
    }

    fn state_name(&self, c: usize) -> String {
        match self.names.get(c) {
            Some(n) => format!("method.gblending.weight.{n}"),
            None => "method.gblending.weight.output".into(),
        }
    }
}

/// `batch` with every model modality but `keep` replaced by zero inputs on
/// every row (BalanceBenchmark's padding); unchanged for `None`.
pub fn pad(batch: &Batch, layout: &ModelLayout, keep: Option<usize>) -> Batch {
    let Some(keep) = keep else {
        return batch.clone();
    };
    let mut out = batch.clone();
    let n = batch.len();
    for (mi, &d) in layout.data_index.iter().enumerate() {
        if mi == keep {
            continue;
        }
        let row: usize = layout.shapes[mi].iter().product();
        out.modalities[d].present = (0..n).collect();
        out.modalities[d].data = vec![0.0; n * row];
    }
    out
}

impl<B: Backend<f32>> Method<B> for Gblending<B> {
    fn kind(&self) -> MethodKind {
        MethodKind::Gblending
    }

    fn begin_epoch(&mut self, ctx: &EpochCtx<'_, B>) -> Result<()> {
        self.estimated = None;
        if self.estimating && self.estimates_before(ctx.epoch) {
            let losses = self.estimate(ctx)?;
            let raw: Vec<f64> = losses
                .iter()
                .map(|l| l.raw_weight(self.params.rule))
                .collect();
            self.weights = normalise(&raw);
            self.estimated = Some(losses);
        }
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &mut StepCtx<'_, B>,
        batch: &Batch,
        out: &mut Pending<B>,
    ) -> Result<()> {
        let m = ctx.layout.modalities.len();
        let n = batch.len();
        let rows_m: Vec<usize> = (0..m)
            .map(|mi| batch.modalities[ctx.layout.data_index[mi]].present.len())
            .collect();
        // Data parallel: each term scaled to its rows' share of the global
        // mean, so the ranks' gradients sum to one process's.
        let share = match ctx.dist {
            None => None,
            Some(d) => Some(super::global_rows(d, n, &rows_m)?),
        };
        let frac = |rows: usize, global: usize| rows as f64 / global.max(1) as f64;
        // A rank's share of the last global batch may be empty.
        let local = if n == 0 {
            None
        } else {
            let inputs = upload_batch(ctx.backend, ctx.layout, batch)?;
            let labels = Indices::new(ctx.backend, &batch.labels)?;
            let present: Vec<Option<Indices<f32, B>>> = (0..m)
                .map(|mi| {
                    let mb = &batch.modalities[ctx.layout.data_index[mi]];
                    (!mb.present.is_empty())
                        .then(|| super::labels_at(ctx.backend, batch, &mb.present))
                        .transpose()
                })
                .collect::<Result<_>>()?;
            let tape = Tape::new(ctx.backend);
            let p = ctx.model.track(&tape, |_| true);
            let f = joint_forward(ctx.model, ctx.layout, &p, &tape, inputs, n)?;
            let w = match &share {
                None => self.weights[m],
                Some((global, _)) => self.weights[m] * frac(n, *global),
            };
            let mut loss = f.logits.cross_entropy(&labels)?.scale(w)?;
            for (mi, h) in f.feats.iter().enumerate() {
                if let (Some(h), Some(y)) = (h, &present[mi]) {
                    let z = ctx.model.slice_logits(&p, &ctx.layout.modalities[mi], h)?;
                    let w = match &share {
                        None => self.weights[mi],
                        Some((_, global_m)) => self.weights[mi] * frac(rows_m[mi], global_m[mi]),
                    };
                    loss = loss.add(&z.cross_entropy(y)?.scale(w)?)?;
                }
            }
            let g = tape.backward(&loss)?;
            Some((p.gradients(g), loss.into_value()))
        };
        let Some((grads, loss)) = step_gradients(ctx, local, Weights::Sum, n)? else {
            return Ok(());
        };
        ctx.optim.step(ctx.model.params_mut(), &grads)?;
        out.push(ctx.step, None, loss);
        Ok(())
    }

    fn set_measuring(&mut self, on: bool) {
        self.estimating = on;
    }

    fn end_epoch(&mut self, record: &mut EpochRecord) -> Result<()> {
        let mut v = NamedValues::default();
        let m = self.names.len();
        for c in 0..=m {
            let name = self.names.get(c).map_or("output", String::as_str);
            v.push(format!("weight.{name}"), self.weights[c]);
            if let Some(l) = self.estimated.as_ref().map(|e| e[c]) {
                v.push(format!("val_pre.{name}"), l.val_pre);
                v.push(format!("val_now.{name}"), l.val_now);
                v.push(format!("train_pre.{name}"), l.train_pre);
                v.push(format!("train_now.{name}"), l.train_now);
            }
        }
        record.method_stats = Some(v);
        Ok(())
    }

    fn state(&self) -> Result<StateDict<B>> {
        let mut sd = StateDict::default();
        for (c, &w) in self.weights.iter().enumerate() {
            sd.scalars.push((self.state_name(c), w));
        }
        Ok(sd)
    }

    fn load_state(&mut self, sd: &StateDict<B>) -> Result<()> {
        let mut w = Vec::with_capacity(self.weights.len());
        for c in 0..self.weights.len() {
            let k = self.state_name(c);
            let v = sd
                .scalar(&k)
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    TrainError::Config(format!(
                        "G-Blending state `{k}` missing, negative or not finite"
                    ))
                })?;
            w.push(v);
        }
        let total: f64 = w.iter().sum();
        if (total - 1.0).abs() > 1e-6 || !sd.tensors.is_empty() || sd.scalars.len() != w.len() {
            return Err(TrainError::Config(format!(
                "G-Blending state: weights {w:?} do not sum to 1 or unexpected entries"
            )));
        }
        self.weights = w;
        Ok(())
    }
}
