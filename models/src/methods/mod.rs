//! Training methods as plug-ins behind one [`Method`] trait. The trainer
//! loop (batches, evaluation, model selection, metrics, checkpoints,
//! resume) is the same for all of them; a method owns what differs:
//!
//! - its per-batch step: forward passes, losses, backward passes, and any
//!   gradient manipulation, which runs before the optimizer adds weight decay
//!   and momentum (BASELINES.md section 1: scaling a gradient never scales the
//!   weight-decay term);
//! - the state it carries across steps and epochs (HGM projectors,
//!   prototypes), which goes into every checkpoint so `--resume` replays the
//!   run exactly;
//! - per-epoch statistics of what it did (HGM surviving fraction, OGM's
//!   coefficients, ...), written to the epoch record.
//!
//! The model a method trains (its head) and how its evaluation logits are
//! fused are declared by [`MethodKind::head`] and
//! [`MethodKind::fuses_by_rule`], so `mla eval` rebuilds them from a
//! checkpoint without a method instance.
//!
//! Adding a method: one file here implementing [`Method`], a variant of
//! [`MethodKind`], and one line in [`create`].

pub mod agm;
pub mod forgetting;
pub mod gblending;
pub mod gradops;
pub mod joint;
pub mod mla;
pub mod mmpareto;
pub mod ogm;
pub mod pmr;
pub mod reconboost;
pub mod unimodal;

use crate::data::{Batch, Dataset};
use crate::dist::{Dist, Reduced, Weights};
use crate::model::{scatter_rows, Model};
use crate::optim::Optimizer;
use crate::params::{StateDict, TrackedParams};
use crate::trainer::config::{MethodKind, TrainConfig};
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::EpochRecord;
use crate::trainer::stats::Pending;
use crate::trainer::{Result, TrainError};
use mla_core::{Backend, Indices, Tape, Tensor, Var};
use std::sync::Arc;

pub type T32<B> = Tensor<f32, B>;

/// What one step may read and change.
pub struct StepCtx<'a, B: Backend<f32>> {
    pub backend: &'a B,
    pub cfg: &'a TrainConfig,
    pub layout: &'a ModelLayout,
    pub model: &'a mut Model<B>,
    pub optim: &'a mut Optimizer<B>,
    /// 1-based epoch being trained.
    pub epoch: usize,
    /// 1-based step (batch) within the epoch.
    pub step: usize,
    /// Fraction of the run's steps done before this one, in [0, 1].
    pub progress: f64,
    /// Data-parallel training: the job this rank belongs to (the batch is
    /// this rank's share of the global batch).
    pub dist: Option<&'a Dist>,
}

/// What a method may read before an epoch's steps.
pub struct EpochCtx<'a, B: Backend<f32>> {
    pub cfg: &'a TrainConfig,
    pub layout: &'a ModelLayout,
    pub model: &'a Model<B>,
    pub dataset: &'a Arc<Dataset>,
    /// The run's training samples.
    pub train: &'a [usize],
    /// The run's validation samples (model selection; G-Blending's estimate).
    pub val: &'a [usize],
    /// 1-based epoch about to be trained.
    pub epoch: usize,
}

/// One training method.
pub trait Method<B: Backend<f32>> {
    fn kind(&self) -> MethodKind;

    /// Before the epoch's first step (PMR computes its prototypes here).
    fn begin_epoch(&mut self, _ctx: &EpochCtx<'_, B>) -> Result<()> {
        Ok(())
    }

    /// One batch: losses into `out`, parameters updated through `ctx.optim`.
    fn step(&mut self, ctx: &mut StepCtx<'_, B>, batch: &Batch, out: &mut Pending<B>)
        -> Result<()>;

    /// After the epoch's last step: the method's statistics of the epoch
    /// into its record.
    fn end_epoch(&mut self, _record: &mut EpochRecord) -> Result<()> {
        Ok(())
    }

    /// Off while a benchmark times steps: measurements that are not part of
    /// training (MLA's forgetting probe) and per-epoch work that does not
    /// change a step's cost (G-Blending's weight estimation) are skipped.
    fn set_measuring(&mut self, _on: bool) {}

    /// Prefix of the method's state tensors in a checkpoint.
    fn state_prefix(&self) -> &'static str {
        "method."
    }

    /// Checkpoint key of the method's scalar state.
    fn scalars_key(&self) -> &'static str {
        "method_scalars"
    }

    /// State carried across steps and epochs (names start with [`Method::state_prefix`]).
    fn state(&self) -> Result<StateDict<B>> {
        Ok(StateDict::default())
    }

    /// Restores [`Method::state`] from a checkpoint.
    fn load_state(&mut self, sd: &StateDict<B>) -> Result<()> {
        if sd.tensors.is_empty() && sd.scalars.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Config(format!(
                "the checkpoint holds state for method {} that takes none",
                self.kind()
            )))
        }
    }
}

