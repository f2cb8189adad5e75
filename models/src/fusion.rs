//! Test-time fusion of per-modality logits, per sample (MLA.md):
//! - `entropy`: `lambda_m = exp(-e_m) / sum_{k in S} exp(-e_k)` with
//!   `e_m` the entropy of `softmax(z_m)` of that sample, over the modalities
//!   S present for it;
//! - `mean`: `lambda_m = 1 / |S|`.
//!
//! Fused logits are `sum_m lambda_m z_m`. Everything is computed per sample
//! in f64 on the host, so a sample's result never depends on its batch mates
//! and missing modalities simply leave the sum.

use crate::error::{ModelError, Result};
use mla_core::{Backend, Element, Tensor};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionKind {
    Entropy,
    Mean,
}

impl FusionKind {
    pub const NAMES: [&'static str; 2] = ["entropy", "mean"];
    pub fn as_str(self) -> &'static str {
        match self {
            FusionKind::Entropy => "entropy",
            FusionKind::Mean => "mean",
        }
    }
}

impl fmt::Display for FusionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FusionKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "entropy" => Ok(FusionKind::Entropy),
            "mean" => Ok(FusionKind::Mean),
            _ => Err(ModelError::unknown("fusion", s.trim(), &Self::NAMES)),
        }
    }
}

/// One modality's logits on the host: `logits` is `[positions.len(), classes]`
/// row-major, row k belonging to batch sample `positions[k]`.
#[derive(Clone, Copy, Debug)]
pub struct ModalityLogits<'a, T> {
    pub logits: &'a [T],
    pub positions: &'a [usize],
}

/// Fused result of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused<T> {
    pub batch: usize,
    pub num_classes: usize,
    pub num_modalities: usize,
    /// `[batch, classes]` row-major.
    pub logits: Vec<T>,
    /// `[batch, modalities]` row-major; 0 where a modality is absent. Each row sums to 1.
    pub weights: Vec<T>,
}

impl<T: Element> Fused<T> {
    pub fn row(&self, i: usize) -> &[T] {
        &self.logits[i * self.num_classes..(i + 1) * self.num_classes]
    }
    pub fn weights_row(&self, i: usize) -> &[T] {
        &self.weights[i * self.num_modalities..(i + 1) * self.num_modalities]
    }
    /// Argmax of each fused row (first maximum on ties).
    pub fn predictions(&self) -> Vec<usize> {
        (0..self.batch).map(|i| argmax(self.row(i))).collect()
    }
}

fn argmax<T: Element>(row: &[T]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Entropy of `softmax(z)` in nats, computed stably in f64.
pub fn entropy<T: Element>(z: &[T]) -> f64 {
    let mx = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v.as_f64()));
    let lse = mx + z.iter().map(|&v| (v.as_f64() - mx).exp()).sum::<f64>().ln();
    -z.iter()
        .map(|&v| {
            let ls = v.as_f64() - lse;
            ls.exp() * ls
        })
        .sum::<f64>()
}

/// Fuses a batch of `batch` samples from per-modality logits (one entry per
/// modality, in a fixed order; the weights' columns follow it). Every sample
/// must have at least one modality; logits must be finite.
pub fn fuse<T: Element>(
    kind: FusionKind,
    batch: usize,
    num_classes: usize,
    inputs: &[ModalityLogits<'_, T>],
) -> Result<Fused<T>> {
    let c = num_classes;
    let nm = inputs.len();
    if c == 0 {
        return Err(ModelError::Fusion(
            "number of classes must be positive".into(),
        ));
    }
    // row[i * nm + m] = row of modality m for sample i, if present.
    let mut row: Vec<Option<usize>> = vec![None; batch * nm];
    for (m, inp) in inputs.iter().enumerate() {
        if inp.logits.len() != inp.positions.len() * c {
            return Err(ModelError::Fusion(format!(
                "modality {m}: {} logits for {} samples of {c} classes",
                inp.logits.len(),
                inp.positions.len()
            )));
        }
        if let Some(k) = inp.logits.iter().position(|v| !v.as_f64().is_finite()) {
            return Err(ModelError::Fusion(format!(
                "modality {m}: non-finite logit for sample {}",
                inp.positions[k / c]
            )));
        }
        for (k, &pos) in inp.positions.iter().enumerate() {
            if pos >= batch {
                return Err(ModelError::Fusion(format!(
                    "modality {m}: position {pos} outside the batch of {batch}"
                )));
            }
            if row[pos * nm + m].replace(k).is_some() {
                return Err(ModelError::Fusion(format!(
                    "modality {m}: sample {pos} given twice"
                )));
            }
        }
    }
    let mut logits = vec![T::zero(); batch * c];
    let mut weights = vec![T::zero(); batch * nm];
    let mut score = vec![0.0f64; nm];
    let mut acc = vec![0.0f64; c];
    for i in 0..batch {
        let present: Vec<(usize, &[T])> = (0..nm)
            .filter_map(|m| row[i * nm + m].map(|k| (m, &inputs[m].logits[k * c..(k + 1) * c])))
            .collect();
        if present.is_empty() {
            return Err(ModelError::Fusion(format!(
                "sample {i} has no modality present"
            )));
        }
        // Softmax of -entropy over the present modalities (shifted by the max for stability).
        for &(m, z) in &present {
            score[m] = match kind {
                FusionKind::Entropy => -entropy(z),
                FusionKind::Mean => 0.0,
            };
        }
        let top = present
            .iter()
            .fold(f64::NEG_INFINITY, |a, &(m, _)| a.max(score[m]));
        let total: f64 = present.iter().map(|&(m, _)| (score[m] - top).exp()).sum();
        acc.iter_mut().for_each(|a| *a = 0.0);
        for &(m, z) in &present {
            let w = (score[m] - top).exp() / total;
            weights[i * nm + m] = T::lit(w);
            for (a, &v) in acc.iter_mut().zip(z) {
                *a += w * v.as_f64();
            }
        }
        for (o, &a) in logits[i * c..(i + 1) * c].iter_mut().zip(&acc) {
            *o = T::lit(a);
        }
    }
    Ok(Fused {
        batch,
        num_classes: c,
        num_modalities: nm,
        logits,
        weights,
    })
}

/// [`fuse`] from backend tensors (`[n_m, classes]` each, with positions):
/// reads each modality's logits back to the host once.
pub fn fuse_tensors<T: Element, B: Backend<T>>(
    kind: FusionKind,
    batch: usize,
    inputs: &[(&Tensor<T, B>, &[usize])],
) -> Result<Fused<T>> {
    let mut host = Vec::with_capacity(inputs.len());
    let mut classes = None;
    for (m, (t, pos)) in inputs.iter().enumerate() {
        let d = t.dims();
        if d.len() != 2 || d[0] != pos.len() {
            return Err(ModelError::Fusion(format!(
                "modality {m}: logits of shape {d:?} for {} samples (expected [samples, classes])",
                pos.len()
            )));
        }
        if *classes.get_or_insert(d[1]) != d[1] {
            return Err(ModelError::Fusion(format!(
                "modality {m}: {} classes, other modalities {}",
                d[1],
                classes.unwrap_or(0)
            )));
        }
        host.push(t.to_vec()?);
    }
    let Some(c) = classes else {
        return Err(ModelError::Fusion("no modality given".into()));
    };
    let views: Vec<ModalityLogits<'_, T>> = host
        .iter()
        .zip(inputs)
        .map(|(l, (_, pos))| ModalityLogits {
            logits: l.as_slice(),
            positions: pos,
        })
        .collect();
    fuse(kind, batch, c, &views)
}
