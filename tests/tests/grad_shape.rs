//! Gradients of the reductions and the layout ops (reshape, flatten, narrow,
//! concat, broadcast, row gather) against central finite differences.

use mla_core::{Indices, Shape, Var};
use mla_cpu::Cpu;
use mla_models::rng::Rng;
use mla_tests::{check_gradients, uniform, Input};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

fn random_input(seed: u64, dims: &[usize]) -> Input {
    let mut rng = Rng::derive(seed, 1);
    Input::new(uniform(&mut rng, dims.iter().product(), -2.0, 2.0), dims)
}

fn fail(what: String) -> impl FnOnce(String) -> TestCaseError {
    move |e| TestCaseError::fail(format!("{what}: {e}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sum_and_mean_whole_tensor(dims in prop::collection::vec(1usize..5, 0..=3), seed in any::<u64>()) {
        let x = [random_input(seed, &dims)];
        check_gradients(seed, &x, |v| v[0].sum_all()).map_err(fail(format!("sum_all {dims:?}")))?;
        check_gradients(seed, &x, |v| v[0].mean_all()).map_err(fail(format!("mean_all {dims:?}")))?;
    }

    #[test]
    fn sum_and_mean_each_axis(dims in prop::collection::vec(1usize..5, 1..=3), seed in any::<u64>()) {
        let x = [random_input(seed, &dims)];
        for axis in 0..dims.len() {
            for keepdim in [false, true] {
                check_gradients(seed, &x, |v| v[0].sum_axis(axis, keepdim))
                    .map_err(fail(format!("sum_axis({axis}, {keepdim}) {dims:?}")))?;
                check_gradients(seed, &x, |v| v[0].mean_axis(axis, keepdim))
                    .map_err(fail(format!("mean_axis({axis}, {keepdim}) {dims:?}")))?;
            }
        }
    }

    #[test]
    fn reshape_and_flatten(dims in prop::collection::vec(1usize..5, 1..=4), seed in any::<u64>()) {
        let x = [random_input(seed, &dims)];
        let n: usize = dims.iter().product();
        let mut reversed = dims.clone();
        reversed.reverse();
        for target in [vec![n], vec![1, n, 1], reversed] {
            check_gradients(seed, &x, |v| v[0].reshape(target.clone())?.tanh())
                .map_err(fail(format!("reshape {dims:?} -> {target:?}")))?;
        }
        check_gradients(seed, &x, |v| v[0].flatten()?.tanh()).map_err(fail(format!("flatten {dims:?}")))?;
    }

    #[test]
    fn narrow_each_axis(dims in prop::collection::vec(1usize..6, 1..=3), seed in any::<u64>()) {
        let x = [random_input(seed, &dims)];
        let mut rng = Rng::derive(seed, 2);
        for axis in 0..dims.len() {
            let start = rng.below(dims[axis]);
            let len = 1 + rng.below(dims[axis] - start);
            check_gradients(seed, &x, |v| v[0].narrow(axis, start, len))
                .map_err(fail(format!("narrow(axis {axis}, {start}..{}) {dims:?}", start + len)))?;
        }
    }

    #[test]
    fn concat_each_axis(dims in prop::collection::vec(1usize..5, 1..=3), parts in 1usize..4, seed in any::<u64>()) {
        let mut rng = Rng::derive(seed, 3);
        for axis in 0..dims.len() {
            let inputs: Vec<Input> = (0..parts)
                .map(|p| {
                    let mut d = dims.clone();
                    d[axis] = 1 + rng.below(3);
                    random_input(seed ^ (p as u64 + 1), &d)
                })
                .collect();
            let shapes: Vec<Vec<usize>> = inputs.iter().map(|i| i.dims.clone()).collect();
            check_gradients(seed, &inputs, |v| Var::concat(&v.iter().collect::<Vec<_>>(), axis))
                .map_err(fail(format!("concat axis {axis} of {shapes:?}")))?;
        }
    }

    #[test]
    fn broadcast_to_collapsed_axes(
        out in prop::collection::vec(1usize..5, 1..=3),
        keep in prop::collection::vec(any::<bool>(), 3),
        drop in 0usize..=3,
        seed in any::<u64>(),
    ) {
        let src: Vec<usize> = out.iter().zip(&keep).map(|(&n, &k)| if k { n } else { 1 }).collect();
        let src = src[drop.min(src.len())..].to_vec();
        let x = [random_input(seed, &src)];
        let target = Shape::new(out.clone());
        check_gradients(seed, &x, |v| v[0].broadcast_to(&target)).map_err(fail(format!("broadcast_to {src:?} -> {out:?}")))?;
    }

    #[test]
    fn gather_rows_with_repeats(
        dims in prop::collection::vec(1usize..5, 1..=3),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..9),
        seed in any::<u64>(),
    ) {
        let x = [random_input(seed, &dims)];
        // More picks than rows forces repeats; each repeat must add its gradient.
        let rows: Vec<usize> = picks.iter().map(|p| p.index(dims[0])).collect();
        let idx = Indices::<f64, Cpu>::from_usize(&Cpu, &rows).unwrap();
        check_gradients(seed, &x, |v| v[0].gather_rows(&idx)).map_err(fail(format!("gather_rows {rows:?} of {dims:?}")))?;
    }
}

#[test]
fn gather_rows_repeated_index_accumulates() {
    let x = [random_input(9, &[3, 2])];
    let idx = Indices::<f64, Cpu>::new(&Cpu, &[2, 0, 2, 2, 1, 0]).unwrap();
    check_gradients(9, &x, |v| v[0].gather_rows(&idx)).unwrap();
}
