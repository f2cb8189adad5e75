//! Gradients of matmul, the unary ops and the broadcasting binary ops against
//! central finite differences (f64, CPU backend).

use mla_core::BinaryOp;
use mla_models::rng::Rng;
use mla_tests::{away_from_zero, check_gradients, uniform, Input, V64};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

fn dims_strategy(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, 0..=max_rank)
}

/// Operand values for `op`: a divisor stays in `0.5 <= |b| < 2` so `a / b` is smooth.
fn operands(rng: &mut Rng, op: BinaryOp, a_dims: &[usize], b_dims: &[usize]) -> Vec<Input> {
    let na: usize = a_dims.iter().product();
    let nb: usize = b_dims.iter().product();
    let a = uniform(rng, na, -2.0, 2.0);
    let b = if op == BinaryOp::Div {
        away_from_zero(rng, nb, 0.5, 2.0)
    } else {
        uniform(rng, nb, -2.0, 2.0)
    };
    vec![Input::new(a, a_dims), Input::new(b, b_dims)]
}

const BINARY_OPS: [BinaryOp; 4] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];

fn check_binary(seed: u64, a_dims: &[usize], b_dims: &[usize]) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    for op in BINARY_OPS {
        let inputs = operands(&mut rng, op, a_dims, b_dims);
        check_gradients(seed, &inputs, |v| v[0].binary(op, &v[1]))
            .map_err(|e| format!("{op:?} {a_dims:?} with {b_dims:?}: {e}"))?;
    }
    Ok(())
}

#[test]
fn binary_named_broadcasts_in_both_orders() {
    // The patterns models use: bias row, column, scalar (rank 0 and [1]),
    // outer-product style, and a leading batch axis; each in both operand orders.
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[3, 4]),
        (&[3, 4], &[4]),
        (&[3, 4], &[1, 4]),
        (&[3, 4], &[3, 1]),
        (&[3, 4], &[]),
        (&[3, 4], &[1]),
        (&[3, 1], &[1, 4]),
        (&[2, 3, 4], &[3, 1]),
        (&[2, 3, 4], &[2, 1, 4]),
        (&[], &[]),
    ];
    for (i, (a, b)) in cases.iter().enumerate() {
        check_binary(100 + i as u64, a, b).unwrap();
        check_binary(200 + i as u64, b, a).unwrap();
    }
}

proptest! {
    #![proptest_config(config())]

    /// Random broadcast patterns: each operand keeps or collapses each axis of
    /// the output shape and may drop leading axes.
    #[test]
    fn binary_random_broadcasts(
        out in prop::collection::vec(1usize..5, 1..=3),
        keep_a in prop::collection::vec(any::<bool>(), 3),
        keep_b in prop::collection::vec(any::<bool>(), 3),
        drop_a in 0usize..=3,
        drop_b in 0usize..=3,
        seed in any::<u64>(),
    ) {
        let shape = |keep: &[bool], drop: usize| -> Vec<usize> {
            let d: Vec<usize> = out.iter().zip(keep).map(|(&n, &k)| if k { n } else { 1 }).collect();
            d[drop.min(d.len())..].to_vec()
        };
        check_binary(seed, &shape(&keep_a, drop_a), &shape(&keep_b, drop_b)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn unary_ops(dims in dims_strategy(3), seed in any::<u64>(), mul in -3.0f64..3.0, add in -3.0f64..3.0) {
        let n: usize = dims.iter().product();
        let mut rng = Rng::new(seed);
        type Op = for<'t> fn(&V64<'t>) -> mla_core::Result<V64<'t>>;
        // (name, op, input range): each range keeps the function smooth around
        // every point (relu away from 0, log and sqrt on positive values).
        let ops: [(&str, Op, Vec<f64>); 8] = [
            ("relu", |x| x.relu(), away_from_zero(&mut rng, n, 0.05, 2.0)),
            ("sigmoid", |x| x.sigmoid(), uniform(&mut rng, n, -4.0, 4.0)),
            ("tanh", |x| x.tanh(), uniform(&mut rng, n, -3.0, 3.0)),
            ("exp", |x| x.exp(), uniform(&mut rng, n, -2.0, 2.0)),
            ("log", |x| x.log(), uniform(&mut rng, n, 0.3, 3.0)),
            ("neg", |x| x.neg(), uniform(&mut rng, n, -2.0, 2.0)),
            ("sqr", |x| x.sqr(), uniform(&mut rng, n, -2.0, 2.0)),
            ("sqrt", |x| x.sqrt(), uniform(&mut rng, n, 0.3, 3.0)),
        ];
        for (name, op, data) in ops {
            check_gradients(seed, &[Input::new(data, &dims)], |v| op(&v[0]))
                .map_err(|e| TestCaseError::fail(format!("{name} {dims:?}: {e}")))?;
        }
        let data = uniform(&mut rng, n, -2.0, 2.0);
        check_gradients(seed, &[Input::new(data.clone(), &dims)], |v| v[0].affine(mul, add))
            .map_err(|e| TestCaseError::fail(format!("affine({mul}, {add}) {dims:?}: {e}")))?;
        check_gradients(seed, &[Input::new(data, &dims)], |v| v[0].scale(mul))
            .map_err(|e| TestCaseError::fail(format!("scale({mul}) {dims:?}: {e}")))?;
    }

    #[test]
    fn matmul_every_transpose(m in 1usize..6, k in 1usize..6, n in 1usize..6, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a_dims = if ta { [k, m] } else { [m, k] };
            let b_dims = if tb { [n, k] } else { [k, n] };
            let inputs = [
                Input::new(uniform(&mut rng, m * k, -1.0, 1.0), &a_dims),
                Input::new(uniform(&mut rng, k * n, -1.0, 1.0), &b_dims),
            ];
            check_gradients(seed, &inputs, |v| v[0].matmul_t(&v[1], ta, tb))
                .map_err(|e| TestCaseError::fail(format!("matmul ta={ta} tb={tb} {a_dims:?} {b_dims:?}: {e}")))?;
        }
    }
}

/// One input used by several ops (and twice by one op): the tape must add up
/// every path's contribution.
#[test]
fn gradients_accumulate_over_shared_inputs() {
    let mut rng = Rng::new(7);
    let x = Input::new(uniform(&mut rng, 12, -1.0, 1.0), &[3, 4]);
    let w = Input::new(uniform(&mut rng, 20, -1.0, 1.0), &[4, 5]);
    check_gradients(7, &[x, w], |v| {
        let (x, w) = (&v[0], &v[1]);
        let h = x.matmul(w)?.tanh()?;
        let sq = x.mul(x)?.sum_axis(1, true)?; // x used twice by one op
        h.mul(&sq)?.add(&x.matmul(w)?)?.sub(&h)
    })
    .unwrap();
}
