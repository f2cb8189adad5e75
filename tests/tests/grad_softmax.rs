//! Gradients of softmax, log-softmax, fused cross-entropy and per-row entropy
//! against central finite differences.

use mla_core::Indices;
use mla_cpu::Cpu;
use mla_models::rng::Rng;
use mla_tests::{check_gradients, uniform, Input};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 32,
        ..ProptestConfig::default()
    }
}

fn fail(what: String) -> impl FnOnce(String) -> TestCaseError {
    move |e| TestCaseError::fail(format!("{what}: {e}"))
}

proptest! {
    #![proptest_config(config())]

    /// Softmax-family ops act on the last axis of any rank; logits span a
    /// range wide enough to exercise the max-subtraction.
    #[test]
    fn softmax_and_log_softmax(dims in prop::collection::vec(1usize..5, 1..=3), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = [Input::new(uniform(&mut rng, dims.iter().product(), -4.0, 4.0), &dims)];
        check_gradients(seed, &x, |v| v[0].softmax()).map_err(fail(format!("softmax {dims:?}")))?;
        check_gradients(seed, &x, |v| v[0].log_softmax()).map_err(fail(format!("log_softmax {dims:?}")))?;
        check_gradients(seed, &x, |v| v[0].entropy()).map_err(fail(format!("entropy {dims:?}")))?;
    }

    #[test]
    fn cross_entropy(rows in 1usize..6, classes in 1usize..6, seed in any::<u64>(), offset in -50.0f64..50.0) {
        let mut rng = Rng::new(seed);
        // A common offset: the fused loss must stay stable for large logits.
        let logits: Vec<f64> = uniform(&mut rng, rows * classes, -3.0, 3.0).iter().map(|x| x + offset).collect();
        let labels: Vec<usize> = (0..rows).map(|_| rng.below(classes)).collect();
        let idx = Indices::<f64, Cpu>::from_usize(&Cpu, &labels).unwrap();
        let x = [Input::new(logits, &[rows, classes])];
        check_gradients(seed, &x, |v| v[0].cross_entropy(&idx))
            .map_err(fail(format!("cross_entropy [{rows}, {classes}] labels {labels:?}")))?;
        // Downstream of other ops and scaled, so the incoming gradient is not 1.
        check_gradients(seed, &x, |v| v[0].tanh()?.cross_entropy(&idx)?.scale(-2.5))
            .map_err(fail(format!("scaled cross_entropy [{rows}, {classes}]")))?;
    }
}

/// The fused loss equals the mean of `-log_softmax` at the labels, computed
/// here in plain f64.
#[test]
fn cross_entropy_value_matches_reference() {
    let mut rng = Rng::new(3);
    let (rows, classes) = (5, 4);
    let logits = uniform(&mut rng, rows * classes, -30.0, 30.0);
    let labels: Vec<u32> = (0..rows as u32).map(|r| r % classes as u32).collect();
    let idx = Indices::<f64, Cpu>::new(&Cpu, &labels).unwrap();
    let loss = mla_tests::tensor(&logits, &[rows, classes])
        .cross_entropy(&idx)
        .unwrap()
        .to_scalar()
        .unwrap();
    let mut want = 0.0;
    for r in 0..rows {
        let row = &logits[r * classes..(r + 1) * classes];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        want += lse - row[labels[r] as usize];
    }
    want /= rows as f64;
    assert!(mla_tests::close(loss, want), "{loss} vs {want}");
}

/// Entropy per row equals `-sum p log p`, computed in plain f64.
#[test]
fn entropy_value_matches_reference() {
    let mut rng = Rng::new(4);
    let x = uniform(&mut rng, 12, -3.0, 3.0);
    let tape = mla_core::Tape::no_grad(&Cpu);
    let e = tape
        .constant(mla_tests::tensor(&x, &[3, 4]))
        .entropy()
        .unwrap()
        .value()
        .to_vec()
        .unwrap();
    assert_eq!(e.len(), 3);
    for r in 0..3 {
        let row = &x[r * 4..(r + 1) * 4];
        let z: f64 = row.iter().map(|v| v.exp()).sum();
        let want: f64 = -row
            .iter()
            .map(|v| v.exp() / z)
            .map(|p| p * p.ln())
            .sum::<f64>();
        assert!(mla_tests::close(e[r], want), "row {r}: {} vs {want}", e[r]);
    }
}
