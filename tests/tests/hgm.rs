//! HGM (MLA.md): P stays symmetric PSD with eigenvalues in [0, 1]; the RLS
//! identity `P_new r = P_old r * alpha / (alpha + r^T P_old r)`; small alpha
//! makes the projected head update blind to every feature fed before; huge
//! alpha leaves gradients alone; `cross` never restricts a modality by its own
//! features; the bias gradient is never touched; state round-trips.
//! References: naive f64 loops and a Jacobi eigen-solver written here.

use mla_core::Tensor;
use mla_cpu::{Cpu, CpuFloat};
use mla_models::hgm::{AlphaMode, AlphaSchedule, Hgm, HgmMode};
use mla_models::rng::Rng;
use proptest::prelude::*;

fn tensor<T: CpuFloat>(v: &[f64], shape: &[usize]) -> Tensor<T, Cpu> {
    let v: Vec<T> = v.iter().map(|&x| T::lit(x)).collect();
    Tensor::from_slice(&Cpu, &v, shape.to_vec()).unwrap()
}

fn host<T: CpuFloat>(t: &Tensor<T, Cpu>) -> Vec<f64> {
    t.to_vec().unwrap().iter().map(|x| x.as_f64()).collect()
}

fn gaussian(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| scale * rng.normal()).collect()
}

/// Naive `G @ P`.
fn matmul(g: &[f64], p: &[f64], c: usize, s: usize) -> Vec<f64> {
    let mut out = vec![0.0; c * s];
    for i in 0..c {
        for j in 0..s {
            out[i * s + j] = (0..s).map(|k| g[i * s + k] * p[k * s + j]).sum();
        }
    }
    out
}

fn matvec(p: &[f64], r: &[f64], s: usize) -> Vec<f64> {
    (0..s)
        .map(|i| (0..s).map(|j| p[i * s + j] * r[j]).sum())
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Naive RLS update in f64, the reference for the backend kernel.
fn rls_ref(p: &mut [f64], r: &[f64], s: usize, alpha: f64) {
    let u = matvec(p, r, s);
    let d = alpha + r.iter().zip(&u).map(|(a, b)| a * b).sum::<f64>();
    for i in 0..s {
        for j in 0..s {
            p[i * s + j] -= u[i] * u[j] / d;
        }
    }
}

fn max_asymmetry(p: &[f64], s: usize) -> f64 {
    let mut m = 0.0f64;
    for i in 0..s {
        for j in 0..s {
            m = m.max((p[i * s + j] - p[j * s + i]).abs());
        }
    }
    m
}

/// Eigenvalues of the symmetric part of `p` by cyclic Jacobi rotations.
fn eigenvalues(p: &[f64], s: usize) -> Vec<f64> {
    let mut a: Vec<f64> = (0..s * s)
        .map(|k| 0.5 * (p[k] + p[(k % s) * s + k / s]))
        .collect();
    for _sweep in 0..100 {
        let off: f64 = (0..s)
            .flat_map(|i| (0..s).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * s + j].powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for i in 0..s {
            for j in i + 1..s {
                let aij = a[i * s + j];
                if aij.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[j * s + j] - a[i * s + i]) / (2.0 * aij);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * c;
                for k in 0..s {
                    let (aki, akj) = (a[k * s + i], a[k * s + j]);
                    a[k * s + i] = c * aki - sn * akj;
                    a[k * s + j] = sn * aki + c * akj;
                }
                for k in 0..s {
                    let (aik, ajk) = (a[i * s + k], a[j * s + k]);
                    a[i * s + k] = c * aik - sn * ajk;
                    a[j * s + k] = sn * aik + c * ajk;
                }
            }
        }
    }
    (0..s).map(|i| a[i * s + i]).collect()
}

