//! Evaluation metrics computed on the host from logits and features read back
//! once per evaluation batch: accuracy, mean cross-entropy, macro-F1 (from a
//! confusion matrix), and the modality gap (MLA.md: distance between the
//! modalities' centroids of L2-normalised features). What one evaluation pass
//! reports is `trainer::EvalMetrics`; Shapley contributions are in `shapley`.

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

/// A `classes x classes` confusion matrix (rows: label, columns: prediction),
/// kept next to a [`Counter`] for the macro-F1 of one predictor. It is a
/// separate type so that `Counter` stays a small `Copy` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    classes: usize,
    /// `[label * classes + predicted]`.
    counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Counts one prediction. Labels and predictions come from the dataset
    /// (checked when it is opened) and from an argmax over `classes` logits,
    /// so one out of range is a bug of the caller, reported as such.
    pub fn add(&mut self, label: usize, predicted: usize) {
        assert!(
            label < self.classes && predicted < self.classes,
            "confusion matrix of {} classes given label {label}, prediction {predicted}",
            self.classes
        );
        self.counts[label * self.classes + predicted] += 1;
    }

    /// Counts the argmax of one `[classes]` row of logits (as [`Counter::add_row`]).
    pub fn add_row(&mut self, logits: &[f32], label: usize) {
        self.add(label, argmax(logits));
    }

    /// The counts, `[label * classes + predicted]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Replaces the counts (as [`Confusion::counts`] gives them).
    pub fn set_counts(&mut self, counts: impl IntoIterator<Item = u64>) {
        self.counts = counts
            .into_iter()
            .take(self.classes * self.classes)
            .collect();
        self.counts.resize(self.classes * self.classes, 0);
    }

    /// Adds another matrix of the same size (e.g. of another batch).
    pub fn merge(&mut self, other: &Confusion) {
        assert_eq!(self.classes, other.classes, "merging confusion matrices");
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
    }

    pub fn count(&self, label: usize, predicted: usize) -> u64 {
        self.counts[label * self.classes + predicted]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `trace / total`; `None` when empty.
    pub fn accuracy(&self) -> Option<f64> {
        let total = self.total();
        let trace: u64 = (0..self.classes).map(|c| self.count(c, c)).sum();
        (total > 0).then(|| trace as f64 / total as f64)
    }

    /// F1 of each class (BASELINES.md section 11): `TP = CM[c,c]`,
    /// `FP = colsum - TP`, `FN = rowsum - TP`; precision and recall are 0
    /// when their denominator is 0, and F1 is 0 when `P + R = 0`.
    pub fn per_class_f1(&self) -> Vec<f64> {
        let c = self.classes;
        (0..c)
            .map(|k| {
                let tp = self.count(k, k);
                let row: u64 = (0..c).map(|p| self.count(k, p)).sum();
                let col: u64 = (0..c).map(|l| self.count(l, k)).sum();
                let ratio = |num: u64, den: u64| {
                    if den == 0 {
                        0.0
                    } else {
                        num as f64 / den as f64
                    }
                };
                let (p, r) = (ratio(tp, col), ratio(tp, row));
                if p + r == 0.0 {
                    0.0
                } else {
                    2.0 * p * r / (p + r)
                }
            })
            .collect()
    }

    /// Mean F1 over all `classes` classes, a class absent from both labels
    /// and predictions counting 0: sklearn's
    /// `f1_score(labels=range(C), average='macro', zero_division=0)`, and
    /// BalanceBenchmark's macro-F1 (LFM's official code instead leaves such
    /// classes out). `None` when nothing was counted.
    pub fn macro_f1(&self) -> Option<f64> {
        if self.total() == 0 || self.classes == 0 {
            return None;
        }
        Some(self.per_class_f1().iter().sum::<f64>() / self.classes as f64)
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

    /// The sums and counts as flat values (sums first), for a reduction.
    pub fn write_flat(&self, out: &mut Vec<f64>) {
        self.sums.iter().for_each(|s| out.extend_from_slice(s));
        out.extend(self.counts.iter().map(|&c| c as f64));
    }

    /// Replaces the sums and counts from values [`GapAccumulator::write_flat`] wrote.
    pub fn read_flat(&mut self, values: &mut impl Iterator<Item = f64>) {
        for s in self.sums.iter_mut() {
            s.iter_mut().for_each(|v| *v = values.next().unwrap_or(0.0));
        }
        self.counts
            .iter_mut()
            .for_each(|c| *c = values.next().unwrap_or(0.0) as u64);
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

    /// Macro-F1 written directly from the definition, sample by sample,
    /// without a confusion matrix.
    fn naive_macro_f1(y: &[usize], yhat: &[usize], classes: usize) -> f64 {
        let mut sum = 0.0;
        for c in 0..classes {
            let tp = y
                .iter()
                .zip(yhat)
                .filter(|&(&a, &b)| a == c && b == c)
                .count() as f64;
            let fp = y
                .iter()
                .zip(yhat)
                .filter(|&(&a, &b)| a != c && b == c)
                .count() as f64;
            let fneg = y
                .iter()
                .zip(yhat)
                .filter(|&(&a, &b)| a == c && b != c)
                .count() as f64;
            let p = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
            let r = if tp + fneg > 0.0 {
                tp / (tp + fneg)
            } else {
                0.0
            };
            sum += if p + r > 0.0 {
                2.0 * p * r / (p + r)
            } else {
                0.0
            };
        }
        sum / classes as f64
    }

    #[test]
    fn macro_f1_of_a_hand_computed_case() {
        // Class 0: P = R = 1/2, F1 = 1/2. Class 1: P = 2/3, R = 1, F1 = 0.8.
        // Class 2: never predicted, missed once: 0. Class 3: absent: 0.
        let mut cm = Confusion::new(4);
        for (y, p) in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)] {
            cm.add(y, p);
        }
        let f1 = cm.per_class_f1();
        assert!((f1[0] - 0.5).abs() < 1e-15 && (f1[1] - 0.8).abs() < 1e-15);
        assert_eq!((f1[2], f1[3]), (0.0, 0.0));
        assert!((cm.macro_f1().unwrap() - 0.325).abs() < 1e-15);
        assert_eq!(cm.accuracy(), Some(0.6));
        assert_eq!(Confusion::new(4).macro_f1(), None);
        // Perfect predictions of every class give 1; of only some classes
        // the absent ones pull the mean down.
        let mut perfect = Confusion::new(2);
        perfect.add(0, 0);
        perfect.add(1, 1);
        assert_eq!(perfect.macro_f1(), Some(1.0));
        let mut partial = Confusion::new(3);
        partial.add(0, 0);
        partial.add(1, 1);
        assert!((partial.macro_f1().unwrap() - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn macro_f1_matches_the_definition_on_random_predictions() {
        let mut rng = crate::rng::Rng::new(11);
        for trial in 0..200 {
            let classes = 2 + rng.below(6);
            let n = 1 + rng.below(60);
            // Class `classes - 1` never occurs in labels or predictions, so
            // it must count as F1 = 0 in the mean.
            let absent = classes - 1;
            let y: Vec<usize> = (0..n).map(|_| rng.below(absent)).collect();
            let yhat: Vec<usize> = y
                .iter()
                .map(|&l| {
                    if rng.uniform() < 0.5 {
                        l
                    } else {
                        rng.below(absent)
                    }
                })
                .collect();
            let mut one = Confusion::new(classes);
            // Per-batch matrices merged, and row-by-row argmax counting.
            let mut merged = Confusion::new(classes);
            let mut rows = Confusion::new(classes);
            let batch = 1 + rng.below(7);
            for (k, chunk) in y.chunks(batch).enumerate() {
                let mut b = Confusion::new(classes);
                for (j, &l) in chunk.iter().enumerate() {
                    let p = yhat[k * batch + j];
                    b.add(l, p);
                    one.add(l, p);
                    let mut logits = vec![0.0f32; classes];
                    logits[p] = 1.0;
                    rows.add_row(&logits, l);
                }
                merged.merge(&b);
            }
            let want = naive_macro_f1(&y, &yhat, classes);
            let got = one.macro_f1().unwrap();
            assert!((got - want).abs() < 1e-12, "trial {trial}: {got} vs {want}");
            assert_eq!(merged, one, "trial {trial}: per-batch accumulation");
            assert_eq!(rows, one, "trial {trial}: add_row");
            assert_eq!(one.per_class_f1()[absent], 0.0);
            let acc = y.iter().zip(&yhat).filter(|(a, b)| a == b).count() as f64 / n as f64;
            assert_eq!(one.accuracy(), Some(acc));
        }
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
