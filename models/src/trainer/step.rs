//! The per-batch steps. Each step owns its tape (DESIGN.md invariant 3):
//! build, backward, take the gradients, drop, then HGM and the optimizer
//! update the parameters in place. Nothing is read back to the host here:
//! losses wait in `Pending` until the loop reads them, and HGM keeps its
//! surviving-fraction sums on the device until the end of the epoch.

use super::config::Method;
use super::{named, upload, Result, TrainError, Trainer};
use crate::data::Batch;
use crate::metrics::NamedValues;
use crate::model::{scatter_rows, Model};
use mla_core::{Backend, Indices, Tape, Tensor};

type T32<B> = Tensor<f32, B>;

struct PendingStep<B: Backend<f32>> {
    step: usize,
    /// Model modality of an MLA/unimodal step; `None` for a joint step.
    modality: Option<usize>,
    loss: T32<B>,
}

/// Device values of the steps since the last read.
pub(crate) struct Pending<B: Backend<f32>> {
    steps: Vec<PendingStep<B>>,
}

impl<B: Backend<f32>> Default for Pending<B> {
    fn default() -> Self {
        Pending { steps: Vec::new() }
    }
}

impl<B: Backend<f32>> Pending<B> {
    /// Steps waiting to be read.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Reads the pending values, checks every loss is finite, adds them to the
    /// epoch's statistics; returns the mean loss of the flushed steps.
    pub fn flush(
        &mut self,
        epoch: usize,
        modalities: &[String],
        stats: &mut EpochStats,
    ) -> Result<f64> {
        let mut sum = 0.0;
        let n = self.steps.len();
        for p in self.steps.drain(..) {
            let loss = p.loss.to_scalar()?;
            if !loss.is_finite() {
                let modality = match p.modality {
                    Some(m) => modalities[m].clone(),
                    None => "all (joint)".to_string(),
                };
                return Err(TrainError::NonFinite {
                    epoch,
                    step: p.step,
                    modality,
                    value: loss,
                });
            }
            sum += loss as f64;
            let slot = p.modality.unwrap_or(0);
            stats.loss_sum[slot] += loss as f64;
            stats.loss_steps[slot] += 1;
        }
        Ok(if n > 0 { sum / n as f64 } else { f64::NAN })
    }
}

/// What one epoch's steps add up to.
pub(crate) struct EpochStats {
    pub samples: u64,
    pub seconds: f64,
    loss_sum: Vec<f64>,
    loss_steps: Vec<u64>,
    /// HGM: mean surviving fraction over all steps, and per modality.
    pub surviving: Option<(f64, NamedValues)>,
    /// HGM: the alpha of the epoch's last step in absolute terms.
    pub effective_alpha: Option<f64>,
}

impl EpochStats {
    pub fn new(modalities: usize) -> Self {
        EpochStats {
            samples: 0,
            seconds: 0.0,
            loss_sum: vec![0.0; modalities.max(1)],
            loss_steps: vec![0; modalities.max(1)],
            surviving: None,
            effective_alpha: None,
        }
    }

    pub fn mean_loss(&self) -> f64 {
        let steps: u64 = self.loss_steps.iter().sum();
        self.loss_sum.iter().sum::<f64>() / steps.max(1) as f64
    }

    pub fn loss_by_modality(&self, names: &[String], method: Method) -> Option<NamedValues> {
        (method == Method::Mla).then(|| {
            let v = self
                .loss_sum
                .iter()
                .zip(&self.loss_steps)
                .map(|(s, &n)| (n > 0).then(|| s / n as f64))
                .collect();
            named(names, v)
        })
    }
}

/// Labels of the rows at `present` (positions in the batch).
fn labels_at<B: Backend<f32>>(
    backend: &B,
    batch: &Batch,
    present: &[usize],
) -> Result<Indices<f32, B>> {
    let v: Vec<u32> = present.iter().map(|&p| batch.labels[p]).collect();
    Ok(Indices::new(backend, &v)?)
}

/// One unimodal step on modality `mi` through the shared (MLA) or own
/// (unimodal) head: features, head, CE, backward, HGM on `grad(head.weight)`,
/// optimizer step on that encoder and the head only.
pub(crate) fn mla<B: Backend<f32>>(
    t: &mut Trainer<B>,
    batch: &Batch,
    mi: usize,
    step: usize,
    pending: &mut Pending<B>,
) -> Result<()> {
    let mb = &batch.modalities[t.layout.data_index[mi]];
    if mb.present.is_empty() {
        return Ok(());
    }
    let name = t.layout.modalities[mi].clone();
    let x = upload(&t.backend, &mb.data, mb.present.len(), &t.layout.shapes[mi])?;
    let labels = labels_at(&t.backend, batch, &mb.present)?;
    let (mut grads, loss, h) = {
        let tape = Tape::new(&t.backend);
        let p = t.model.track(&tape, Model::<B>::step_trainable(&name));
        let xv = tape.constant(x);
        let h = t.model.features(&p, &name, &xv)?;
        let logits = t.model.head_logits(&p, &h)?;
        let loss = logits.cross_entropy(&labels)?;
        let g = tape.backward(&loss)?;
        // Only the feature values leave the block: HGM's r is detached.
        (p.gradients(g), loss.into_value(), h.into_value())
    };
    if let Some(hgm) = t.hgm.as_mut() {
        hgm.apply(&name, &h, &mut grads)?;
    }
    drop(h);
    t.optim.step(t.model.params_mut(), &grads)?;
    pending.steps.push(PendingStep {
        step,
        modality: Some(mi),
        loss,
    });
    Ok(())
}

/// One joint step: every encoder on its present samples, features
/// concatenated (zeros where a modality is missing), one head, CE on the
/// fused logits, every parameter updated.
pub(crate) fn joint<B: Backend<f32>>(
    t: &mut Trainer<B>,
    batch: &Batch,
    step: usize,
    pending: &mut Pending<B>,
) -> Result<()> {
    let n = batch.len();
    let s = t.cfg.feature_size;
    let inputs = t
        .layout
        .data_index
        .iter()
        .zip(&t.layout.shapes)
        .map(|(&d, shape)| {
            let mb = &batch.modalities[d];
            if mb.present.is_empty() {
                Ok(None)
            } else {
                upload(&t.backend, &mb.data, mb.present.len(), shape)
                    .map(|x| Some((x, mb.present.as_slice())))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let labels = Indices::new(&t.backend, &batch.labels)?;
    let (grads, loss) = {
        let tape = Tape::new(&t.backend);
        let p = t.model.track(&tape, |_| true);
        let mut feats = Vec::with_capacity(inputs.len());
        for (name, input) in t.layout.modalities.iter().zip(inputs) {
            feats.push(match input {
                None => tape.constant(T32::<B>::zeros(&t.backend, [n, s])?),
                Some((x, present)) => {
                    let h = t.model.features(&p, name, &tape.constant(x))?;
                    if present.len() == n {
                        h
                    } else {
                        scatter_rows(&h, present, n)?
                    }
                }
            });
        }
        let refs: Vec<_> = feats.iter().collect();
        let logits = t.model.joint_logits(&p, &refs)?;
        let loss = logits.cross_entropy(&labels)?;
        let g = tape.backward(&loss)?;
        (p.gradients(g), loss.into_value())
    };
    t.optim.step(t.model.params_mut(), &grads)?;
    pending.steps.push(PendingStep {
        step,
        modality: None,
        loss,
    });
    Ok(())
}
