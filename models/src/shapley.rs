//! Shapley modality contributions (BASELINES.md section 11): how much each
//! modality adds to the fused prediction, averaged over every order in which
//! the modalities could be added.
//!
//! The math here is over a *value oracle*: a function from a coalition
//! (bitmask over the modalities, bit `m` set = modality `m` kept) to the
//! correctness of the fused prediction of every sample when the modalities
//! outside the coalition are removed. How a modality is removed, and how the
//! kept ones are fused, is the oracle's business (`trainer::eval` builds it
//! from one evaluation pass, see [`Removal`]).
//!
//! - Dataset level: `v(S)` = accuracy of the coalition's predictions and
//!   `phi_m = sum_{S ⊆ M\{m}} |S|! (M-|S|-1)! / M! (v(S ∪ {m}) - v(S))`, in
//!   accuracy units, exact over all `2^M` coalitions.
//! - Sample level: the same with `v_i(S) = 1[prediction of sample i correct]`.
//!   `v_i(empty)` is the correctness of the all-removed prediction (not 0 as
//!   in BalanceBenchmark's sample-level code), so per sample
//!   `sum_m phi_m(i) = v_i(M) - v_i(empty)`, the same convention as the
//!   dataset level; by linearity of the Shapley value the mean of
//!   `phi_m(i)` over samples then equals the dataset-level `phi_m`. (BB's
//!   `v_i(empty) = 0` would add `v_i(empty) / M` to every `phi_m(i)`.)

use crate::error::{ModelError, Result};
use crate::metrics::NamedValues;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most modalities an exact Shapley value is computed for: `2^M`
/// coalitions, each one host pass over the split's logits.
pub const MAX_MODALITIES: usize = 8;

/// How a modality outside the coalition is removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Removal {
    /// Its input tensor is replaced by zeros and its encoder runs on them
    /// (BalanceBenchmark's `Calculate_Shapley`). Encoders are per-sample
    /// deterministic, so this is one constant feature vector `h_m(0)` per
    /// modality, and one constant logit row.
    #[default]
    #[serde(rename = "zero-input")]
    ZeroInput,
    /// Its features are set to zero before the head: for a linear concat
    /// head, exactly the additive logits `sum_{m in S} W_m h_m + b`.
    #[serde(rename = "zero-feature")]
    ZeroFeature,
}

impl Removal {
    pub const ALL: [Removal; 2] = [Removal::ZeroInput, Removal::ZeroFeature];

    pub fn as_str(self) -> &'static str {
        match self {
            Removal::ZeroInput => "zero-input",
            Removal::ZeroFeature => "zero-feature",
        }
    }
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a summary records of the Shapley contributions of one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shapley {
    pub removal: Removal,
    /// Fused accuracy with every modality removed (chance or the majority
    /// class, typically; not 0).
    pub v_empty: f64,
    /// Fused accuracy with every modality kept.
    pub v_full: f64,
    /// Dataset-level `phi_m` (accuracy units; they sum to `v_full - v_empty`).
    pub dataset: NamedValues,
    /// Mean over samples of the per-sample `phi_m(i)` (with `v_i(empty)` the
    /// all-removed prediction's correctness; equals `dataset` by linearity).
    pub per_sample_mean: NamedValues,
    /// Mean over samples of `|phi_m(i)|`: how much the modality moves single
    /// predictions, in either direction (can be large where `phi_m` is ~0).
    #[serde(default)]
    pub per_sample_mean_abs: NamedValues,
}

/// Everything computed from one oracle.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapleyValues {
    pub modalities: usize,
    pub samples: usize,
    /// `v(S)` by coalition bitmask (`0` empty, `2^M - 1` full).
    pub value: Vec<f64>,
    /// Dataset-level `phi_m`.
    pub phi: Vec<f64>,
    /// `phi_m(i)`, row-major `[samples, modalities]`, each in `[-1, 1]`.
    pub per_sample: Vec<f64>,
}

