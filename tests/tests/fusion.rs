//! Test-time fusion (MLA.md): per-sample entropy weights, checked against
//! the paper's form `exp(max_j e_j - e_m)` normalised, computed naively here.

use mla_core::Tensor;
use mla_cpu::Cpu;
use mla_models::fusion::{entropy, fuse, fuse_tensors, Fusion, FusionRule, ModalityLogits};
use mla_models::rng::Rng;
use proptest::prelude::*;

/// A random batch: per modality, the present samples and their logits.
#[derive(Clone, Debug)]
struct Batch {
    batch: usize,
    classes: usize,
    positions: Vec<Vec<usize>>,
    logits: Vec<Vec<f64>>,
}

impl Batch {
    fn random(seed: u64, batch: usize, modalities: usize, classes: usize) -> Batch {
        let mut rng = Rng::new(seed);
        let mut positions = vec![Vec::new(); modalities];
        for i in 0..batch {
            // Each sample gets a random non-empty subset of modalities.
            let must = rng.below(modalities);
            for (m, pos) in positions.iter_mut().enumerate() {
                if m == must || rng.uniform() < 0.6 {
                    pos.push(i);
                }
            }
        }
        let logits = positions
            .iter()
            .map(|p| {
                let scale = 0.1 + 4.0 * rng.uniform();
                (0..p.len() * classes)
                    .map(|_| scale * rng.normal())
                    .collect()
            })
            .collect();
        Batch {
            batch,
            classes,
            positions,
            logits,
        }
    }

    fn inputs(&self) -> Vec<ModalityLogits<'_, f64>> {
        self.logits
            .iter()
            .zip(&self.positions)
            .map(|(l, p)| ModalityLogits {
                logits: l,
                positions: p,
            })
            .collect()
    }

    /// Logits of modality m for sample i, if present.
    fn row(&self, m: usize, i: usize) -> Option<&[f64]> {
        let c = self.classes;
        self.positions[m]
            .iter()
            .position(|&p| p == i)
            .map(|k| &self.logits[m][k * c..(k + 1) * c])
    }
}

