//! Fusion rules with parameters fitted on validation: temperatures and
//! pooling weights against brute-force searches and finite differences,
//! every rule against a naive per-sample reference (missing modalities
//! included), per-sample independence, modality-order invariance, and
//! `auto`'s choice.

use mla_models::fusion::{
    fit_fusion, fit_temperature, fit_weights, fuse, weighted_nll, Fusion, FusionFit, FusionRule,
    LogitTable, ModalityLogits, MAX_WEIGHT,
};
use mla_models::metrics::NamedValues;
use mla_models::rng::Rng;

/// A table of `n` samples: modality m is informative with strength
/// `signal[m]` and over-/under-confident by `scale[m]`; each sample misses
/// a random modality with probability `missing` (never all of them).
fn table(
    seed: u64,
    n: usize,
    classes: usize,
    signal: &[f64],
    scale: &[f64],
    missing: f64,
) -> LogitTable {
    let nm = signal.len();
    let mut rng = Rng::new(seed);
    let mut t = LogitTable::new(nm, classes);
    for _ in 0..n {
        let y = rng.below(classes);
        let keep = rng.below(nm);
        let rows: Vec<Option<Vec<f32>>> = (0..nm)
            .map(|m| {
                let z: Vec<f32> = (0..classes)
                    .map(|c| {
                        let s = if c == y { signal[m] } else { 0.0 };
                        (scale[m] * (s + rng.normal())) as f32
                    })
                    .collect();
                (m == keep || rng.uniform() >= missing).then_some(z)
            })
            .collect();
        let refs: Vec<Option<&[f32]>> = rows.iter().map(|r| r.as_deref()).collect();
        t.push(y, &refs).unwrap();
    }
    t
}

fn nll_at_temperature(t: &LogitTable, m: usize, temp: f64) -> f64 {
    let mut s = 0.0;
    let mut n = 0;
    for i in 0..t.len() {
        if let Some(z) = t.row(i, m) {
            let v: Vec<f64> = z.iter().map(|&x| x as f64 / temp).collect();
            let top = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = top + v.iter().map(|x| (x - top).exp()).sum::<f64>().ln();
            s += lse - v[t.label(i)];
            n += 1;
        }
    }
    s / n as f64
}

/// Minimum of f over [lo, hi] by a coarse grid, then a fine grid of step
/// `step` around the coarse minimum (f is unimodal).
fn grid_min(f: impl Fn(f64) -> f64, lo: f64, hi: f64, step: f64) -> f64 {
    let coarse = 2000;
    let at = |k: usize| lo + (hi - lo) * k as f64 / coarse as f64;
    let k = (0..=coarse)
        .min_by(|&a, &b| f(at(a)).total_cmp(&f(at(b))))
        .unwrap();
    let (a, b) = (at(k.saturating_sub(1)), at((k + 1).min(coarse)));
    let steps = ((b - a) / step).ceil() as usize;
    (0..=steps)
        .map(|j| a + j as f64 * step)
        .min_by(|&x, &y| f(x).total_cmp(&f(y)))
        .unwrap()
}

#[test]
fn temperatures_are_positive_and_match_a_brute_force_grid() {
    for (seed, scale) in [(1u64, 3.0), (2, 0.4), (3, 1.0), (4, 6.0)] {
        let t = table(seed, 400, 5, &[1.5], &[scale], 0.0);
        let rows: Vec<(&[f32], usize)> = (0..t.len())
            .map(|i| (t.row(i, 0).unwrap(), t.label(i)))
            .collect();
        let fitted = fit_temperature(rows.iter().copied());
        assert!(fitted > 0.0);
        let grid = grid_min(|x| nll_at_temperature(&t, 0, x), 0.05, 20.0, 1e-5);
        assert!(
            (fitted - grid).abs() <= 1e-4,
            "seed {seed}: fitted {fitted}, grid {grid}"
        );
        // An over-confident modality (large scale) is cooled down, and the reverse.
        if scale > 2.0 {
            assert!(fitted > 1.0, "{fitted}");
        }
        if scale < 0.5 {
            assert!(fitted < 1.0, "{fitted}");
        }
    }
    // No rows: the neutral temperature.
    assert_eq!(fit_temperature(std::iter::empty::<(&[f32], usize)>()), 1.0);
}