/// The registry: the method `cfg` names, for the model `layout` describes.
pub fn create<B: Backend<f32>>(
    backend: &B,
    cfg: &TrainConfig,
    layout: &ModelLayout,
    dataset: &Dataset,
    val: &[usize],
) -> Result<Box<dyn Method<B>>> {
    Ok(match cfg.method {
        MethodKind::Mla => Box::new(mla::Mla::new(backend, cfg, layout, dataset, val)?),
        MethodKind::Joint => Box::new(joint::Joint),
        MethodKind::Unimodal => Box::new(unimodal::Unimodal),
        MethodKind::Ogm | MethodKind::OgmGe => Box::new(ogm::Ogm::new(cfg, layout)?),
        MethodKind::Pmr => Box::new(pmr::Pmr::new(backend, cfg, layout)?),
        MethodKind::Mmpareto => Box::new(mmpareto::Mmpareto::new(cfg, layout)?),
        MethodKind::Agm => Box::new(agm::Agm::new(cfg, layout)?),
        MethodKind::Reconboost => Box::new(reconboost::Reconboost::new(cfg, layout)?),
        MethodKind::Gblending => Box::new(gblending::Gblending::new(backend, cfg, layout)?),
    })
}

/// The model's number of modalities, refused below two: a balancing method
/// needs two or more to balance.
pub(crate) fn balanced_modalities(cfg: &TrainConfig, layout: &ModelLayout) -> Result<usize> {
    let m = layout.modalities.len();
    if m < 2 {
        return Err(TrainError::Config(format!(
            "--method {} balances two or more modalities; the model has {m}",
            cfg.method
        )));
    }
    Ok(m)
}

/// Uploads a modality's batch rows as `[n, ...shape]`.
pub(crate) fn upload<B: Backend<f32>>(
    backend: &B,
    data: &[f32],
    rows: usize,
    shape: &[usize],
) -> Result<T32<B>> {
    let mut dims = Vec::with_capacity(shape.len() + 1);
    dims.push(rows);
    dims.extend_from_slice(shape);
    Ok(Tensor::from_slice(backend, data, dims)?)
}

/// Model modality `mi`'s rows of `batch` as `[rows, ...shape]`.
pub(crate) fn upload_modality<B: Backend<f32>>(
    backend: &B,
    layout: &ModelLayout,
    batch: &Batch,
    mi: usize,
) -> Result<T32<B>> {
    let mb = &batch.modalities[layout.data_index[mi]];
    upload(backend, &mb.data, mb.present.len(), &layout.shapes[mi])
}

/// Labels of the rows at `present` (positions in the batch), on the host.
pub(crate) fn host_labels(batch: &Batch, present: &[usize]) -> Vec<u32> {
    present.iter().map(|&p| batch.labels[p]).collect()
}

/// Labels of the rows at `present` (positions in the batch).
pub(crate) fn labels_at<B: Backend<f32>>(
    backend: &B,
    batch: &Batch,
    present: &[usize],
) -> Result<Indices<f32, B>> {
    Ok(Indices::new(backend, &host_labels(batch, present))?)
}

/// One modality's rows of a batch on the device.
pub(crate) struct Input<'b, B: Backend<f32>> {
    pub x: T32<B>,
    /// Batch positions of the rows.
    pub present: &'b [usize],
}

/// Every model modality's rows of `batch` (`None` where no sample has it).
pub(crate) fn upload_batch<'b, B: Backend<f32>>(
    backend: &B,
    layout: &ModelLayout,
    batch: &'b Batch,
) -> Result<Vec<Option<Input<'b, B>>>> {
    (0..layout.modalities.len())
        .map(|mi| {
            let mb = &batch.modalities[layout.data_index[mi]];
            if mb.present.is_empty() {
                Ok(None)
            } else {
                Ok(Some(Input {
                    x: upload_modality(backend, layout, batch, mi)?,
                    present: mb.present.as_slice(),
                }))
            }
        })
        .collect()
}

/// The forward pass of a concatenation-head model on one batch.
pub(crate) struct JointForward<'t, B: Backend<f32>> {
    /// Each modality's features on its present rows (`None`: absent).
    pub feats: Vec<Option<Var<'t, f32, B>>>,
    /// Fused logits `[batch, C]` (zero features where a modality is missing).
    pub logits: Var<'t, f32, B>,
}

/// Every encoder on its present samples, features concatenated in model
/// order (zeros where a modality is missing), the concatenation head.
pub(crate) fn joint_forward<'t, B: Backend<f32>>(
    model: &Model<B>,
    layout: &ModelLayout,
    p: &TrackedParams<'t, B>,
    tape: &'t Tape<f32, B>,
    inputs: Vec<Option<Input<'_, B>>>,
    n: usize,
) -> Result<JointForward<'t, B>> {
    let s = model.spec().feature_size;
    let mut full = Vec::with_capacity(inputs.len());
    let mut feats = Vec::with_capacity(inputs.len());
    for (name, input) in layout.modalities.iter().zip(inputs) {
        match input {
            None => {
                full.push(tape.constant(T32::<B>::zeros(model.params().backend(), [n, s])?));
                feats.push(None);
            }
            Some(Input { x, present }) => {
                let h = model.features(p, name, &tape.constant(x))?;
                full.push(if present.len() == n {
                    h.clone()
                } else {
                    scatter_rows(&h, present, n)?
                });
                feats.push(Some(h));
            }
        }
    }
    let refs: Vec<_> = full.iter().collect();
    let logits = model.joint_logits(p, &refs)?;
    Ok(JointForward { feats, logits })
}