/// Naive per-sample reference: the paper's `exp(max_j e_j - e_m)` normalised.
fn reference(b: &Batch, kind: &Fusion, i: usize) -> (Vec<f64>, Vec<f64>) {
    let nm = b.positions.len();
    let ent = |z: &[f64]| {
        let p: Vec<f64> = z.iter().map(|v| v.exp()).collect();
        let s: f64 = p.iter().sum();
        -p.iter().map(|x| (x / s) * (x / s).ln()).sum::<f64>()
    };
    let present: Vec<usize> = (0..nm).filter(|&m| b.row(m, i).is_some()).collect();
    let e: Vec<f64> = present.iter().map(|&m| ent(b.row(m, i).unwrap())).collect();
    let emax = e.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let raw: Vec<f64> = e
        .iter()
        .map(|&em| {
            if *kind == Fusion::Entropy {
                (emax - em).exp()
            } else {
                1.0
            }
        })
        .collect();
    let total: f64 = raw.iter().sum();
    let mut w = vec![0.0; nm];
    let mut z = vec![0.0; b.classes];
    for (k, &m) in present.iter().enumerate() {
        w[m] = raw[k] / total;
        for (zc, v) in z.iter_mut().zip(b.row(m, i).unwrap()) {
            *zc += w[m] * v;
        }
    }
    (z, w)
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Weights positive on present modalities, zero elsewhere, summing to 1;
    /// fused logits and weights match the naive reference.
    #[test]
    fn weights_and_logits_match_reference(seed in any::<u64>(), batch in 1usize..12, nm in 1usize..4, classes in 2usize..7, mean in any::<bool>()) {
        let kind = if mean { Fusion::Mean } else { Fusion::Entropy };
        let b = Batch::random(seed, batch, nm, classes);
        let f = fuse(&kind, batch, classes, &b.inputs()).unwrap();
        for i in 0..batch {
            let w = f.weights_row(i);
            for m in 0..nm {
                prop_assert_eq!(w[m] > 0.0, b.row(m, i).is_some());
                prop_assert!(w[m] >= 0.0);
            }
            prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let (z, wr) = reference(&b, &kind, i);
            prop_assert!(close(f.row(i), &z, 1e-10) && close(w, &wr, 1e-10), "sample {}", i);
        }
    }

    /// Reordering the modalities permutes the weights' columns and leaves the fused logits.
    #[test]
    fn invariant_to_modality_order(seed in any::<u64>(), batch in 1usize..10, nm in 2usize..5, shift in 1usize..4) {
        let b = Batch::random(seed, batch, nm, 5);
        let f = fuse(&Fusion::Entropy, batch, 5, &b.inputs()).unwrap();
        let order: Vec<usize> = (0..nm).map(|k| (k + shift) % nm).collect();
        let permuted: Vec<ModalityLogits<'_, f64>> = order.iter().map(|&m| b.inputs()[m]).collect();
        let g = fuse(&Fusion::Entropy, batch, 5, &permuted).unwrap();
        prop_assert!(close(&f.logits, &g.logits, 1e-12));
        prop_assert_eq!(f.predictions(), g.predictions());
        for i in 0..batch {
            for (k, &m) in order.iter().enumerate() {
                prop_assert!((g.weights_row(i)[k] - f.weights_row(i)[m]).abs() < 1e-14);
            }
        }
    }

    /// A sample's fused logits and weights are bit-identical whatever its batch
    /// mates: shuffle the batch and split it in two.
    #[test]
    fn independent_of_batch_mates(seed in any::<u64>(), batch in 2usize..12, nm in 1usize..4, cut_seed in any::<u64>()) {
        let b = Batch::random(seed, batch, nm, 4);
        let f = fuse(&Fusion::Entropy, batch, 4, &b.inputs()).unwrap();
        let mut rng = Rng::new(cut_seed);
        let mut perm: Vec<usize> = (0..batch).collect();
        rng.shuffle(&mut perm);
        let cut = 1 + rng.below(batch - 1);
        for part in [&perm[..cut], &perm[cut..]] {
            // Sub-batch: sample part[j] becomes position j.
            let mut sub = Batch { batch: part.len(), classes: 4, positions: vec![Vec::new(); nm], logits: vec![Vec::new(); nm] };
            for (j, &i) in part.iter().enumerate() {
                for m in 0..nm {
                    if let Some(row) = b.row(m, i) {
                        sub.positions[m].push(j);
                        sub.logits[m].extend_from_slice(row);
                    }
                }
            }
            let g = fuse(&Fusion::Entropy, sub.batch, 4, &sub.inputs()).unwrap();
            for (j, &i) in part.iter().enumerate() {
                prop_assert_eq!(g.row(j), f.row(i));
                prop_assert_eq!(g.weights_row(j), f.weights_row(i));
            }
        }
    }

    /// Dropping a modality fuses over the rest: the same as that modality being
    /// absent for every sample, and as the reference over the remaining ones.
    #[test]
    fn dropped_modality_fuses_over_the_rest(seed in any::<u64>(), batch in 1usize..10, drop in 0usize..3) {
        let mut b = Batch::random(seed, batch, 3, 4);
        // Keep only samples that still have a modality once `drop` is gone.
        let keep: Vec<usize> = (0..batch).filter(|&i| (0..3).any(|m| m != drop && b.row(m, i).is_some())).collect();
        prop_assume!(!keep.is_empty());
        let mut kept = Batch { batch: keep.len(), classes: 4, positions: vec![Vec::new(); 3], logits: vec![Vec::new(); 3] };
        for (j, &i) in keep.iter().enumerate() {
            for m in 0..3 {
                if let Some(row) = b.row(m, i) {
                    kept.positions[m].push(j);
                    kept.logits[m].extend_from_slice(row);
                }
            }
        }
        b = kept;
        let mut without = b.clone();
        without.positions[drop].clear();
        without.logits[drop].clear();
        let f = fuse(&Fusion::Entropy, b.batch, 4, &without.inputs()).unwrap();
        let rest: Vec<ModalityLogits<'_, f64>> = (0..3).filter(|&m| m != drop).map(|m| b.inputs()[m]).collect();
        let g = fuse(&Fusion::Entropy, b.batch, 4, &rest).unwrap();
        prop_assert_eq!(&f.logits, &g.logits);
        for i in 0..b.batch {
            prop_assert_eq!(f.weights_row(i)[drop], 0.0);
            let (z, _) = reference(&without, &Fusion::Entropy, i);
            prop_assert!(close(f.row(i), &z, 1e-10));
        }
    }
}