/// d/dw_m of the weighted NLL by central differences (an independent check
/// of the optimiser's gradient and stopping rule).
fn fd_grad(t: &LogitTable, entropy: bool, w: &[f64]) -> Vec<f64> {
    (0..w.len())
        .map(|m| {
            let h = 1e-5 * w[m].max(1.0);
            let mut p = w.to_vec();
            let mut q = w.to_vec();
            p[m] += h;
            q[m] = (q[m] - h).max(0.0);
            (weighted_nll(t, entropy, &p) - weighted_nll(t, entropy, &q)) / (p[m] - q[m])
        })
        .collect()
}

#[test]
fn weights_are_non_negative_and_optimal() {
    // Modality 2 is anti-informative (its logits favour a wrong class), so
    // its optimal weight is 0: the bound must be handled, not crossed.
    let cases: [(&[f64], &[f64]); 3] = [
        (&[2.0, 0.7], &[1.0, 3.0]),
        (&[1.0, 1.0], &[0.5, 0.5]),
        (&[2.0, 0.8, -1.0], &[1.0, 2.0, 1.0]),
    ];
    for (k, (signal, scale)) in cases.iter().enumerate() {
        let t = table(10 + k as u64, 500, 4, signal, scale, 0.3);
        for entropy in [false, true] {
            let w = fit_weights(&t, entropy);
            assert!(w.iter().all(|&v| (0.0..=MAX_WEIGHT).contains(&v)), "{w:?}");
            let g = fd_grad(&t, entropy, &w);
            for m in 0..w.len() {
                if w[m] > 1e-9 {
                    assert!(
                        g[m].abs() < 1e-5,
                        "case {k} entropy {entropy}: w {w:?} grad {g:?}"
                    );
                } else {
                    assert!(
                        g[m] > -1e-5,
                        "case {k}: at the bound the gradient points outwards: {g:?}"
                    );
                }
            }
            if signal.len() == 3 && !entropy {
                assert_eq!(w[2], 0.0, "anti-informative modality keeps weight {w:?}");
            }
            // No point of a grid does better (2 modalities).
            if w.len() == 2 {
                let f = weighted_nll(&t, entropy, &w);
                let mut best = f64::INFINITY;
                for a in 0..=60 {
                    for b in 0..=60 {
                        let v = [a as f64 * 0.05, b as f64 * 0.05];
                        best = best.min(weighted_nll(&t, entropy, &v));
                    }
                }
                assert!(f <= best + 1e-9, "fitted {f} vs grid {best}");
            }
        }
    }
}

/// Naive per-sample reference of every concrete fusion.
fn reference(f: &Fusion, rows: &[Option<&[f32]>]) -> Vec<f64> {
    let c = rows.iter().flatten().next().unwrap().len();
    let ent = |z: &[f64]| {
        let e: Vec<f64> = z.iter().map(|v| v.exp()).collect();
        let s: f64 = e.iter().sum();
        -e.iter().map(|x| (x / s) * (x / s).ln()).sum::<f64>()
    };
    let present: Vec<usize> = (0..rows.len()).filter(|&m| rows[m].is_some()).collect();
    let z =
        |m: usize, s: f64| -> Vec<f64> { rows[m].unwrap().iter().map(|&v| v as f64 * s).collect() };
    let lambda = |s: &dyn Fn(usize) -> f64| -> Vec<f64> {
        let e: Vec<f64> = present.iter().map(|&m| ent(&z(m, s(m)))).collect();
        let emax = e.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let raw: Vec<f64> = e.iter().map(|&x| (emax - x).exp()).collect();
        let t: f64 = raw.iter().sum();
        raw.iter().map(|r| r / t).collect()
    };
    let mut out = vec![0.0; c];
    let mut add = |m: usize, coef: f64, s: f64| {
        for (o, v) in out.iter_mut().zip(z(m, s)) {
            *o += coef * v;
        }
    };
    match f {
        Fusion::Entropy => {
            let l = lambda(&|_| 1.0);
            present.iter().zip(&l).for_each(|(&m, &w)| add(m, w, 1.0));
        }
        Fusion::Mean => present
            .iter()
            .for_each(|&m| add(m, 1.0 / present.len() as f64, 1.0)),
        Fusion::Calibrated { temperatures } => {
            let l = lambda(&|m| 1.0 / temperatures[m]);
            present
                .iter()
                .zip(&l)
                .for_each(|(&m, &w)| add(m, w, 1.0 / temperatures[m]));
        }
        Fusion::Weighted { weights, entropy } => {
            let l = if *entropy {
                lambda(&|_| 1.0)
            } else {
                vec![1.0; present.len()]
            };
            let coef: Vec<f64> = present
                .iter()
                .zip(&l)
                .map(|(&m, &a)| weights[m] * a)
                .collect();
            if coef.iter().sum::<f64>() > 0.0 {
                present
                    .iter()
                    .zip(&coef)
                    .for_each(|(&m, &w)| add(m, w, 1.0));
            } else {
                present
                    .iter()
                    .for_each(|&m| add(m, 1.0 / present.len() as f64, 1.0));
            }
        }
    }
    out
}

