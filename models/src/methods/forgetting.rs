//! What HGM is meant to prevent, measured directly: how much one modality's
//! step makes the shared head forget the other modalities. On a fixed probe
//! batch of validation samples, each other modality's loss and accuracy
//! through the shared head are taken right before and right after the step;
//! the epoch reports the mean increase per measured modality.
//!
//! Only the stepped modality's encoder and the head change in its step, so
//! the other modalities' probe features are reused from before the step and
//! only the head is re-applied. Probing every batch would add about a third
//! to the step's cost; every [`PROBE_EVERY`]-th batch is probed instead,
//! which estimates the same per-step mean. The probe reads nothing from the
//! training state it does not already read and draws no random numbers, so
//! training is bit for bit the same with or without it.

use super::upload_modality;
use crate::data::loader::make_batch;
use crate::data::{seeded_subset, Batch, Dataset};
use crate::metrics::{Counter, NamedValues};
use crate::model::Model;
use crate::trainer::layout::ModelLayout;
use crate::trainer::records::Forgetting;
use crate::trainer::Result;
use mla_core::{Backend, Tape, Tensor};

/// Batches between probed ones.
pub const PROBE_EVERY: usize = 16;
/// Validation samples in the probe batch (fewer when validation is smaller).
pub const PROBE_SIZE: usize = 128;

pub struct Probe {
    batch: Batch,
    loss_up: Vec<f64>,
    acc_down: Vec<f64>,
    count: Vec<u64>,
}

impl Probe {
    /// A seeded subset of `val` as the probe, fixed for the run.
    pub fn new(dataset: &Dataset, val: &[usize], seed: u64, modalities: usize) -> Result<Probe> {
        let mut samples = seeded_subset(val, PROBE_SIZE.min(val.len()), seed);
        samples.sort_unstable();
        Ok(Probe {
            batch: make_batch(dataset, &samples)?,
            loss_up: vec![0.0; modalities],
            acc_down: vec![0.0; modalities],
            count: vec![0; modalities],
        })
    }

    pub fn reset(&mut self) {
        self.loss_up.iter_mut().for_each(|v| *v = 0.0);
        self.acc_down.iter_mut().for_each(|v| *v = 0.0);
        self.count.iter_mut().for_each(|v| *v = 0);
    }

    /// Modality `mi`'s probe features (`None` when no probe sample has it).
    pub fn features<B: Backend<f32>>(
        &self,
        model: &Model<B>,
        layout: &ModelLayout,
        mi: usize,
    ) -> Result<Option<Tensor<f32, B>>> {
        let mb = &self.batch.modalities[layout.data_index[mi]];
        if mb.present.is_empty() {
            return Ok(None);
        }
        let backend = model.params().backend();
        let x = upload_modality(backend, layout, &self.batch, mi)?;
        let tape = Tape::no_grad(backend);
        let p = model.track(&tape, |_| false);
        let h = model.features(&p, &layout.modalities[mi], &tape.constant(x))?;
        Ok(Some(h.into_value()))
    }

    /// Loss and accuracy of the shared head on modality `mi`'s probe features.
    pub fn score<B: Backend<f32>>(
        &self,
        model: &Model<B>,
        layout: &ModelLayout,
        mi: usize,
        h: &Tensor<f32, B>,
    ) -> Result<Counter> {
        let tape = Tape::no_grad(model.params().backend());
        let p = model.track(&tape, |_| false);
        let z = model
            .head_logits(&p, &tape.constant(h.clone()))?
            .into_value()
            .to_vec()?;
        let c = layout.num_classes;
        let mb = &self.batch.modalities[layout.data_index[mi]];
        let mut counter = Counter::default();
        for (k, &pos) in mb.present.iter().enumerate() {
            counter.add_row(&z[k * c..(k + 1) * c], self.batch.labels[pos] as usize);
        }
        Ok(counter)
    }

    /// Adds one step's change of modality `mi` (not the stepped one).
    pub fn record(&mut self, mi: usize, before: &Counter, after: &Counter) {
        if let (Some(lb), Some(la), Some(ab), Some(aa)) = (
            before.mean_loss(),
            after.mean_loss(),
            before.accuracy(),
            after.accuracy(),
        ) {
            self.loss_up[mi] += la - lb;
            self.acc_down[mi] += ab - aa;
            self.count[mi] += 1;
        }
    }

    /// The epoch's means, by measured modality; `None` before any probe.
    pub fn summary(&self, names: &[String]) -> Option<Forgetting> {
        let total: u64 = self.count.iter().sum();
        if total == 0 {
            return None;
        }
        let mean = |v: &[f64]| {
            NamedValues(
                names
                    .iter()
                    .zip(v.iter().zip(&self.count))
                    .filter(|(_, (_, &n))| n > 0)
                    .map(|(name, (s, &n))| (name.clone(), s / n as f64))
                    .collect(),
            )
        };
        let all = |v: &[f64]| v.iter().sum::<f64>() / total as f64;
        Some(Forgetting {
            loss_increase: all(&self.loss_up),
            accuracy_drop: all(&self.acc_down),
            loss_increase_by_modality: mean(&self.loss_up),
            accuracy_drop_by_modality: mean(&self.acc_down),
            measurements: total,
            probe_samples: self.batch.len() as u64,
        })
    }
}