#[test]
fn jacobi_reference_is_right() {
    // [[2, 1], [1, 2]] has eigenvalues 1 and 3; a rotated diag(0.25, 0.5, 1).
    let mut e = eigenvalues(&[2.0, 1.0, 1.0, 2.0], 2);
    e.sort_by(f64::total_cmp);
    assert!((e[0] - 1.0).abs() < 1e-12 && (e[1] - 3.0).abs() < 1e-12);
    let (c, s) = (0.6f64, 0.8f64);
    let q = [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0];
    let d = [0.25, 0.5, 1.0];
    let m: Vec<f64> = (0..9)
        .map(|k| {
            (0..3)
                .map(|l| q[(k / 3) * 3 + l] * d[l] * q[(k % 3) * 3 + l])
                .sum()
        })
        .collect();
    let mut e = eigenvalues(&m, 3);
    e.sort_by(f64::total_cmp);
    for (a, b) in e.iter().zip(d) {
        assert!((a - b).abs() < 1e-12, "{e:?}");
    }
}

/// One owm step through the public API; returns (projected gradient, r) on the host.
fn owm_step<T: CpuFloat>(
    hgm: &mut Hgm<Cpu, T>,
    feats: &[f64],
    b: usize,
    g: &[f64],
    c: usize,
    s: usize,
) -> Vec<f64> {
    let out = hgm
        .project("m", &tensor::<T>(feats, &[b, s]), &tensor::<T>(g, &[c, s]))
        .unwrap();
    host(&out)
}