impl ShapleyValues {
    pub fn v_empty(&self) -> f64 {
        self.value[0]
    }
    pub fn v_full(&self) -> f64 {
        self.value[self.value.len() - 1]
    }
    /// Sample `i`'s `phi_m(i)` for every modality.
    pub fn sample(&self, i: usize) -> &[f64] {
        &self.per_sample[i * self.modalities..(i + 1) * self.modalities]
    }
    pub fn per_sample_mean(&self) -> Vec<f64> {
        self.column_mean(|x| x)
    }
    pub fn per_sample_mean_abs(&self) -> Vec<f64> {
        self.column_mean(f64::abs)
    }
    fn column_mean(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        (0..self.modalities)
            .map(|m| {
                (0..self.samples)
                    .map(|i| f(self.per_sample[i * self.modalities + m]))
                    .sum::<f64>()
                    / self.samples as f64
            })
            .collect()
    }

    /// The record for a summary, with the modalities' names.
    pub fn record(&self, removal: Removal, names: &[String]) -> Shapley {
        let named = |v: Vec<f64>| NamedValues(names.iter().cloned().zip(v).collect());
        Shapley {
            removal,
            v_empty: self.v_empty(),
            v_full: self.v_full(),
            dataset: named(self.phi.clone()),
            per_sample_mean: named(self.per_sample_mean()),
            per_sample_mean_abs: named(self.per_sample_mean_abs()),
        }
    }
}

/// Shapley weight of a coalition of `size` modalities not containing the
/// one scored, among `modalities`: `size! (M - size - 1)! / M!`.
pub fn coalition_weight(modalities: usize, size: usize) -> f64 {
    assert!(
        size < modalities,
        "coalition of {size} of {modalities} modalities without the scored one"
    );
    let fact = |k: usize| (1..=k).map(|x| x as f64).product::<f64>();
    fact(size) * fact(modalities - size - 1) / fact(modalities)
}

