//! Gradients of conv2d and the 2-D pools against central finite differences:
//! strides, padding, non-square kernels and inputs, several channels.

use mla_models::rng::Rng;
use mla_tests::{check_gradients, distinct, uniform, Input};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn conv2d_input_and_weight(
        n in 1usize..3, c in 1usize..4, oc in 1usize..4,
        h in 1usize..8, w in 1usize..8,
        kh in 1usize..4, kw in 1usize..4,
        stride in 1usize..4, pad in 0usize..3,
        seed in any::<u64>(),
    ) {
        // Shrink the kernel to fit the padded input rather than reject the case.
        let (kh, kw) = (kh.min(h + 2 * pad), kw.min(w + 2 * pad));
        let mut rng = Rng::new(seed);
        let inputs = [
            Input::new(uniform(&mut rng, n * c * h * w, -1.0, 1.0), &[n, c, h, w]),
            Input::new(uniform(&mut rng, oc * c * kh * kw, -1.0, 1.0), &[oc, c, kh, kw]),
        ];
        check_gradients(seed, &inputs, |v| v[0].conv2d(&v[1], stride, pad)).map_err(|e| {
            TestCaseError::fail(format!(
                "conv2d x [{n}, {c}, {h}, {w}] w [{oc}, {c}, {kh}, {kw}] stride {stride} pad {pad}: {e}"
            ))
        })?;
    }

    #[test]
    fn max_pool2d(
        n in 1usize..3, c in 1usize..3, k in 1usize..4, extra_h in 0usize..5, extra_w in 0usize..5,
        stride in 1usize..4, seed in any::<u64>(),
    ) {
        let (h, w) = (k + extra_h, k + extra_w);
        let mut rng = Rng::new(seed);
        // Values at least 0.05 apart: the 1e-5 finite-difference step never changes a window's argmax.
        let x = [Input::new(distinct(&mut rng, n * c * h * w, 0.05), &[n, c, h, w])];
        check_gradients(seed, &x, |v| v[0].max_pool2d(k, stride))
            .map_err(|e| TestCaseError::fail(format!("max_pool2d k {k} stride {stride} on [{n}, {c}, {h}, {w}]: {e}")))?;
    }

    #[test]
    fn padded_max_pool2d(
        n in 1usize..3, c in 1usize..3, (k, pad) in prop_oneof![Just((3usize, 1usize)), Just((2, 1)), Just((5, 2)), Just((3, 0))],
        h in 1usize..8, w in 1usize..8, stride in 1usize..4, seed in any::<u64>(),
    ) {
        prop_assume!(k <= h + 2 * pad && k <= w + 2 * pad);
        let mut rng = Rng::new(seed);
        let x = [Input::new(distinct(&mut rng, n * c * h * w, 0.05), &[n, c, h, w])];
        check_gradients(seed, &x, |v| v[0].max_pool2d_pad(k, stride, pad))
            .map_err(|e| TestCaseError::fail(format!("max_pool2d k {k} stride {stride} pad {pad} on [{n}, {c}, {h}, {w}]: {e}")))?;
    }

    #[test]
    fn conv2d_with_bias(
        n in 1usize..3, c in 1usize..3, oc in 1usize..4, h in 1usize..7, w in 1usize..7,
        kh in 1usize..4, kw in 1usize..4, stride in 1usize..4, pad in 0usize..3, seed in any::<u64>(),
    ) {
        let (kh, kw) = (kh.min(h + 2 * pad), kw.min(w + 2 * pad));
        let mut rng = Rng::new(seed);
        let inputs = [
            Input::new(uniform(&mut rng, n * c * h * w, -1.0, 1.0), &[n, c, h, w]),
            Input::new(uniform(&mut rng, oc * c * kh * kw, -1.0, 1.0), &[oc, c, kh, kw]),
            Input::new(uniform(&mut rng, oc, -1.0, 1.0), &[oc]),
        ];
        check_gradients(seed, &inputs, |v| v[0].conv2d_bias(&v[1], Some(&v[2]), stride, pad)).map_err(|e| {
            TestCaseError::fail(format!(
                "conv2d + bias x [{n}, {c}, {h}, {w}] w [{oc}, {c}, {kh}, {kw}] stride {stride} pad {pad}: {e}"
            ))
        })?;
    }

    #[test]
    fn avg_pools(
        n in 1usize..3, c in 1usize..3, k in 1usize..4, extra_h in 0usize..5, extra_w in 0usize..5,
        stride in 1usize..4, seed in any::<u64>(),
    ) {
        let (h, w) = (k + extra_h, k + extra_w);
        let mut rng = Rng::new(seed);
        let x = [Input::new(uniform(&mut rng, n * c * h * w, -1.0, 1.0), &[n, c, h, w])];
        check_gradients(seed, &x, |v| v[0].avg_pool2d(k, stride))
            .map_err(|e| TestCaseError::fail(format!("avg_pool2d k {k} stride {stride} on [{n}, {c}, {h}, {w}]: {e}")))?;
        check_gradients(seed, &x, |v| v[0].global_avg_pool2d())
            .map_err(|e| TestCaseError::fail(format!("global_avg_pool2d on [{n}, {c}, {h}, {w}]: {e}")))?;
    }
}

/// A conv layer as models use it: conv, bias over channels, relu, max-pool,
/// flatten, linear. Values are fixed so relu and max-pool stay off their kinks
/// (checked below), which random data cannot promise for a whole chain.
#[test]
fn conv_block_chain() {
    let mut rng = Rng::new(11);
    let inputs = [
        Input::new(uniform(&mut rng, 2 * 2 * 6 * 5, -1.0, 1.0), &[2, 2, 6, 5]),
        Input::new(uniform(&mut rng, 3 * 2 * 3 * 3, -1.0, 1.0), &[3, 2, 3, 3]),
        Input::new(uniform(&mut rng, 3, -0.2, 0.2), &[1, 3, 1, 1]),
        Input::new(uniform(&mut rng, 4 * 18, -1.0, 1.0), &[4, 18]),
    ];
    check_gradients(11, &inputs, |v| {
        let h = v[0].conv2d(&v[1], 1, 1)?.add(&v[2])?;
        // Guard the check itself: a pre-activation within 1e-3 of 0 would make the
        // finite difference straddle relu's kink.
        assert!(
            h.value().to_vec()?.iter().all(|x| x.abs() > 1e-3),
            "seed puts a relu input on its kink"
        );
        let p = h.relu()?.max_pool2d(2, 2)?.flatten()?;
        p.matmul_t(&v[3], false, true)
    })
    .unwrap();
}