fn batch_mean(feats: &[f64], b: usize, s: usize) -> Vec<f64> {
    (0..s)
        .map(|j| (0..b).map(|i| feats[i * s + j]).sum::<f64>() / b as f64)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// f64: after every update P is symmetric and PSD with eigenvalues in
    /// [0, 1] (within 1e-9), matches the naive RLS, obeys the RLS identity, and
    /// the projection used P_{t-1}.
    #[test]
    fn owm_f64_invariants(s in 2usize..10, steps in 1usize..30, log_alpha in -3.0f64..3.0, scale in 0.1f64..5.0, seed in any::<u64>()) {
        let alpha = 10f64.powf(log_alpha);
        let c = 3;
        let mut rng = Rng::new(seed);
        let mut hgm: Hgm<Cpu, f64> = Hgm::new(&Cpu, HgmMode::Owm, alpha, s, &["m"]).unwrap();
        let mut reference: Vec<f64> = (0..s * s).map(|k| if k % (s + 1) == 0 { 1.0 } else { 0.0 }).collect();
        for _ in 0..steps {
            let b = 1 + rng.below(4);
            let feats: Vec<f64> = gaussian(&mut rng, b * s, scale).iter().map(|x| x.max(0.0) + 0.1 * scale).collect();
            let g = gaussian(&mut rng, c * s, 1.0);
            let p_old = host(hgm.projector("m").unwrap().unwrap());
            let projected = owm_step(&mut hgm, &feats, b, &g, c, s);
            let want = matmul(&g, &p_old, c, s);
            for (a, w) in projected.iter().zip(&want) {
                prop_assert!((a - w).abs() <= 1e-12 * (1.0 + w.abs()), "projection is not G P_old");
            }
            let r = batch_mean(&feats, b, s);
            rls_ref(&mut reference, &r, s, alpha);
            let p = host(hgm.projector("m").unwrap().unwrap());
            for (a, w) in p.iter().zip(&reference) {
                prop_assert!((a - w).abs() <= 1e-9, "P differs from the naive RLS: {a} vs {w}");
            }
            prop_assert!(max_asymmetry(&p, s) == 0.0, "asymmetry {} (the CPU kernel keeps P exactly symmetric)", max_asymmetry(&p, s));
            for e in eigenvalues(&p, s) {
                prop_assert!((-1e-9..=1.0 + 1e-9).contains(&e), "eigenvalue {e} outside [0, 1]");
            }
            // RLS identity: P_new r = P_old r * alpha / (alpha + r^T P_old r).
            let (pr_new, pr_old) = (matvec(&p, &r, s), matvec(&p_old, &r, s));
            let q = alpha / (alpha + r.iter().zip(&pr_old).map(|(a, b)| a * b).sum::<f64>());
            for (a, w) in pr_new.iter().zip(&pr_old) {
                prop_assert!((a - w * q).abs() <= 1e-9 * (1.0 + w.abs()), "P_new r = {a}, expected {}", w * q);
            }
        }
    }

    /// Relative alpha: every update equals the naive RLS with alpha times the
    /// running mean of r^T r (this step included), and P keeps its invariants.
    #[test]
    fn relative_alpha_is_alpha_times_the_running_feature_scale(s in 2usize..10, steps in 1usize..25, log_alpha in -3.0f64..2.0, scale in 0.1f64..20.0, seed in any::<u64>()) {
        let alpha = 10f64.powf(log_alpha);
        let c = 2;
        let mut rng = Rng::new(seed);
        let mut hgm: Hgm<Cpu, f64> = Hgm::new(&Cpu, HgmMode::Owm, alpha, s, &["m"]).unwrap().with_alpha_mode(AlphaMode::Relative);
        let mut reference: Vec<f64> = (0..s * s).map(|k| if k % (s + 1) == 0 { 1.0 } else { 0.0 }).collect();
        let mut rr_sum = 0.0;
        for t in 1..=steps {
            let b = 1 + rng.below(4);
            let feats: Vec<f64> = gaussian(&mut rng, b * s, scale).iter().map(|x| x.max(0.0) + 0.1 * scale).collect();
            let g = gaussian(&mut rng, c * s, 1.0);
            owm_step(&mut hgm, &feats, b, &g, c, s);
            let r = batch_mean(&feats, b, s);
            rr_sum += r.iter().map(|x| x * x).sum::<f64>();
            let mean = rr_sum / t as f64;
            rls_ref(&mut reference, &r, s, alpha * mean);
            let p = host(hgm.projector("m").unwrap().unwrap());
            for (a, w) in p.iter().zip(&reference) {
                prop_assert!((a - w).abs() <= 1e-9, "P differs from RLS with alpha * mean r^T r: {a} vs {w}");
            }
            for e in eigenvalues(&p, s) {
                prop_assert!((-1e-9..=1.0 + 1e-9).contains(&e), "eigenvalue {e} outside [0, 1]");
            }
            prop_assert!(max_asymmetry(&p, s) <= 1e-12);
            let eff = hgm.effective_alpha().unwrap();
            prop_assert!((eff - alpha * mean).abs() <= 1e-9 * alpha * mean);
        }
    }

    /// Small alpha: the projected update dW = -lr (grad W) P is blind to every
    /// feature fed before: |dW r| <= 1e-6 lr |grad W| |r| and, for a generic
    /// gradient (fewer features than dimensions), |dW r| <= 1e-4 |dW| |r|.
    #[test]
    fn small_alpha_protects_every_feature_seen(s in 4usize..16, frac in 0.1f64..0.5, seed in any::<u64>()) {
        let k = ((s as f64 * frac) as usize).max(1);
        let (c, lr, alpha) = (4, 0.1, 1e-8);
        let mut rng = Rng::new(seed);
        let mut hgm: Hgm<Cpu, f64> = Hgm::new(&Cpu, HgmMode::Owm, alpha, s, &["m"]).unwrap();
        let mut seen = Vec::new();
        for _ in 0..k {
            let r = gaussian(&mut rng, s, 1.0);
            owm_step(&mut hgm, &r, 1, &gaussian(&mut rng, c * s, 1.0), c, s);
            seen.push(r);
        }
        let g = gaussian(&mut rng, c * s, 1.0);
        let dw: Vec<f64> = owm_step(&mut hgm, &gaussian(&mut rng, s, 1.0), 1, &g, c, s).iter().map(|x| -lr * x).collect();
        for r in &seen {
            let dwr: Vec<f64> = (0..c).map(|i| (0..s).map(|j| dw[i * s + j] * r[j]).sum()).collect();
            prop_assert!(norm(&dwr) <= 1e-6 * lr * norm(&g) * norm(r), "|dW r| = {} vs |G| |r| = {}", norm(&dwr), norm(&g) * norm(r));
            prop_assert!(norm(&dwr) <= 1e-4 * norm(&dw) * norm(r), "|dW r| = {} vs |dW| |r| = {}", norm(&dwr), norm(&dw) * norm(r));
        }
    }

    /// Very large alpha: HGM is a no-op on the gradient (to 1e-9).
    #[test]
    fn huge_alpha_leaves_gradients_unchanged(s in 2usize..12, steps in 1usize..20, seed in any::<u64>()) {
        let c = 3;
        let mut rng = Rng::new(seed);
        let mut hgm: Hgm<Cpu, f64> = Hgm::new(&Cpu, HgmMode::Owm, 1e12, s, &["m"]).unwrap();
        for _ in 0..steps {
            let g = gaussian(&mut rng, c * s, 1.0);
            let out = owm_step(&mut hgm, &gaussian(&mut rng, 2 * s, 3.0), 2, &g, c, s);
            for (a, w) in out.iter().zip(&g) {
                prop_assert!((a - w).abs() <= 1e-9 * (1.0 + w.abs()));
            }
        }
        let f = &hgm.fraction_stats().unwrap()[0];
        prop_assert!((f.mean - 1.0).abs() < 1e-9 && f.steps == steps as u64);
    }
}