fn fusions(nm: usize, rng: &mut Rng) -> Vec<Fusion> {
    let mut w: Vec<f64> = (0..nm).map(|_| 2.0 * rng.uniform()).collect();
    w[0] = 0.0; // a zero weight, to reach the fallback on samples holding only modality 0
    vec![
        Fusion::Entropy,
        Fusion::Mean,
        Fusion::Calibrated {
            temperatures: (0..nm).map(|_| 0.2 + 4.0 * rng.uniform()).collect(),
        },
        Fusion::Weighted {
            weights: w.clone(),
            entropy: false,
        },
        Fusion::Weighted {
            weights: w,
            entropy: true,
        },
    ]
}

#[test]
fn every_rule_matches_the_naive_reference_with_missing_modalities() {
    let mut rng = Rng::new(5);
    for (seed, nm) in [(21u64, 2usize), (22, 3), (23, 4)] {
        let t = table(seed, 120, 6, &vec![1.0; nm], &vec![2.0; nm], 0.4);
        for f in fusions(nm, &mut rng) {
            let (mut out, mut w) = (vec![0.0; 6], vec![0.0; nm]);
            let mut correct = 0;
            for i in 0..t.len() {
                let rows = t.rows(i);
                f.combine(&rows, &mut out, &mut w).unwrap();
                let want = reference(&f, &rows);
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-9 * (1.0 + b.abs()),
                        "{f:?} sample {i}: {out:?} vs {want:?}"
                    );
                }
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                for m in 0..nm {
                    assert!(w[m] >= 0.0 && (rows[m].is_some() || w[m] == 0.0));
                }
                let pred = (0..6)
                    .max_by(|&a, &b| want[a].total_cmp(&want[b]).then(b.cmp(&a)))
                    .unwrap();
                correct += usize::from(pred == t.label(i));
            }
            // The table's accuracy is the reference's.
            let c = t.score(&f).unwrap();
            assert_eq!(c.correct as usize, correct, "{f:?}");
        }
    }
}

#[test]
fn one_modality_present_gives_that_modality_and_samples_are_independent() {
    let mut rng = Rng::new(6);
    let t = table(31, 60, 5, &[1.0, 0.5, 2.0], &[1.0, 3.0, 0.5], 0.5);
    for f in fusions(3, &mut rng) {
        for i in 0..t.len() {
            let rows = t.rows(i);
            let present: Vec<usize> = (0..3).filter(|&m| rows[m].is_some()).collect();
            let (mut out, mut w) = (vec![0.0; 5], vec![0.0; 3]);
            f.combine(&rows, &mut out, &mut w).unwrap();
            if present.len() == 1 {
                let z = rows[present[0]].unwrap();
                let arg = |v: &[f64]| {
                    (0..5)
                        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
                        .unwrap()
                };
                let zf: Vec<f64> = z.iter().map(|&x| x as f64).collect();
                assert_eq!(arg(&out), arg(&zf), "{f:?}");
                assert_eq!(w[present[0]], 1.0);
            }
        }
        // A batch of all samples fused at once equals each sample fused alone.
        let logits: Vec<Vec<f32>> = (0..3)
            .map(|m| {
                (0..t.len())
                    .filter_map(|i| t.row(i, m))
                    .flatten()
                    .copied()
                    .collect()
            })
            .collect();
        let positions: Vec<Vec<usize>> = (0..3)
            .map(|m| (0..t.len()).filter(|&i| t.row(i, m).is_some()).collect())
            .collect();
        let inputs: Vec<ModalityLogits<'_, f32>> = (0..3)
            .map(|m| ModalityLogits {
                logits: &logits[m],
                positions: &positions[m],
            })
            .collect();
        let batch = fuse(&f, t.len(), 5, &inputs).unwrap();
        for i in 0..t.len() {
            let (mut out, mut w) = (vec![0.0; 5], vec![0.0; 3]);
            f.combine(&t.rows(i), &mut out, &mut w).unwrap();
            let row: Vec<f32> = out.iter().map(|&v| v as f32).collect();
            assert_eq!(batch.row(i), &row[..], "{f:?} sample {i}");
        }
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|m| format!("m{m}")).collect()
}