/// A data-parallel step's gradients, loss and extras summed over ranks.
pub(crate) struct RankSum<B: Backend<f32>> {
    pub grads: Vec<(String, T32<B>)>,
    /// The global batch's mean loss, as a `[]` tensor.
    pub loss: T32<B>,
    /// Rows of the global batch the step ran on.
    pub rows: usize,
    /// The `extra` values summed over ranks.
    pub extra: Vec<f32>,
}

/// Reduces one step over the ranks of `dist`: `local` is this rank's
/// gradients and mean loss over its `rows` (`None`: its share had none),
/// `trainable` the parameters the step may train. `None` when no rank had a
/// row: the step does not happen anywhere.
pub(crate) fn sum_over_ranks<B: Backend<f32>>(
    dist: &Dist,
    backend: &B,
    model: &Model<B>,
    trainable: impl Fn(&str) -> bool,
    local: Option<(&[(String, T32<B>)], &T32<B>)>,
    rows: usize,
    extra: &[f32],
) -> Result<Option<RankSum<B>>> {
    sum_over_ranks_by(
        dist,
        backend,
        model,
        trainable,
        local,
        Weights::MeanOver(&|_| rows),
        rows,
        extra,
    )
}

/// As [`sum_over_ranks`] with the gradients combined as `weights` says (a
/// loss per modality averages over the rows that have it; under
/// [`Weights::Sum`] the local loss is already its share of the global one
/// and is summed, not averaged).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sum_over_ranks_by<B: Backend<f32>>(
    dist: &Dist,
    backend: &B,
    model: &Model<B>,
    trainable: impl Fn(&str) -> bool,
    local: Option<(&[(String, T32<B>)], &T32<B>)>,
    weights: Weights<'_>,
    rows: usize,
    extra: &[f32],
) -> Result<Option<RankSum<B>>> {
    let buffers = model.buffer_names();
    let names: Vec<(String, Vec<usize>)> = model
        .params()
        .iter()
        .filter(|(n, _)| trainable(n) && !buffers.iter().any(|b| b == n))
        .map(|(n, t)| (n.to_string(), t.dims().to_vec()))
        .collect();
    let mut with_loss = Vec::with_capacity(extra.len() + 1);
    let summed = matches!(weights, Weights::Sum);
    with_loss.push(match local {
        Some((_, loss)) if summed => loss.to_scalar()?,
        Some((_, loss)) => loss.to_scalar()? * rows as f32,
        None => 0.0,
    });
    with_loss.extend_from_slice(extra);
    let Some(Reduced { grads, rows, extra }) = dist.mean_gradients(
        backend,
        &names,
        local.map(|l| l.0),
        weights,
        rows,
        &with_loss,
    )?
    else {
        return Ok(None);
    };
    let loss = if summed {
        extra[0]
    } else {
        extra[0] / rows as f32
    };
    let loss = Tensor::from_slice(backend, &[loss], Vec::<usize>::new())?;
    Ok(Some(RankSum {
        grads,
        loss,
        rows,
        extra: extra[1..].to_vec(),
    }))
}

/// Data parallel: the global batch's rows and each modality's rows among
/// them (one small sum), for methods that scale each loss term to its rows'
/// share of the global mean before summing gradients ([`Weights::Sum`]).
pub(crate) fn global_rows(d: &Dist, rows: usize, rows_m: &[usize]) -> Result<(usize, Vec<usize>)> {
    let mut buf: Vec<f64> = rows_m.iter().map(|&r| r as f64).collect();
    buf.push(rows as f64);
    d.sum_f64(&mut buf)?;
    let n = buf.pop().unwrap_or(0.0) as usize;
    Ok((n, buf.iter().map(|&r| r as usize).collect()))
}

/// A whole-model step's gradients and loss as the optimizer takes them:
/// this rank's own without a job, else summed over the ranks as `weights`
/// says. `local` is `None` where this rank's share had no rows; the result
/// is `None` where no rank had one (the step does not happen).
#[allow(clippy::type_complexity)]
pub(crate) fn step_gradients<B: Backend<f32>>(
    ctx: &StepCtx<'_, B>,
    local: Option<(Vec<(String, T32<B>)>, T32<B>)>,
    weights: Weights<'_>,
    rows: usize,
) -> Result<Option<(Vec<(String, T32<B>)>, T32<B>)>> {
    let Some(d) = ctx.dist else {
        return Ok(local);
    };
    let l = local.as_ref().map(|(g, l)| (g.as_slice(), l));
    let r = sum_over_ranks_by(d, ctx.backend, ctx.model, |_| true, l, weights, rows, &[])?;
    Ok(r.map(|r| (r.grads, r.loss)))
}