/// f32 over 10,000 updates at s = 32 with ReLU-like features: symmetric and
/// eigenvalues in [0, 1] within 1e-4.
#[test]
fn owm_f32_stays_symmetric_psd_over_10000_updates() {
    let (s, c, b) = (32, 4, 4);
    let mut rng = Rng::new(7);
    for alpha in [1e-2, 1.0, 100.0] {
        let mut hgm: Hgm<Cpu, f32> = Hgm::new(&Cpu, HgmMode::Owm, alpha, s, &["m"]).unwrap();
        hgm.set_track_fraction(false);
        let g = tensor::<f32>(&gaussian(&mut rng, c * s, 1.0), &[c, s]);
        for step in 0..10_000 {
            // Features on a drifting low-dimensional subspace plus noise, as in training.
            let feats: Vec<f64> = (0..b * s)
                .map(|k| {
                    let j = k % s;
                    let base = if j < 8 {
                        2.0 + (step as f64 * 0.001 + j as f64).sin()
                    } else {
                        0.0
                    };
                    (base + 0.3 * rng.normal()).max(0.0)
                })
                .collect();
            hgm.project("m", &tensor::<f32>(&feats, &[b, s]), &g)
                .unwrap();
        }
        let p = host(hgm.projector("m").unwrap().unwrap());
        assert!(p.iter().all(|x| x.is_finite()));
        let asym = max_asymmetry(&p, s);
        assert!(asym <= 1e-4, "alpha {alpha}: asymmetry {asym}");
        // The CPU kernel (the reference for the others) keeps P exactly symmetric.
        assert_eq!(asym, 0.0, "alpha {alpha}: P drifted from exact symmetry");
        for e in eigenvalues(&p, s) {
            assert!(
                (-1e-4..=1.0 + 1e-4).contains(&e),
                "alpha {alpha}: eigenvalue {e}"
            );
        }
    }
}