#[test]
fn confident_modality_outweighs_uniform_one_per_sample() {
    // Sample 0: modality 0 confident on class 2, modality 1 uniform.
    // Sample 1: the reverse, modality 1 confident on class 0. Entropy is per
    // sample, so the weights flip between the two samples.
    let m0 = [0.0, 0.0, 8.0, 0.0, /* sample 1 */ 0.1, 0.1, 0.1, 0.1];
    let m1 = [0.3, 0.3, 0.3, 0.3, /* sample 1 */ 6.0, 0.0, 0.0, 0.0];
    let pos = [0usize, 1];
    let f = fuse(
        &Fusion::Entropy,
        2,
        4,
        &[
            ModalityLogits {
                logits: &m0,
                positions: &pos,
            },
            ModalityLogits {
                logits: &m1,
                positions: &pos,
            },
        ],
    )
    .unwrap();
    assert!(
        f.weights_row(0)[0] > 0.75 && f.weights_row(1)[1] > 0.75,
        "{:?}",
        f.weights
    );
    assert_eq!(f.predictions(), vec![2, 0]);
    assert!((entropy(&[0.3f64, 0.3, 0.3, 0.3]) - 4f64.ln()).abs() < 1e-12);
    assert!(entropy(&[0.0f64, 0.0, 30.0]) < 1e-10);
    // Mean fusion ignores confidence.
    let f = fuse(
        &Fusion::Mean,
        2,
        4,
        &[
            ModalityLogits {
                logits: &m0,
                positions: &pos,
            },
            ModalityLogits {
                logits: &m1,
                positions: &pos,
            },
        ],
    )
    .unwrap();
    assert_eq!(f.weights, vec![0.5; 4]);
}

#[test]
fn tensors_and_errors() {
    let z0 = Tensor::<f32, Cpu>::from_slice(&Cpu, &[1.0, 2.0, 3.0, 0.5, 0.5, 0.5], [2, 3]).unwrap();
    let z1 = Tensor::<f32, Cpu>::from_slice(&Cpu, &[4.0, 0.0, 0.0], [1, 3]).unwrap();
    let f = fuse_tensors(&Fusion::Entropy, 3, &[(&z0, &[0, 2]), (&z1, &[1])]).unwrap();
    assert_eq!(
        f.row(1),
        &[4.0, 0.0, 0.0],
        "a sample with one modality keeps its logits"
    );
    assert_eq!(f.weights_row(2), &[1.0, 0.0]);
    let err = fuse_tensors(&Fusion::Entropy, 3, &[(&z0, &[0, 1])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("sample 2 has no modality present"), "{err}");
    let err = fuse_tensors(&Fusion::Entropy, 3, &[(&z0, &[0])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("for 1 samples"), "{err}");
    let err = fuse_tensors(&Fusion::Entropy, 2, &[(&z0, &[0, 2])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("position 2 outside the batch of 2"), "{err}");
    let err = fuse_tensors(&Fusion::Entropy, 2, &[(&z0, &[1, 1])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("sample 1 given twice"), "{err}");
    let bad = Tensor::<f32, Cpu>::from_slice(&Cpu, &[f32::NAN, 0.0, 0.0], [1, 3]).unwrap();
    let err = fuse_tensors(&Fusion::Mean, 1, &[(&bad, &[0])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite logit for sample 0"), "{err}");
    let four = Tensor::<f32, Cpu>::from_slice(&Cpu, &[0.0; 4], [1, 4]).unwrap();
    assert!(fuse_tensors(&Fusion::Mean, 1, &[(&z1, &[0]), (&four, &[0])]).is_err());
    assert!("max"
        .parse::<FusionRule>()
        .unwrap_err()
        .to_string()
        .contains("entropy, mean"));
}
