//! What a method's steps leave for the loop to read: losses wait on the
//! device in [`Pending`] until the loop reads them (a read is a device
//! synchronisation), and [`EpochStats`] adds them up per epoch.

use super::config::MethodKind;
use super::{named, Result, TrainError};
use crate::metrics::NamedValues;
use mla_core::{Backend, Tensor};

type T32<B> = Tensor<f32, B>;

struct PendingStep<B: Backend<f32>> {
    step: usize,
    /// Model modality of a one-modality step; `None` for a step on all.
    modality: Option<usize>,
    loss: T32<B>,
}

/// Device values of the steps since the last read.
pub struct Pending<B: Backend<f32>> {
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

    /// No step waiting.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// A step's loss, read with the next flush. `modality`: the model
    /// modality of a unimodal-style step, `None` for a step on all of them.
    pub fn push(&mut self, step: usize, modality: Option<usize>, loss: T32<B>) {
        self.steps.push(PendingStep {
            step,
            modality,
            loss,
        });
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
                    None => "all".to_string(),
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
pub struct EpochStats {
    pub samples: u64,
    pub seconds: f64,
    pub steps: u64,
    /// Matrix-product operations (`mla_core::flops`), all ranks.
    pub flops: f64,
    loss_sum: Vec<f64>,
    loss_steps: Vec<u64>,
}

impl EpochStats {
    pub fn new(modalities: usize) -> Self {
        EpochStats {
            samples: 0,
            seconds: 0.0,
            steps: 0,
            flops: 0.0,
            loss_sum: vec![0.0; modalities.max(1)],
            loss_steps: vec![0; modalities.max(1)],
        }
    }

    pub fn mean_loss(&self) -> f64 {
        let steps: u64 = self.loss_steps.iter().sum();
        self.loss_sum.iter().sum::<f64>() / steps.max(1) as f64
    }

    pub fn loss_by_modality(&self, names: &[String], method: MethodKind) -> Option<NamedValues> {
        (method == MethodKind::Mla).then(|| {
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