/// `cross`: a step of m projects with P_m, which only ever absorbs the other
/// modalities' features; checked against a naive f64 reference, and with
/// disjoint feature supports a modality's own directions pass bit-exactly.
#[test]
fn cross_never_restricts_a_modality_by_its_own_features() {
    let (s, c, alpha) = (8, 3, 1e-3);
    let mut rng = Rng::new(11);
    let mods = ["a", "b", "c"];
    let mut hgm: Hgm<Cpu, f64> = Hgm::new(&Cpu, HgmMode::Cross, alpha, s, &mods).unwrap();
    let eye: Vec<f64> = (0..s * s)
        .map(|k| if k % (s + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    let mut reference = [eye.clone(), eye.clone(), eye];
    // a lives on dims 0..4, b and c on dims 4..8.
    let support = |m: usize, j: usize| if m == 0 { j < 4 } else { j >= 4 };
    for step in 0..60 {
        let m = [0, 1, 0, 2][step % 4];
        let feats: Vec<f64> = (0..2 * s)
            .map(|k| {
                if support(m, k % s) {
                    rng.normal().abs() + 0.5
                } else {
                    0.0
                }
            })
            .collect();
        let g = gaussian(&mut rng, c * s, 1.0);
        let out = host(
            &hgm.project(
                mods[m],
                &tensor::<f64>(&feats, &[2, s]),
                &tensor::<f64>(&g, &[c, s]),
            )
            .unwrap(),
        );
        let want = matmul(&g, &reference[m], c, s);
        for (x, w) in out.iter().zip(&want) {
            assert!(
                (x - w).abs() <= 1e-9 * (1.0 + w.abs()),
                "step {step}: projection of {} differs from G P_m",
                mods[m]
            );
        }
        let r = batch_mean(&feats, 2, s);
        for (k, p) in reference.iter_mut().enumerate() {
            if k != m {
                rls_ref(p, &r, s, alpha);
            }
        }
        // A gradient of a on a's own directions passes bit-exactly; b's gets squeezed by a's features.
        let own: Vec<f64> = (0..c * s)
            .map(|k| {
                if support(0, k % s) {
                    1.0 + k as f64
                } else {
                    0.0
                }
            })
            .collect();
        let pa = host(hgm.projector("a").unwrap().unwrap());
        assert_eq!(
            matmul(&own, &pa, c, s),
            own,
            "step {step}: a restricted along its own features"
        );
    }
    let own_a: Vec<f64> = (0..c * s)
        .map(|k| if k % s < 4 { 1.0 } else { 0.0 })
        .collect();
    let pb = host(hgm.projector("b").unwrap().unwrap());
    assert!(
        norm(&matmul(&own_a, &pb, c, s)) < 0.05 * norm(&own_a),
        "b should be restricted along a's features"
    );
    // Under owm the same features would restrict a by its own directions.
    let mut owm: Hgm<Cpu, f64> = Hgm::new(&Cpu, HgmMode::Owm, alpha, s, &mods).unwrap();
    let fa: Vec<f64> = (0..s).map(|j| if j < 4 { 1.0 } else { 0.0 }).collect();
    owm.project(
        "a",
        &tensor::<f64>(&fa, &[1, s]),
        &tensor::<f64>(&own_a, &[c, s]),
    )
    .unwrap();
    let after = host(
        &owm.project(
            "a",
            &tensor::<f64>(&fa, &[1, s]),
            &tensor::<f64>(&own_a, &[c, s]),
        )
        .unwrap(),
    );
    assert!(norm(&after) < 0.01 * norm(&own_a));
}

#[test]
fn bias_is_not_projected_and_none_is_a_no_op() {
    let (s, c) = (6, 3);
    let mut rng = Rng::new(5);
    for mode in [HgmMode::None, HgmMode::Owm, HgmMode::Cross] {
        let mut hgm: Hgm<Cpu, f32> = Hgm::new(&Cpu, mode, 0.01, s, &["x", "y"]).unwrap();
        for step in 0..5 {
            let w = gaussian(&mut rng, c * s, 1.0);
            let b = gaussian(&mut rng, c, 1.0);
            let enc = gaussian(&mut rng, 10, 1.0);
            let mut grads = vec![
                (
                    "encoder.x.fc.weight".to_string(),
                    tensor::<f32>(&enc, &[2, 5]),
                ),
                ("head.bias".to_string(), tensor::<f32>(&b, &[c])),
                ("head.weight".to_string(), tensor::<f32>(&w, &[c, s])),
            ];
            let feats = tensor::<f32>(
                &gaussian(&mut rng, 3 * s, 1.0)
                    .iter()
                    .map(|x| x.abs())
                    .collect::<Vec<_>>(),
                &[3, s],
            );
            let m = ["x", "y"][step % 2];
            hgm.apply(m, &feats, &mut grads).unwrap();
            assert_eq!(
                host(&grads[0].1),
                host(&tensor::<f32>(&enc, &[2, 5])),
                "{mode}: encoder gradient changed"
            );
            assert_eq!(
                host(&grads[1].1),
                host(&tensor::<f32>(&b, &[c])),
                "{mode}: bias gradient changed"
            );
            let changed = host(&grads[2].1) != host(&tensor::<f32>(&w, &[c, s]));
            // None never changes W; owm changes it from the 2nd step; cross once the other modality has stepped.
            assert_eq!(
                changed,
                mode != HgmMode::None && step >= 1,
                "{mode} step {step}"
            );
        }
    }
    // Errors name the problem.
    let mut hgm: Hgm<Cpu, f32> = Hgm::new(&Cpu, HgmMode::Owm, 1.0, s, &["x"]).unwrap();
    let feats = tensor::<f32>(&vec![1.0; s], &[1, s]);
    let err = hgm.apply("x", &feats, &mut []).unwrap_err().to_string();
    assert!(err.contains("head.weight"), "{err}");
    let err = hgm.apply("z", &feats, &mut []).unwrap_err().to_string();
    assert!(err.contains("unknown modality 'z'"), "{err}");
    let err = hgm
        .project(
            "x",
            &tensor::<f32>(&[1.0; 5], &[1, 5]),
            &tensor::<f32>(&vec![0.0; 3 * s], &[3, s]),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("features must be [batch >= 1, 6]"), "{err}");
    assert!(Hgm::<Cpu, f32>::new(&Cpu, HgmMode::Owm, 0.0, s, &["x"]).is_err());
    assert!(Hgm::<Cpu, f32>::new(&Cpu, HgmMode::Owm, f64::NAN, s, &["x"]).is_err());
    assert!("projection"
        .parse::<HgmMode>()
        .unwrap_err()
        .to_string()
        .contains("none, owm, cross"));
}

#[test]
fn surviving_fraction_is_reported_per_modality() {
    let (s, c) = (5, 2);
    let mut rng = Rng::new(9);
    let mut hgm: Hgm<Cpu, f64> = Hgm::new(&Cpu, HgmMode::Owm, 0.5, s, &["x", "y"]).unwrap();
    let mut want = [vec![], vec![]];
    for step in 0..6 {
        let m = step % 2;
        let g = gaussian(&mut rng, c * s, 1.0);
        let out = host(
            &hgm.project(
                ["x", "y"][m],
                &tensor::<f64>(&gaussian(&mut rng, s, 1.0), &[1, s]),
                &tensor::<f64>(&g, &[c, s]),
            )
            .unwrap(),
        );
        want[m].push(norm(&out) / norm(&g));
    }
    let stats = hgm.fraction_stats().unwrap();
    assert_eq!(stats.len(), 2);
    for (st, w) in stats.iter().zip(&want) {
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        assert!(
            (st.mean - mean).abs() < 1e-12
                && (st.last - w[w.len() - 1]).abs() < 1e-12
                && st.steps == 3
        );
    }
    assert!(
        want[0][0] == 1.0 && want[1][0] < 1.0,
        "first step projects with P_0 = I"
    );
    hgm.reset_fractions();
    assert!(hgm.fraction_stats().unwrap().is_empty());
}

#[test]
fn state_round_trip_continues_identically() {
    let (s, c) = (6, 3);
    for (mode, am) in [
        (HgmMode::Owm, AlphaMode::Absolute),
        (HgmMode::Cross, AlphaMode::Absolute),
        (HgmMode::Owm, AlphaMode::Relative),
        (HgmMode::Cross, AlphaMode::Relative),
    ] {
        let mut rng = Rng::new(21);
        let mut a: Hgm<Cpu, f32> = Hgm::new(&Cpu, mode, 0.3, s, &["x", "y"])
            .unwrap()
            .with_alpha_mode(am);
        let mut inputs = Vec::new();
        for _ in 0..20 {
            inputs.push((
                gaussian(&mut rng, 2 * s, 1.0),
                gaussian(&mut rng, c * s, 1.0),
            ));
        }
        let run = |h: &mut Hgm<Cpu, f32>, range: std::ops::Range<usize>| -> Vec<Vec<f64>> {
            range
                .map(|i| {
                    let (f, g) = &inputs[i];
                    host(
                        &h.project(
                            ["x", "y"][i % 2],
                            &tensor::<f32>(f, &[2, s]),
                            &tensor::<f32>(g, &[c, s]),
                        )
                        .unwrap(),
                    )
                })
                .collect()
        };
        run(&mut a, 0..10);
        let state = a.state();
        let mut b: Hgm<Cpu, f32> = Hgm::new(&Cpu, mode, 99.0, s, &["x", "y"])
            .unwrap()
            .with_alpha_mode(am);
        b.load_state(&state).unwrap();
        // The other alpha mode is refused.
        let flip = if am == AlphaMode::Relative {
            AlphaMode::Absolute
        } else {
            AlphaMode::Relative
        };
        let mut wrong: Hgm<Cpu, f32> = Hgm::new(&Cpu, mode, 0.3, s, &["x", "y"])
            .unwrap()
            .with_alpha_mode(flip);
        let err = wrong.load_state(&state).unwrap_err().to_string();
        assert!(err.contains("alpha mode"), "{err}");
        assert_eq!(b.alpha(), 0.3);
        assert_eq!(
            run(&mut a, 10..20),
            run(&mut b, 10..20),
            "{mode}: resumed HGM diverged"
        );
        // Mismatched mode / size are refused with the reason.
        let other = if mode == HgmMode::Owm {
            HgmMode::Cross
        } else {
            HgmMode::Owm
        };
        let mut wrong: Hgm<Cpu, f32> = Hgm::new(&Cpu, other, 0.3, s, &["x", "y"])
            .unwrap()
            .with_alpha_mode(am);
        let err = wrong.load_state(&state).unwrap_err().to_string();
        assert!(
            err.contains(&format!("checkpoint has mode '{mode}'")),
            "{err}"
        );
        let mut wrong: Hgm<Cpu, f32> = Hgm::new(&Cpu, mode, 0.3, s + 1, &["x", "y"])
            .unwrap()
            .with_alpha_mode(am);
        assert!(wrong
            .load_state(&state)
            .unwrap_err()
            .to_string()
            .contains("feature size"));
    }
}

#[test]
fn alpha_schedules_parse_and_interpolate() {
    let l: AlphaSchedule = "linear:100:1".parse().unwrap();
    assert_eq!(
        l,
        AlphaSchedule::Linear {
            start: 100.0,
            end: 1.0
        }
    );
    assert_eq!(l.to_string().parse::<AlphaSchedule>().unwrap(), l);
    assert_eq!(l.at(7.0, 0.0), 100.0);
    assert_eq!(l.at(7.0, 1.0), 1.0);
    assert_eq!(l.at(7.0, 0.5), 50.5);
    assert_eq!(AlphaSchedule::Constant.at(7.0, 0.3), 7.0);
    let json = serde_json::to_string(&l).unwrap();
    assert_eq!(json, "\"linear:100:1\"");
    assert_eq!(serde_json::from_str::<AlphaSchedule>(&json).unwrap(), l);
    for bad in [
        "linear:0:1",
        "linear:1",
        "linear:a:1",
        "cosine:1:2",
        "linear:1:inf",
    ] {
        let e = bad.parse::<AlphaSchedule>().unwrap_err().to_string();
        assert!(e.contains("linear:START:END"), "{bad}: {e}");
    }
    assert!("relative".parse::<AlphaMode>().is_ok());
    assert!("rel"
        .parse::<AlphaMode>()
        .unwrap_err()
        .to_string()
        .contains("absolute, relative"));
}
