//! Fitting the fusion parameters on validation logits: one temperature per
//! modality and non-negative log-linear pooling weights, each by minimising
//! the validation negative log-likelihood (both problems are convex).

use super::calibration::{expected_calibration_error, ECE_BINS};
use super::combine::entropy;
use super::table::LogitTable;
use super::FusionRule;
use crate::error::{ModelError, Result};
use crate::metrics::NamedValues;
use serde::{Deserialize, Serialize};

/// Temperatures are searched in [MIN_TEMPERATURE, MAX_TEMPERATURE].
pub const MIN_TEMPERATURE: f64 = 1e-3;
pub const MAX_TEMPERATURE: f64 = 1e3;
/// Upper bound of a pooling weight: on separable validation logits the NLL
/// keeps falling as the weights grow, so the optimum may sit on this bound.
pub const MAX_WEIGHT: f64 = 1e3;

/// What was fitted on the validation split, by modality name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusionFit {
    /// `T_m` of `calibrated` (1 for a modality with no validation sample).
    pub temperatures: NamedValues,
    /// `w_m` of `weighted`.
    pub weights: NamedValues,
    /// `w_m` of `weighted-entropy`.
    pub weights_entropy: NamedValues,
    /// Validation accuracy of every concrete rule, as fitted.
    pub validation_accuracy: NamedValues,
    /// The rule `auto` uses: the most accurate on validation.
    pub chosen: FusionRule,
    /// Validation samples the fit saw.
    pub samples: u64,
}

impl FusionFit {
    pub fn temperature_values(&self) -> Vec<f64> {
        self.temperatures.iter().map(|(_, v)| v).collect()
    }
    pub fn weight_values(&self, entropy: bool) -> Vec<f64> {
        let w = if entropy {
            &self.weights_entropy
        } else {
            &self.weights
        };
        w.iter().map(|(_, v)| v).collect()
    }
    /// Checks that the fit is for `modalities` (names and order) and that its
    /// numbers are usable.
    pub fn check(&self, modalities: &[String]) -> Result<()> {
        for (what, nv) in [
            ("temperatures", &self.temperatures),
            ("weights", &self.weights),
            ("weights_entropy", &self.weights_entropy),
        ] {
            let names: Vec<&str> = nv.iter().map(|(n, _)| n).collect();
            if names != modalities.iter().map(String::as_str).collect::<Vec<_>>() {
                return Err(ModelError::Fusion(format!(
                    "fusion {what} are for modalities {names:?}, the model has {modalities:?}"
                )));
            }
        }
        for r in [
            FusionRule::Calibrated,
            FusionRule::Weighted,
            FusionRule::WeightedEntropy,
        ] {
            r.resolve(Some(self))?;
        }
        if self.chosen == FusionRule::Auto {
            return Err(ModelError::Fusion("fusion fit chose 'auto'".into()));
        }
        Ok(())
    }
}

/// `log sum exp(s * z) - s * z[label]` and its first two derivatives in s.
fn nll_scaled(z: &[f32], label: usize, s: f64) -> (f64, f64, f64) {
    let top = z
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(s * v as f64));
    let (mut sum, mut ez, mut ez2) = (0.0, 0.0, 0.0);
    for &v in z {
        let e = (s * v as f64 - top).exp();
        sum += e;
        ez += e * v as f64;
        ez2 += e * (v as f64) * (v as f64);
    }
    let (ez, ez2) = (ez / sum, ez2 / sum);
    (
        top + sum.ln() - s * z[label] as f64,
        ez - z[label] as f64,
        ez2 - ez * ez,
    )
}