fn permute(nv: &NamedValues, order: &[usize]) -> Vec<f64> {
    order.iter().map(|&m| nv.0[m].1).collect()
}

#[test]
fn fits_and_rules_do_not_depend_on_modality_order() {
    let t = table(41, 300, 4, &[1.8, 0.6, 1.0], &[1.0, 4.0, 0.7], 0.3);
    let order = [2usize, 0, 1];
    let p = t.permuted(&order).unwrap();
    let fit = fit_fusion(&t, &names(3)).unwrap();
    let fitp = fit_fusion(&p, &names(3)).unwrap();
    let close = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs()))
    };
    assert!(close(
        &fitp.temperature_values(),
        &permute(&fit.temperatures, &order)
    ));
    assert!(
        close(&fitp.weight_values(false), &permute(&fit.weights, &order)),
        "{fit:?} {fitp:?}"
    );
    assert!(close(
        &fitp.weight_values(true),
        &permute(&fit.weights_entropy, &order)
    ));
    assert_eq!(fit.chosen, fitp.chosen);
    for r in FusionRule::CONCRETE {
        let a = t.score(&r.resolve(Some(&fit)).unwrap()).unwrap();
        let b = p.score(&r.resolve(Some(&fitp)).unwrap()).unwrap();
        assert_eq!(a.correct, b.correct, "{r}");
    }
}

#[test]
fn auto_picks_the_most_accurate_rule_on_the_fitted_split() {
    // A strong modality and a confidently wrong-ish weak one: calibration or
    // weights must beat plain entropy here.
    let t = table(51, 1000, 10, &[3.0, 0.8], &[1.0, 5.0], 0.0);
    let fit: FusionFit = fit_fusion(&t, &names(2)).unwrap();
    let accs: Vec<f64> = FusionRule::CONCRETE
        .iter()
        .map(|r| fit.validation_accuracy.get(r.as_str()).unwrap())
        .collect();
    let best = accs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let first_best = FusionRule::CONCRETE[accs.iter().position(|&a| a == best).unwrap()];
    assert_eq!(fit.chosen, first_best);
    assert_eq!(FusionRule::Auto.concrete(Some(&fit)), first_best);
    for (r, a) in FusionRule::CONCRETE.iter().zip(&accs) {
        let c = t.score(&r.resolve(Some(&fit)).unwrap()).unwrap();
        assert_eq!(c.accuracy().unwrap(), *a, "{r}");
    }
    assert!(best >= fit.validation_accuracy.get("entropy").unwrap());
    assert!(fit.temperatures.get("m1").unwrap() > 2.0, "{fit:?}");
    assert!(fit.check(&names(2)).is_ok());
    assert!(fit.check(&["a".to_string(), "b".to_string()]).is_err());
    // Rules with parameters need a fit.
    let e = FusionRule::Calibrated
        .resolve(None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("calibrated") && e.contains("validation"), "{e}");
    assert!(FusionRule::Entropy.resolve(None).is_ok());
}

#[test]
fn rule_names_parse_and_bad_parameters_are_errors() {
    for r in FusionRule::ALL {
        assert_eq!(r.as_str().parse::<FusionRule>().unwrap(), r);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{}\"", r.as_str()));
    }
    let e = "best".parse::<FusionRule>().unwrap_err().to_string();
    assert!(e.contains("weighted-entropy") && e.contains("auto"), "{e}");
    let rows: [Option<&[f32]>; 2] = [Some(&[1.0, 0.0]), None];
    let (mut out, mut w) = (vec![0.0; 2], vec![0.0; 2]);
    let bad = Fusion::Calibrated {
        temperatures: vec![1.0, 0.0],
    };
    assert!(bad.combine(&rows, &mut out, &mut w).is_err());
    let bad = Fusion::Weighted {
        weights: vec![1.0],
        entropy: false,
    };
    assert!(bad.combine(&rows, &mut out, &mut w).is_err());
    let bad = Fusion::Weighted {
        weights: vec![f64::NAN, 1.0],
        entropy: false,
    };
    assert!(bad.combine(&rows, &mut out, &mut w).is_err());
}
