//! Evaluation metrics computed on the host from logits and features read back
//! once per evaluation batch: accuracy, mean cross-entropy, and the modality
//! gap (MLA.md: distance between the modalities' centroids of L2-normalised
//! features). What one evaluation pass reports is `trainer::EvalMetrics`.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Index of the largest value of a row; the first one on ties. NaN never wins
/// (a NaN row predicts class 0, and the trainer stops on non-finite losses).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// `-log softmax(row)[label]` in f64, stable.
pub fn cross_entropy_row(row: &[f32], label: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max
        + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    lse - row[label] as f64
}

/// Correct predictions out of a total, plus the summed loss.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counter {
    pub correct: u64,
    pub total: u64,
    pub loss_sum: f64,
}

impl Counter {
    /// Scores one `[classes]` row of logits against its label.
    pub fn add_row(&mut self, logits: &[f32], label: usize) {
        self.correct += u64::from(argmax(logits) == label);
        self.total += 1;
        self.loss_sum += cross_entropy_row(logits, label);
    }

    /// Fraction in [0, 1]; `None` when nothing was scored (e.g. a modality
    /// missing from every sample of a split).
    pub fn accuracy(&self) -> Option<f64> {
        (self.total > 0).then(|| self.correct as f64 / self.total as f64)
    }

    pub fn mean_loss(&self) -> Option<f64> {
        (self.total > 0).then(|| self.loss_sum / self.total as f64)
    }
}

/// Sums of L2-normalised feature rows per modality, for the modality gap.
#[derive(Clone, Debug)]
pub struct GapAccumulator {
    dim: usize,
    sums: Vec<Vec<f64>>,
    counts: Vec<u64>,
}

impl GapAccumulator {
    pub fn new(modalities: usize, dim: usize) -> Self {
        GapAccumulator {
            dim,
            sums: vec![vec![0.0; dim]; modalities],
            counts: vec![0; modalities],
        }
    }

    /// Adds rows of `dim` features (row-major) of modality `m`. Zero rows
    /// (a ReLU feature can be all zero) have no direction and are skipped.
    pub fn add(&mut self, m: usize, features: &[f32]) {
        if self.dim == 0 {
            return;
        }
        for row in features.chunks_exact(self.dim) {
            let norm = row
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt();
            if norm == 0.0 || !norm.is_finite() {
                continue;
            }
            for (s, &v) in self.sums[m].iter_mut().zip(row) {
                *s += v as f64 / norm;
            }
            self.counts[m] += 1;
        }
    }

    /// Euclidean distance between the centroids, averaged over every pair of
    /// modalities that has features; `None` with fewer than two such modalities.
    pub fn gap(&self) -> Option<f64> {
        let centroids: Vec<Vec<f64>> = self
            .sums
            .iter()
            .zip(&self.counts)
            .filter(|(_, &c)| c > 0)
            .map(|(s, &c)| s.iter().map(|v| v / c as f64).collect())
            .collect();
        let mut total = 0.0;
        let mut pairs = 0usize;
        for i in 0..centroids.len() {
            for j in i + 1..centroids.len() {
                let d2: f64 = centroids[i]
                    .iter()
                    .zip(&centroids[j])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                total += d2.sqrt();
                pairs += 1;
            }
        }
        (pairs > 0).then(|| total / pairs as f64)
    }
}

/// Values by name, kept in insertion (manifest) order and written as a JSON
/// object: `{"image": 0.97, "audio": 0.62}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamedValues(pub Vec<(String, f64)>);

impl NamedValues {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
    pub fn push(&mut self, name: impl Into<String>, v: f64) {
        self.0.push((name.into(), v));
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }
}

impl Serialize for NamedValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for NamedValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NamedValues;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of numbers")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<NamedValues, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, f64>()? {
                    out.push((k, v));
                }
                Ok(NamedValues(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_maximum_and_ignores_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.1]), 1);
    }

    #[test]
    fn cross_entropy_matches_direct_formula() {
        let row = [0.3f32, -1.2, 2.0];
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        let direct = -((row[2] as f64).exp() / z).ln();
        assert!((cross_entropy_row(&row, 2) - direct).abs() < 1e-12);
        // Stable for large logits where the direct formula overflows.
        assert!((cross_entropy_row(&[1000.0, 0.0], 0)).abs() < 1e-12);
    }

    #[test]
    fn gap_of_identical_directions_is_zero_and_of_orthogonal_ones_sqrt2() {
        let mut g = GapAccumulator::new(2, 2);
        g.add(0, &[2.0, 0.0, 5.0, 0.0]);
        g.add(1, &[0.0, 3.0]);
        assert!((g.gap().unwrap() - 2f64.sqrt()).abs() < 1e-12);
        let mut same = GapAccumulator::new(2, 3);
        same.add(0, &[1.0, 2.0, 3.0]);
        same.add(1, &[2.0, 4.0, 6.0, 0.0, 0.0, 0.0]);
        assert!(same.gap().unwrap().abs() < 1e-12);
        assert_eq!(GapAccumulator::new(2, 3).gap(), None);
    }

    #[test]
    fn named_values_keep_order_through_json() {
        let nv = NamedValues(vec![("z".into(), 0.5), ("a".into(), 0.25)]);
        let s = serde_json::to_string(&nv).unwrap();
        assert_eq!(s, r#"{"z":0.5,"a":0.25}"#);
        let back: NamedValues = serde_json::from_str(&s).unwrap();
        assert_eq!(back, nv);
    }
}