/// The temperature `T` minimising the mean NLL of `softmax(z / T)` over
/// `rows`. The NLL is convex in `1 / T`, so its derivative there is monotone
/// and bisection on it (in log space) finds the minimum in [MIN_TEMPERATURE,
/// MAX_TEMPERATURE]; 1 without rows or when the logits carry no signal.
pub fn fit_temperature<'a>(rows: impl IntoIterator<Item = (&'a [f32], usize)> + Clone) -> f64 {
    let slope = |beta: f64| {
        let (mut d, mut n) = (0.0, 0usize);
        for (z, y) in rows.clone() {
            d += nll_scaled(z, y, beta).1;
            n += 1;
        }
        if n == 0 {
            0.0
        } else {
            d / n as f64
        }
    };
    let (mut lo, mut hi) = ((1.0 / MAX_TEMPERATURE).ln(), (1.0 / MIN_TEMPERATURE).ln());
    let (d_lo, d_hi) = (slope(lo.exp()), slope(hi.exp()));
    if d_lo == 0.0 && d_hi == 0.0 {
        return 1.0;
    }
    if d_lo >= 0.0 {
        return MAX_TEMPERATURE;
    }
    if d_hi <= 0.0 {
        return MIN_TEMPERATURE;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if slope(mid.exp()) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    1.0 / (0.5 * (lo + hi)).exp()
}

/// The pooled inputs `u[i][m] = a_im z_im` of the weighted rules (`a` the
/// entropy weights or 1; zero rows for absent modalities).
fn pooled_inputs(table: &LogitTable, entropy_weights: bool) -> Vec<f64> {
    let (n, nm, c) = (table.len(), table.modalities(), table.classes());
    let mut u = vec![0.0; n * nm * c];
    for i in 0..n {
        let rows = table.rows(i);
        let a: Vec<f64> = if entropy_weights {
            let s: Vec<Option<f64>> = rows.iter().map(|r| r.map(|z| -entropy(z))).collect();
            let top = s.iter().flatten().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let e: Vec<f64> = s
                .iter()
                .map(|v| v.map_or(0.0, |v| (v - top).exp()))
                .collect();
            let t: f64 = e.iter().sum();
            e.iter().map(|v| v / t).collect()
        } else {
            vec![1.0; nm]
        };
        for (m, r) in rows.iter().enumerate() {
            if let Some(z) = r {
                let o = (i * nm + m) * c;
                for (k, &v) in z.iter().enumerate() {
                    u[o + k] = a[m] * v as f64;
                }
            }
        }
    }
    u
}

/// Mean NLL of `softmax(sum_m w_m u_m)`, its gradient and Hessian in w.
fn pooled_nll(
    u: &[f64],
    labels: &[usize],
    nm: usize,
    c: usize,
    w: &[f64],
) -> (f64, Vec<f64>, Vec<f64>) {
    let n = labels.len();
    let (mut f, mut g, mut h) = (0.0, vec![0.0; nm], vec![0.0; nm * nm]);
    let mut logit = vec![0.0; c];
    let mut eu = vec![0.0; nm];
    for (i, &y) in labels.iter().enumerate() {
        let ui = &u[i * nm * c..(i + 1) * nm * c];
        logit.iter_mut().for_each(|l| *l = 0.0);
        for m in 0..nm {
            for k in 0..c {
                logit[k] += w[m] * ui[m * c + k];
            }
        }
        let top = logit.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = logit.iter().map(|&l| (l - top).exp()).sum();
        f += top + sum.ln() - logit[y];
        let p: Vec<f64> = logit.iter().map(|&l| (l - top).exp() / sum).collect();
        for m in 0..nm {
            eu[m] = (0..c).map(|k| p[k] * ui[m * c + k]).sum();
            g[m] += eu[m] - ui[m * c + y];
        }
        for a in 0..nm {
            for b in a..nm {
                let e: f64 = (0..c).map(|k| p[k] * ui[a * c + k] * ui[b * c + k]).sum();
                h[a * nm + b] += e - eu[a] * eu[b];
            }
        }
    }
    let inv = 1.0 / n.max(1) as f64;
    for a in 0..nm {
        for b in a..nm {
            h[a * nm + b] *= inv;
            h[b * nm + a] = h[a * nm + b];
        }
    }
    (f * inv, g.iter().map(|v| v * inv).collect(), h)
}

/// Mean validation NLL of the weighted rule with weights `w` (for tests and reports).
pub fn weighted_nll(table: &LogitTable, entropy_weights: bool, w: &[f64]) -> f64 {
    let u = pooled_inputs(table, entropy_weights);
    let labels: Vec<usize> = (0..table.len()).map(|i| table.label(i)).collect();
    pooled_nll(&u, &labels, table.modalities(), table.classes(), w).0
}

/// Solves `a x = b` (n x n, symmetric positive definite after the ridge) by
/// Gaussian elimination with partial pivoting; `None` when singular.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let piv =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[piv * n + col].abs() < 1e-300 {
            return None;
        }
        for k in 0..n {
            a.swap(col * n + k, piv * n + k);
        }
        b.swap(col, piv);
        for r in col + 1..n {
            let f = a[r * n + col] / a[col * n + col];
            for k in col..n {
                a[r * n + k] -= f * a[col * n + k];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r * n + r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Non-negative weights `w` (at most [MAX_WEIGHT]) minimising the mean NLL
/// of `softmax(sum_m w_m a_m z_m)` over the table (`a` the per-sample
/// entropy weights when `entropy_weights`, else 1). Projected Newton with an
/// Armijo line search from w = 1; the problem is convex, so this is the
/// global minimum up to the tolerance.
pub fn fit_weights(table: &LogitTable, entropy_weights: bool) -> Vec<f64> {
    let (nm, c) = (table.modalities(), table.classes());
    let mut w = vec![1.0; nm];
    if table.is_empty() {
        return w;
    }
    let u = pooled_inputs(table, entropy_weights);
    let labels: Vec<usize> = (0..table.len()).map(|i| table.label(i)).collect();
    let eval = |w: &[f64]| pooled_nll(&u, &labels, nm, c, w);
    let (mut f, mut g, mut h) = eval(&w);
    for _ in 0..100 {
        // Free coordinates: not held at a bound by the gradient.
        let free: Vec<usize> = (0..nm)
            .filter(|&m| !((w[m] <= 0.0 && g[m] > 0.0) || (w[m] >= MAX_WEIGHT && g[m] < 0.0)))
            .collect();
        let pg = free.iter().map(|&m| g[m] * g[m]).sum::<f64>().sqrt();
        if free.is_empty() || pg < 1e-12 {
            break;
        }
        let k = free.len();
        let trace: f64 = free.iter().map(|&m| h[m * nm + m]).sum::<f64>() / k as f64;
        let ridge = 1e-12 * trace.max(1e-12);
        let hf: Vec<f64> = free
            .iter()
            .flat_map(|&a| free.iter().map(move |&b| (a, b)))
            .map(|(a, b)| h[a * nm + b] + if a == b { ridge } else { 0.0 })
            .collect();
        let gf: Vec<f64> = free.iter().map(|&m| -g[m]).collect();
        let mut d = vec![0.0; nm];
        match solve(hf, gf.clone()) {
            Some(x) if x.iter().zip(&gf).map(|(a, b)| a * b).sum::<f64>() > 0.0 => {
                free.iter().zip(&x).for_each(|(&m, &v)| d[m] = v)
            }
            // Not a descent direction: steepest descent instead.
            _ => free.iter().zip(&gf).for_each(|(&m, &v)| d[m] = v),
        }
        let mut t = 1.0;
        let mut moved = false;
        while t > 1e-12 {
            let cand: Vec<f64> = (0..nm)
                .map(|m| (w[m] + t * d[m]).clamp(0.0, MAX_WEIGHT))
                .collect();
            let (fc, gc, hc) = eval(&cand);
            let dec: f64 = (0..nm).map(|m| g[m] * (cand[m] - w[m])).sum();
            if fc.is_finite() && fc <= f + 1e-4 * dec {
                let done = f - fc <= 1e-15 * f.abs().max(1.0);
                (w, f, g, h) = (cand, fc, gc, hc);
                moved = !done;
                break;
            }
            t *= 0.5;
        }
        if !moved {
            break;
        }
    }
    w
}

/// Fits every parameter on `table` (validation logits; `names` its
/// modalities in order), scores every concrete rule on it, and picks `auto`'s.
pub fn fit_fusion(table: &LogitTable, names: &[String]) -> Result<FusionFit> {
    if names.len() != table.modalities() {
        return Err(ModelError::Fusion(format!(
            "{} modality names for a table of {}",
            names.len(),
            table.modalities()
        )));
    }
    let named = |v: Vec<f64>| NamedValues(names.iter().cloned().zip(v).collect());
    let temps: Vec<f64> = (0..table.modalities())
        .map(|m| {
            let rows =
                (0..table.len()).filter_map(move |i| table.row(i, m).map(|z| (z, table.label(i))));
            fit_temperature(rows)
        })
        .collect();
    let mut fit = FusionFit {
        temperatures: named(temps),
        weights: named(fit_weights(table, false)),
        weights_entropy: named(fit_weights(table, true)),
        validation_accuracy: NamedValues::default(),
        chosen: FusionRule::Entropy,
        samples: table.len() as u64,
    };
    let mut best = f64::NEG_INFINITY;
    for rule in FusionRule::CONCRETE {
        let acc = table
            .score(&rule.resolve(Some(&fit))?)?
            .accuracy()
            .unwrap_or(0.0);
        fit.validation_accuracy.push(rule.as_str(), acc);
        if acc > best {
            best = acc;
            fit.chosen = rule;
        }
    }
    Ok(fit)
}

/// Each modality's ECE on `table`, before (T = 1) and after calibration.
pub(crate) fn calibration_errors(
    table: &LogitTable,
    names: &[String],
    fit: Option<&FusionFit>,
) -> (NamedValues, Option<NamedValues>) {
    let ece = |m: usize, t: f64| {
        let rows = (0..table.len()).filter_map(|i| table.row(i, m).map(|z| (z, table.label(i))));
        expected_calibration_error(rows, t, ECE_BINS)
    };
    let mut before = NamedValues::default();
    let mut after = NamedValues::default();
    let temps = fit.map(FusionFit::temperature_values);
    for (m, name) in names.iter().enumerate() {
        if let Some(e) = ece(m, 1.0) {
            before.push(name.clone(), e);
        }
        if let Some(t) = &temps {
            if let Some(e) = ece(m, t[m]) {
                after.push(name.clone(), e);
            }
        }
    }
    (before, temps.map(|_| after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_matches_a_known_system() {
        let x = solve(vec![4.0, 1.0, 1.0, 3.0], vec![1.0, 2.0]).unwrap();
        assert!((x[0] - 1.0 / 11.0).abs() < 1e-12 && (x[1] - 7.0 / 11.0).abs() < 1e-12);
        assert!(solve(vec![0.0, 0.0, 0.0, 0.0], vec![1.0, 1.0]).is_none());
    }

    #[test]
    fn nll_derivatives_match_finite_differences() {
        let z = [0.3f32, -1.1, 2.0, 0.7];
        let (f, d1, d2) = nll_scaled(&z, 1, 0.8);
        let e = 1e-5;
        let (fp, d1p, _) = nll_scaled(&z, 1, 0.8 + e);
        let (fm, d1m, _) = nll_scaled(&z, 1, 0.8 - e);
        assert!(((fp - fm) / (2.0 * e) - d1).abs() < 1e-7);
        assert!(((d1p - d1m) / (2.0 * e) - d2).abs() < 1e-6);
        assert!(f > 0.0);
    }
}