/// Exact Shapley values of `modalities` players over `samples` samples.
/// `oracle(mask)` returns the correctness of every sample's prediction with
/// exactly the modalities of `mask` kept; it is called once per coalition.
pub fn shapley(
    modalities: usize,
    samples: usize,
    mut oracle: impl FnMut(usize) -> Result<Vec<bool>>,
) -> Result<ShapleyValues> {
    if modalities == 0 || modalities > MAX_MODALITIES {
        return Err(ModelError::Config(format!(
            "exact Shapley values need 1 to {MAX_MODALITIES} modalities (2^M coalitions), not {modalities}"
        )));
    }
    if samples == 0 {
        return Err(ModelError::Config(
            "Shapley values of an empty split: no sample to score".into(),
        ));
    }
    let coalitions = 1usize << modalities;
    let mut correct = Vec::with_capacity(coalitions);
    for mask in 0..coalitions {
        let c = oracle(mask)?;
        if c.len() != samples {
            return Err(ModelError::Config(format!(
                "Shapley value oracle gave {} results for coalition {mask:#b}, expected one per sample ({samples})",
                c.len()
            )));
        }
        correct.push(c);
    }
    let counts: Vec<u64> = correct
        .iter()
        .map(|c| c.iter().filter(|&&b| b).count() as u64)
        .collect();
    let value: Vec<f64> = counts.iter().map(|&k| k as f64 / samples as f64).collect();
    let weight: Vec<f64> = (0..modalities)
        .map(|k| coalition_weight(modalities, k))
        .collect();
    // (coalition without m, weight) for every m: the terms of phi_m.
    let terms: Vec<Vec<(usize, f64)>> = (0..modalities)
        .map(|m| {
            (0..coalitions)
                .filter(|s| s & (1 << m) == 0)
                .map(|s| (s, weight[s.count_ones() as usize]))
                .collect()
        })
        .collect();
    let phi: Vec<f64> = terms
        .iter()
        .enumerate()
        .map(|(m, t)| {
            t.iter()
                .map(|&(s, w)| w * (value[s | (1 << m)] - value[s]))
                .sum()
        })
        .collect();
    let mut per_sample = vec![0.0; samples * modalities];
    for i in 0..samples {
        for (m, t) in terms.iter().enumerate() {
            per_sample[i * modalities + m] = t
                .iter()
                .map(|&(s, w)| {
                    w * (f64::from(u8::from(correct[s | (1 << m)][i]))
                        - f64::from(u8::from(correct[s][i])))
                })
                .sum();
        }
    }
    Ok(ShapleyValues {
        modalities,
        samples,
        value,
        phi,
        per_sample,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A random oracle: independent random correctness per coalition and sample.
    fn random_oracle(rng: &mut Rng, m: usize, n: usize) -> Vec<Vec<bool>> {
        (0..1usize << m)
            .map(|_| {
                let p = rng.uniform();
                (0..n).map(|_| rng.uniform() < p).collect()
            })
            .collect()
    }

    fn run(table: &[Vec<bool>], m: usize) -> ShapleyValues {
        shapley(m, table[0].len(), |s| Ok(table[s].clone())).unwrap()
    }

    /// Every ordering of `0..m`.
    fn permutations(m: usize) -> Vec<Vec<usize>> {
        if m == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(m - 1) {
            for pos in 0..=p.len() {
                let mut q = p.clone();
                q.insert(pos, m - 1);
                out.push(q);
            }
        }
        out
    }

    /// The textbook definition: the marginal contribution of each player
    /// when added in order, averaged over all `M!` orders.
    fn permutation_average(v: impl Fn(usize) -> f64, m: usize) -> Vec<f64> {
        let perms = permutations(m);
        let mut phi = vec![0.0; m];
        for p in &perms {
            let mut s = 0usize;
            for &player in p {
                phi[player] += v(s | (1 << player)) - v(s);
                s |= 1 << player;
            }
        }
        phi.iter().map(|x| x / perms.len() as f64).collect()
    }

    #[test]
    fn weights_of_every_size_sum_to_one_over_coalitions() {
        for m in 1..=MAX_MODALITIES {
            // Sum over coalitions without the player: C(m-1, k) w(k) = 1/m each k.
            let binom =
                |n: usize, k: usize| (0..k).fold(1.0, |a, j| a * (n - j) as f64 / (j + 1) as f64);
            let total: f64 = (0..m)
                .map(|k| binom(m - 1, k) * coalition_weight(m, k))
                .sum();
            assert!((total - 1.0).abs() < 1e-12, "{m}: {total}");
        }
        assert_eq!(coalition_weight(2, 0), 0.5);
        assert!((coalition_weight(3, 1) - 1.0 / 6.0).abs() < 1e-15);
    }

    #[test]
    fn matches_the_permutation_average_for_three_and_four_modalities() {
        let mut rng = Rng::new(5);
        for m in [3, 4] {
            for _ in 0..20 {
                let n = 1 + rng.below(40);
                let table = random_oracle(&mut rng, m, n);
                let sv = run(&table, m);
                let want = permutation_average(|s| sv.value[s], m);
                for k in 0..m {
                    assert!((sv.phi[k] - want[k]).abs() < 1e-12, "M={m} phi_{k}");
                }
                for i in 0..n {
                    let vi = |s: usize| f64::from(u8::from(table[s][i]));
                    let want = permutation_average(vi, m);
                    for k in 0..m {
                        assert!(
                            (sv.sample(i)[k] - want[k]).abs() < 1e-12,
                            "M={m} sample {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn efficiency_bounds_and_the_mean_of_samples() {
        let mut rng = Rng::new(9);
        for m in 1..=5 {
            let n = 1 + rng.below(50);
            let table = random_oracle(&mut rng, m, n);
            let sv = run(&table, m);
            let full = (1 << m) - 1;
            let sum: f64 = sv.phi.iter().sum();
            assert!((sum - (sv.v_full() - sv.v_empty())).abs() < 1e-12, "M={m}");
            for i in 0..n {
                let s: f64 = sv.sample(i).iter().sum();
                let want = f64::from(u8::from(table[full][i])) - f64::from(u8::from(table[0][i]));
                assert!((s - want).abs() < 1e-12, "M={m} sample {i}");
                assert!(sv.sample(i).iter().all(|p| (-1.0..=1.0).contains(p)));
            }
            for (a, b) in sv.per_sample_mean().iter().zip(&sv.phi) {
                assert!((a - b).abs() < 1e-12, "linearity");
            }
            assert!(sv
                .per_sample_mean_abs()
                .iter()
                .zip(&sv.phi)
                .all(|(a, p)| *a >= p.abs() - 1e-12));
        }
    }

    #[test]
    fn extreme_per_sample_values_reach_the_bounds() {
        // One modality decides everything: correct exactly when it is kept.
        let table: Vec<Vec<bool>> = (0..4).map(|s| vec![s & 1 == 1, s & 1 == 0]).collect();
        let sv = run(&table, 2);
        assert_eq!(sv.sample(0), &[1.0, 0.0]);
        assert_eq!(sv.sample(1), &[-1.0, 0.0]);
        assert_eq!(sv.phi, vec![0.0, 0.0]);
        assert_eq!(sv.per_sample_mean_abs(), vec![1.0, 0.0]);
    }

    #[test]
    fn symmetric_players_get_equal_values_and_null_players_zero() {
        let mut rng = Rng::new(3);
        let m = 4;
        let n = 30;
        // Outcome depends on how many of {0, 1} are kept, and on 2, never on 3.
        let by_key: Vec<Vec<bool>> = (0..6)
            .map(|_| (0..n).map(|_| rng.uniform() < 0.5).collect())
            .collect();
        let table: Vec<Vec<bool>> = (0..1usize << m)
            .map(|s| {
                let pair = (s & 1) + ((s >> 1) & 1);
                by_key[pair * 2 + ((s >> 2) & 1)].clone()
            })
            .collect();
        let sv = run(&table, m);
        assert_eq!(sv.phi[0], sv.phi[1]);
        assert_eq!(sv.phi[3], 0.0);
        for i in 0..n {
            assert_eq!(sv.sample(i)[0], sv.sample(i)[1]);
            assert_eq!(sv.sample(i)[3], 0.0);
        }
        assert!(
            sv.phi[0] != 0.0 || sv.phi[2] != 0.0,
            "the fixture must not be trivial"
        );
    }

    #[test]
    fn unimodal_is_the_difference_to_the_empty_coalition() {
        let table = vec![vec![true, false, false], vec![true, true, false]];
        let sv = run(&table, 1);
        assert!((sv.phi[0] - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(sv.sample(1), &[1.0]);
        assert_eq!(sv.v_empty(), 1.0 / 3.0);
    }

    #[test]
    fn refuses_too_many_modalities_and_bad_oracles() {
        let e = shapley(9, 1, |_| Ok(vec![true])).unwrap_err().to_string();
        assert!(
            e.contains("1 to 8 modalities") && e.contains("not 9"),
            "{e}"
        );
        assert!(shapley(0, 1, |_| Ok(vec![true])).is_err());
        assert!(shapley(2, 0, |_| Ok(vec![])).is_err());
        let e = shapley(2, 3, |_| Ok(vec![true])).unwrap_err().to_string();
        assert!(e.contains("expected one per sample (3)"), "{e}");
        // M = 8 is the largest accepted.
        let sv = shapley(8, 2, |s| Ok(vec![s.count_ones() > 3, s & 1 == 1])).unwrap();
        assert!((sv.phi.iter().sum::<f64>() - (sv.v_full() - sv.v_empty())).abs() < 1e-12);
    }

    #[test]
    fn record_names_the_values_and_parses_back() {
        let table = vec![
            vec![false, false],
            vec![true, false],
            vec![false, true],
            vec![true, true],
        ];
        let sv = run(&table, 2);
        let rec = sv.record(Removal::ZeroFeature, &["image".into(), "audio".into()]);
        assert_eq!(rec.dataset.get("image"), Some(0.5));
        assert_eq!(rec.dataset.get("audio"), Some(0.5));
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains(r#""removal":"zero-feature""#), "{json}");
        let back: Shapley = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
    }
}
