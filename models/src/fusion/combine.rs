//! The concrete fusion functions, per sample, in f64 on the host: a sample's
//! result never depends on its batch mates, and missing modalities simply
//! leave the sum.

use crate::error::{ModelError, Result};
use mla_core::{Backend, Element, Tensor};

/// A fusion with its parameters (what a [`super::FusionRule`] resolves to).
/// Parameter vectors are indexed like the modalities given to [`fuse`].
#[derive(Clone, Debug, PartialEq)]
pub enum Fusion {
    /// `sum_m lambda_m z_m`, `lambda = softmax(-entropy(softmax(z_m)))` over the present modalities.
    Entropy,
    /// `sum_m z_m / |S|`.
    Mean,
    /// The entropy rule on `z_m / T_m`.
    Calibrated { temperatures: Vec<f64> },
    /// `sum_m w_m a_m z_m` with `a_m = lambda_m` (entropy) or 1. When every
    /// present modality has weight 0 the sample falls back to the mean of
    /// what is present, so a prediction always comes from the data.
    Weighted { weights: Vec<f64>, entropy: bool },
}

impl Fusion {
    fn check_params(&self, modalities: usize) -> Result<()> {
        let (what, v) = match self {
            Fusion::Entropy | Fusion::Mean => return Ok(()),
            Fusion::Calibrated { temperatures } => ("temperatures", temperatures),
            Fusion::Weighted { weights, .. } => ("weights", weights),
        };
        if v.len() != modalities {
            return Err(ModelError::Fusion(format!(
                "{} fusion {what} for {modalities} modalities",
                v.len()
            )));
        }
        let bad = |x: f64| match self {
            Fusion::Calibrated { .. } => !(x.is_finite() && x > 0.0),
            _ => !(x.is_finite() && x >= 0.0),
        };
        if let Some(x) = v.iter().find(|&&x| bad(x)) {
            return Err(ModelError::Fusion(format!(
                "fusion {what} must be finite and {}, got {x}",
                if matches!(self, Fusion::Calibrated { .. }) {
                    "positive"
                } else {
                    "non-negative"
                }
            )));
        }
        Ok(())
    }

    /// Fuses one sample: `rows[m]` is modality m's logits or `None` when it
    /// is absent. Writes the fused logits into `out` and each modality's
    /// share of the fusion (summing to 1, 0 where absent) into `weights`.
    pub fn combine<T: Element>(
        &self,
        rows: &[Option<&[T]>],
        out: &mut [f64],
        weights: &mut [f64],
    ) -> Result<()> {
        let nm = rows.len();
        self.check_params(nm)?;
        let c = out.len();
        weights.iter_mut().for_each(|w| *w = 0.0);
        out.iter_mut().for_each(|o| *o = 0.0);
        let scale = |m: usize| match self {
            Fusion::Calibrated { temperatures } => 1.0 / temperatures[m],
            _ => 1.0,
        };
        let uses_entropy = matches!(
            self,
            Fusion::Entropy | Fusion::Calibrated { .. } | Fusion::Weighted { entropy: true, .. }
        );
        let mut count = 0usize;
        let mut top = f64::NEG_INFINITY;
        // First pass: each present modality's score (-entropy or 0) into `weights`.
        for (m, row) in rows.iter().enumerate() {
            let Some(z) = row else { continue };
            if z.len() != c {
                return Err(ModelError::Fusion(format!(
                    "modality {m}: {} logits, expected {c} classes",
                    z.len()
                )));
            }
            let s = if uses_entropy {
                let sz = scale(m);
                -entropy_scaled(z, sz)
            } else {
                0.0
            };
            weights[m] = s;
            top = top.max(s);
            count += 1;
        }
        if count == 0 {
            return Err(ModelError::Fusion("no modality present".into()));
        }
        // lambda = softmax of the scores over the present modalities.
        let mut total = 0.0;
        for (m, row) in rows.iter().enumerate() {
            if row.is_some() {
                weights[m] = (weights[m] - top).exp();
                total += weights[m];
            }
        }
        weights.iter_mut().for_each(|w| *w /= total);
        // Coefficients on the raw logits.
        let coef: Vec<f64> = match self {
            Fusion::Weighted {
                weights: w,
                entropy,
            } => {
                let raw: Vec<f64> = (0..nm)
                    .map(|m| match rows[m] {
                        Some(_) if *entropy => w[m] * weights[m],
                        Some(_) => w[m],
                        None => 0.0,
                    })
                    .collect();
                let sum: f64 = raw.iter().sum();
                if sum > 0.0 {
                    weights
                        .iter_mut()
                        .zip(&raw)
                        .for_each(|(s, &r)| *s = r / sum);
                    raw
                } else {
                    // Every present modality has weight 0: the mean of what is present.
                    for (m, s) in weights.iter_mut().enumerate() {
                        *s = if rows[m].is_some() {
                            1.0 / count as f64
                        } else {
                            0.0
                        };
                    }
                    weights.to_vec()
                }
            }
            _ => (0..nm).map(|m| weights[m] * scale(m)).collect(),
        };
        for (m, row) in rows.iter().enumerate() {
            let Some(z) = row else { continue };
            for (o, &v) in out.iter_mut().zip(z.iter()) {
                *o += coef[m] * v.as_f64();
            }
        }
        Ok(())
    }
}

/// Entropy of `softmax(z)` in nats, computed stably in f64.
pub fn entropy<T: Element>(z: &[T]) -> f64 {
    entropy_scaled(z, 1.0)
}

/// Entropy of `softmax(s * z)`.
fn entropy_scaled<T: Element>(z: &[T], s: f64) -> f64 {
    let mx = z
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(s * v.as_f64()));
    let lse = mx
        + z.iter()
            .map(|&v| (s * v.as_f64() - mx).exp())
            .sum::<f64>()
            .ln();
    -z.iter()
        .map(|&v| {
            let ls = s * v.as_f64() - lse;
            ls.exp() * ls
        })
        .sum::<f64>()
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

/// Fuses a batch of `batch` samples from per-modality logits (one entry per
/// modality, in a fixed order; the weights' columns and the fusion's
/// parameters follow it). Every sample must have at least one modality;
/// logits must be finite.
pub fn fuse<T: Element>(
    fusion: &Fusion,
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
    fusion.check_params(nm)?;
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
    let mut out = vec![0.0f64; c];
    let mut w = vec![0.0f64; nm];
    for i in 0..batch {
        let rows: Vec<Option<&[T]>> = (0..nm)
            .map(|m| row[i * nm + m].map(|k| &inputs[m].logits[k * c..(k + 1) * c]))
            .collect();
        if rows.iter().all(Option::is_none) {
            return Err(ModelError::Fusion(format!(
                "sample {i} has no modality present"
            )));
        }
        fusion
            .combine(&rows, &mut out, &mut w)
            .map_err(|e| match e {
                ModelError::Fusion(msg) => ModelError::Fusion(format!("sample {i}: {msg}")),
                e => e,
            })?;
        for (o, &a) in logits[i * c..(i + 1) * c].iter_mut().zip(&out) {
            *o = T::lit(a);
        }
        for (o, &a) in weights[i * nm..(i + 1) * nm].iter_mut().zip(&w) {
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
    fusion: &Fusion,
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
    fuse(fusion, batch, c, &views)
}
