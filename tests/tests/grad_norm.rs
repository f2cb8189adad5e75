//! Gradients of batch norm (training mode: input, weight and bias through the
//! fused kernel; evaluation mode: the composed affine map), dropout, and a
//! ResNet basic block (conv, batch norm, relu, residual add, padded max-pool,
//! global average pool) against central finite differences, plus the
//! running-statistics update against PyTorch's formula.

use mla_core::{BatchNormConfig, BatchNormStats, Tape};
use mla_cpu::Cpu;
use mla_models::rng::Rng;
use mla_tests::{check_gradients, distinct, tensor, uniform, Input, T64, V64};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

fn stats(rng: &mut Rng, c: usize) -> BatchNormStats<f64, Cpu> {
    BatchNormStats {
        mean: tensor(&uniform(rng, c, -0.5, 0.5), &[c]),
        var: tensor(&uniform(rng, c, 0.5, 2.0), &[c]),
    }
}

/// `[n, c, rest...]` with every extent listed.
fn dims_of(n: usize, c: usize, rest: &[usize]) -> Vec<usize> {
    let mut d = vec![n, c];
    d.extend_from_slice(rest);
    d
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn batch_norm_train_input_weight_bias(
        n in 1usize..4, c in 1usize..4,
        // NCHW (BatchNorm2d), [n, f] and [n, c, l] (BatchNorm1d).
        rest in prop_oneof![
            (1usize..4, 1usize..4).prop_map(|(h, w)| vec![h, w]),
            Just(vec![]),
            (1usize..5).prop_map(|l| vec![l]),
        ],
        offset in -3.0f64..3.0, seed in any::<u64>(),
    ) {
        let dims = dims_of(n, c, &rest);
        let count: usize = n * rest.iter().product::<usize>();
        // Training needs two values per channel; skip the shapes PyTorch rejects too.
        prop_assume!(count >= 2);
        let len: usize = dims.iter().product();
        let mut rng = Rng::new(seed);
        let running = stats(&mut rng, c);
        // An offset on x checks that the centring is exact, not just right near 0.
        let x: Vec<f64> = uniform(&mut rng, len, -1.0, 1.0).iter().map(|v| v + offset).collect();
        let inputs = [
            Input::new(x, &dims),
            Input::new(uniform(&mut rng, c, 0.5, 1.5), &[c]),
            Input::new(uniform(&mut rng, c, -0.5, 0.5), &[c]),
        ];
        let cfg = BatchNormConfig::default();
        check_gradients(seed, &inputs, |v| {
            Ok(v[0].batch_norm_train(&v[1], &v[2], &running, &cfg)?.0)
        })
        .map_err(|e| TestCaseError::fail(format!("batch_norm train on {dims:?}: {e}")))?;
    }

    #[test]
    fn batch_norm_eval_input_weight_bias(
        n in 1usize..3, c in 1usize..4,
        rest in prop_oneof![(1usize..4, 1usize..4).prop_map(|(h, w)| vec![h, w]), Just(vec![])],
        seed in any::<u64>(),
    ) {
        // One value per channel is fine in evaluation.
        let dims = dims_of(n, c, &rest);
        let len: usize = dims.iter().product();
        let mut rng = Rng::new(seed);
        let running = stats(&mut rng, c);
        let inputs = [
            Input::new(uniform(&mut rng, len, -2.0, 2.0), &dims),
            Input::new(uniform(&mut rng, c, 0.5, 1.5), &[c]),
            Input::new(uniform(&mut rng, c, -0.5, 0.5), &[c]),
        ];
        let cfg = BatchNormConfig::default();
        check_gradients(seed, &inputs, |v| v[0].batch_norm_eval(&v[1], &v[2], &running, &cfg))
            .map_err(|e| TestCaseError::fail(format!("batch_norm eval on {dims:?}: {e}")))?;
    }

    #[test]
    fn dropout_gradient_is_the_mask(
        len in 1usize..40, p in prop_oneof![Just(0.0f64), Just(1.0), 0.0f64..1.0],
        training in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let inputs = [Input::new(uniform(&mut rng, len, -1.0, 1.0), &[len])];
        // Each forward replays the same stream, so every finite-difference
        // evaluation sees the mask the tape saw.
        check_gradients(seed, &inputs, |v| {
            let mut stream = Rng::new(seed ^ 0xd0);
            v[0].dropout(p, training, &mut || stream.uniform())
        })
        .map_err(|e| TestCaseError::fail(format!("dropout p {p} on [{len}]: {e}")))?;
    }
}

/// PyTorch's numbers for a BatchNorm1d(1) in training mode on [1, 2, 3, 4]:
/// mean 2.5, biased variance 1.25 for normalising, unbiased 5/3 for the
/// running variance; running stats start at 0 / 1, momentum 0.1.
#[test]
fn batch_norm_running_stats_follow_pytorch() {
    let x = tensor(&[1.0, 2.0, 3.0, 4.0], &[4, 1]);
    let (w, b) = (tensor(&[1.0], &[1]), tensor(&[0.0], &[1]));
    let running = BatchNormStats::<f64, Cpu>::new(&Cpu, 1).unwrap();
    let cfg = BatchNormConfig::default();
    let t = x.batch_norm_train(&w, &b, &running, &cfg).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + b.abs());
    assert!(close(t.mean.to_vec().unwrap()[0], 2.5));
    assert!(close(t.var.to_vec().unwrap()[0], 1.25));
    assert!(close(t.running.mean.to_vec().unwrap()[0], 0.25));
    assert!(close(
        t.running.var.to_vec().unwrap()[0],
        0.9 + 0.1 * 5.0 / 3.0
    ));
    let invstd = 1.0 / (1.25f64 + 1e-5).sqrt();
    for (got, xi) in t.out.to_vec().unwrap().iter().zip([1.0, 2.0, 3.0, 4.0]) {
        assert!(close(*got, (xi - 2.5) * invstd), "{got}");
    }
    // Evaluation with the updated statistics uses them, not the batch's.
    let y = x.batch_norm_eval(&w, &b, &t.running, &cfg).unwrap();
    let rv = 0.9 + 0.1 * 5.0 / 3.0;
    for (got, xi) in y.to_vec().unwrap().iter().zip([1.0, 2.0, 3.0, 4.0]) {
        assert!(close(*got, (xi - 0.25) / (rv + 1e-5f64).sqrt()), "{got}");
    }
}

/// Running statistics on NCHW against a naive loop, with affine parameters
/// and a momentum other than the default; the tape returns the same statistics.
#[test]
fn batch_norm_running_stats_naive_nchw() {
    let (n, c, h, w) = (3, 2, 2, 3);
    let mut rng = Rng::new(5);
    let xs = uniform(&mut rng, n * c * h * w, -2.0, 3.0);
    let x = tensor(&xs, &[n, c, h, w]);
    let running = stats(&mut rng, c);
    let (rm0, rv0) = (
        running.mean.to_vec().unwrap(),
        running.var.to_vec().unwrap(),
    );
    let wt = tensor(&[1.5, -0.5], &[c]);
    let bs = tensor(&[0.25, 1.0], &[c]);
    let cfg = BatchNormConfig {
        momentum: 0.3,
        eps: 1e-3,
    };
    let t = x.batch_norm_train(&wt, &bs, &running, &cfg).unwrap();
    let tape = Tape::new(&Cpu);
    let (yv, rt) = tape
        .var(x.clone())
        .batch_norm_train(&tape.var(wt.clone()), &tape.var(bs.clone()), &running, &cfg)
        .unwrap();
    assert_eq!(yv.value().to_vec().unwrap(), t.out.to_vec().unwrap());
    assert_eq!(rt.var.to_vec().unwrap(), t.running.var.to_vec().unwrap());
    let out = t.out.to_vec().unwrap();
    let m = (n * h * w) as f64;
    for ch in 0..c {
        let vals: Vec<(usize, f64)> = (0..n)
            .flat_map(|i| (0..h * w).map(move |j| (i * c + ch) * h * w + j))
            .map(|k| (k, xs[k]))
            .collect();
        let mean = vals.iter().map(|v| v.1).sum::<f64>() / m;
        let var = vals.iter().map(|v| (v.1 - mean).powi(2)).sum::<f64>() / m;
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + b.abs());
        assert!(close(
            t.running.mean.to_vec().unwrap()[ch],
            0.7 * rm0[ch] + 0.3 * mean
        ));
        assert!(close(
            t.running.var.to_vec().unwrap()[ch],
            0.7 * rv0[ch] + 0.3 * var * m / (m - 1.0)
        ));
        let (wc, bc) = ([1.5, -0.5][ch], [0.25, 1.0][ch]);
        for (k, v) in vals {
            assert!(close(out[k], (v - mean) / (var + 1e-3).sqrt() * wc + bc));
        }
    }
}

fn bn_train<'t>(
    x: &V64<'t>,
    w: &V64<'t>,
    b: &V64<'t>,
    running: &BatchNormStats<f64, Cpu>,
    cfg: &BatchNormConfig,
) -> mla_core::Result<V64<'t>> {
    Ok(x.batch_norm_train(w, b, running, cfg)?.0)
}

/// A ResNet basic block with a downsampling shortcut, as torchvision builds
/// it, then the stem's padded max-pool and the global average pool:
/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + bn_d(conv_d(x)))`. Every
/// parameter's gradient is checked. The relu inputs are checked to stay off
/// the kink, which random data cannot promise for a whole chain.
#[test]
fn basic_block_chain() {
    let mut rng = Rng::new(21);
    let (n, c, oc, h, w) = (2, 2, 3, 6, 5);
    let mut inputs = vec![
        Input::new(distinct(&mut rng, n * c * h * w, 0.05), &[n, c, h, w]),
        Input::new(uniform(&mut rng, oc * c * 9, -0.5, 0.5), &[oc, c, 3, 3]),
        Input::new(uniform(&mut rng, oc * oc * 9, -0.5, 0.5), &[oc, oc, 3, 3]),
        Input::new(uniform(&mut rng, oc * c, -0.5, 0.5), &[oc, c, 1, 1]),
    ];
    for _ in 0..3 {
        inputs.push(Input::new(uniform(&mut rng, oc, 0.5, 1.5), &[oc]));
        inputs.push(Input::new(uniform(&mut rng, oc, -0.2, 0.2), &[oc]));
    }
    let running = BatchNormStats::<f64, Cpu>::new(&Cpu, oc).unwrap();
    let cfg = BatchNormConfig::default();
    let check_kink = |v: &V64<'_>| -> mla_core::Result<()> {
        assert!(
            v.value().to_vec()?.iter().all(|x| x.abs() > 1e-3),
            "seed puts a relu input on its kink"
        );
        Ok(())
    };
    check_gradients(21, &inputs, |v| {
        let (r, c) = (&running, &cfg);
        let a = bn_train(&v[0].conv2d(&v[1], 2, 1)?, &v[4], &v[5], r, c)?;
        check_kink(&a)?;
        let a = bn_train(&a.relu()?.conv2d(&v[2], 1, 1)?, &v[6], &v[7], r, c)?;
        let short = bn_train(&v[0].conv2d(&v[3], 2, 0)?, &v[8], &v[9], r, c)?;
        let s = a.add(&short)?;
        check_kink(&s)?;
        s.relu()?.max_pool2d_pad(3, 2, 1)?.global_avg_pool2d()
    })
    .unwrap();
}

/// Evaluation mode on a no-grad tape equals the plain tensor forward, bit for bit.
#[test]
fn batch_norm_eval_tape_matches_tensor() {
    let mut rng = Rng::new(3);
    let x: T64 = tensor(&uniform(&mut rng, 2 * 3 * 4, -1.0, 1.0), &[2, 3, 4]);
    let w = tensor(&uniform(&mut rng, 3, 0.5, 1.5), &[3]);
    let b = tensor(&uniform(&mut rng, 3, -1.0, 1.0), &[3]);
    let running = stats(&mut rng, 3);
    let cfg = BatchNormConfig::default();
    let plain = x.batch_norm_eval(&w, &b, &running, &cfg).unwrap();
    let tape = Tape::no_grad(&Cpu);
    let v = tape
        .var(x)
        .batch_norm_eval(&tape.var(w), &tape.var(b), &running, &cfg)
        .unwrap();
    assert_eq!(v.value().to_vec().unwrap(), plain.to_vec().unwrap());
}

/// The mask: elements are kept exactly where the stream's draw is at least
/// `p`, scaled by `1 / (1 - p)`; the same seed gives the same mask; about
/// `1 - p` of a long tensor survives.
#[test]
fn dropout_mask_follows_the_stream() {
    let len = 20_000;
    let x: T64 = tensor(&vec![2.0; len], &[len]);
    let p = 0.3;
    let mut s1 = Rng::new(9);
    let y = x
        .dropout(p, true, &mut || s1.uniform())
        .unwrap()
        .to_vec()
        .unwrap();
    let mut replay = Rng::new(9);
    let mut kept = 0;
    for v in &y {
        let u = replay.uniform();
        if u >= p {
            kept += 1;
            assert!((v - 2.0 / 0.7).abs() < 1e-12, "{v}");
        } else {
            assert_eq!(*v, 0.0);
        }
    }
    let frac = kept as f64 / len as f64;
    assert!((frac - 0.7).abs() < 0.02, "kept {frac}");
    // Evaluation is the identity and draws nothing.
    let mut draws = 0;
    let e = x
        .dropout(p, false, &mut || {
            draws += 1;
            0.0
        })
        .unwrap();
    assert_eq!(e.to_vec().unwrap(), vec![2.0; len]);
    assert_eq!(draws, 0);
    // p = 1 drops everything (no infinite scale leaks in).
    let mut s2 = Rng::new(1);
    let z = x.dropout(1.0, true, &mut || s2.uniform()).unwrap();
    assert!(z.to_vec().unwrap().iter().all(|&v| v == 0.0));
}

// ---- Sums over ranks in the graph, and synchronised batch norm ----

use mla_core::{RankSum, Var};
use mla_models::layers::sync_batch_norm_train;
use std::sync::{Arc, Mutex};

/// A job of one rank: the sum over ranks is the value itself.
struct WorldOfOne;
impl RankSum<f64, Cpu> for WorldOfOne {
    fn sum(&self, x: &T64) -> mla_core::Result<T64> {
        Ok(x.clone())
    }
}

/// A stand-in for a job whose other ranks contribute `other` to every
/// element of every sum; records what it was asked to sum.
struct OtherRanksAdd {
    other: f64,
    seen: Mutex<Vec<Vec<f64>>>,
}
impl RankSum<f64, Cpu> for OtherRanksAdd {
    fn sum(&self, x: &T64) -> mla_core::Result<T64> {
        self.seen.lock().unwrap().push(x.to_vec()?);
        x.affine(1.0, self.other)
    }
}

/// Two ranks holding the same value: the sum doubles it.
struct TwoEqualRanks;
impl RankSum<f64, Cpu> for TwoEqualRanks {
    fn sum(&self, x: &T64) -> mla_core::Result<T64> {
        x.scale(2.0)
    }
}

/// A broken transport that changes the shape.
struct Flattens;
impl RankSum<f64, Cpu> for Flattens {
    fn sum(&self, x: &T64) -> mla_core::Result<T64> {
        x.reshape([x.elem_count(), 1])
    }
}

#[test]
fn rank_sum_sends_the_weighted_adjoint_back() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(tensor(&[1.0, 2.0], &[2]));
    let f = Arc::new(OtherRanksAdd {
        other: 1.0,
        seen: Mutex::new(Vec::new()),
    });
    let hook: Arc<dyn RankSum<f64, Cpu>> = f.clone();
    let y = x.rank_sum(&hook, 4.0).unwrap();
    assert_eq!(y.value().to_vec().unwrap(), vec![2.0, 3.0]);
    let r = tape.constant(tensor(&[0.5, -1.0], &[2]));
    let loss = y.mul(&r).unwrap().sum_all().unwrap();
    let g = tape.backward(&loss).unwrap();
    // Backward sums grad * weight over ranks and divides by the weight:
    // ([0.5, -1] * 4 + 1) / 4.
    assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), vec![0.75, -0.75]);
    assert_eq!(
        *f.seen.lock().unwrap(),
        vec![vec![1.0, 2.0], vec![2.0, -4.0]]
    );

    // Two ranks with the same value and the same adjoint: twice each.
    let tape = Tape::new(&Cpu);
    let x = tape.var(tensor(&[1.0, -3.0], &[2]));
    let two: Arc<dyn RankSum<f64, Cpu>> = Arc::new(TwoEqualRanks);
    let y = x.rank_sum(&two, 3.0).unwrap();
    assert_eq!(y.value().to_vec().unwrap(), vec![2.0, -6.0]);
    let r = tape.constant(tensor(&[0.5, -1.0], &[2]));
    let loss = y.mul(&r).unwrap().sum_all().unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), vec![1.0, -2.0]);

    // A world of one is the identity both ways; a bad weight or a sum that
    // changes the shape is an error.
    let one: Arc<dyn RankSum<f64, Cpu>> = Arc::new(WorldOfOne);
    check_gradients(1, &[Input::new(vec![0.3, -0.7, 1.1], &[3])], |v| {
        v[0].rank_sum(&one, 5.0)?.sqr()
    })
    .unwrap();
    let tape = Tape::new(&Cpu);
    let x = tape.var(tensor(&[1.0, 2.0], &[2]));
    assert!(x
        .rank_sum(&one, 0.0)
        .unwrap_err()
        .to_string()
        .contains("weight"));
    let bad: Arc<dyn RankSum<f64, Cpu>> = Arc::new(Flattens);
    assert!(x
        .rank_sum(&bad, 1.0)
        .unwrap_err()
        .to_string()
        .contains("shape"));
}

type Bn<'t> = (V64<'t>, BatchNormStats<f64, Cpu>);
/// A training-mode batch norm of `(x, weight, bias, running)`.
type BnFn<'a> =
    dyn for<'t> Fn(&V64<'t>, &V64<'t>, &V64<'t>, &BatchNormStats<f64, Cpu>) -> Bn<'t> + 'a;

/// Output, input/weight/bias gradients of `sum(y * r)` and running stats.
fn bn_run(dims: &[usize], seed: u64, bn: &BnFn) -> Vec<Vec<f64>> {
    let c = dims[1];
    let len: usize = dims.iter().product();
    let mut rng = Rng::new(seed);
    let running = stats(&mut rng, c);
    let x: Vec<f64> = uniform(&mut rng, len, -1.0, 1.0)
        .iter()
        .map(|v| v * 2.0 + 0.7)
        .collect();
    let tape = Tape::new(&Cpu);
    let xv = tape.var(tensor(&x, dims));
    let w = tape.var(tensor(&uniform(&mut rng, c, 0.5, 1.5), &[c]));
    let b = tape.var(tensor(&uniform(&mut rng, c, -0.5, 0.5), &[c]));
    let r = tape.constant(tensor(&uniform(&mut rng, len, -1.0, 1.0), dims));
    let (y, new) = bn(&xv, &w, &b, &running);
    let yv = y.value().to_vec().unwrap();
    let loss = y.mul(&r).unwrap().sum_all().unwrap();
    let g = tape.backward(&loss).unwrap();
    let grad = |v: &V64<'_>| g.get(v).unwrap().to_vec().unwrap();
    vec![
        yv,
        grad(&xv),
        grad(&w),
        grad(&b),
        new.mean.to_vec().unwrap(),
        new.var.to_vec().unwrap(),
    ]
}

#[test]
fn sync_batch_norm_of_one_rank_is_the_fused_kernel() {
    let cfg = BatchNormConfig {
        momentum: 0.3,
        eps: 1e-5,
    };
    let one: Arc<dyn RankSum<f64, Cpu>> = Arc::new(WorldOfOne);
    let what = [
        "output",
        "input grad",
        "weight grad",
        "bias grad",
        "running mean",
        "running var",
    ];
    for (k, dims) in [
        vec![4, 3, 2, 2],
        vec![5, 2],
        vec![3, 2, 4],
        vec![1, 3, 2, 2],
        vec![2, 4, 3, 1],
    ]
    .iter()
    .enumerate()
    {
        let fused = bn_run(dims, 10 + k as u64, &|x, w, b, run| {
            x.batch_norm_train(w, b, run, &cfg).unwrap()
        });
        let synced = bn_run(dims, 10 + k as u64, &|x, w, b, run| {
            sync_batch_norm_train(x, w, b, run, &cfg, &one).unwrap()
        });
        for ((f, s), name) in fused.iter().zip(&synced).zip(what) {
            assert_eq!(f.len(), s.len());
            let scale = f.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
            for (a, b) in f.iter().zip(s) {
                assert!(
                    (a - b).abs() <= 1e-5 * scale,
                    "{dims:?} {name}: fused {a}, synchronised {b}"
                );
            }
        }
    }
}

#[test]
fn sync_batch_norm_gradients_match_finite_differences() {
    let cfg = BatchNormConfig::default();
    let one: Arc<dyn RankSum<f64, Cpu>> = Arc::new(WorldOfOne);
    for (seed, dims) in [
        (3u64, vec![3, 2, 2, 2]),
        (4, vec![4, 3]),
        (5, vec![2, 2, 3]),
    ] {
        let c = dims[1];
        let len: usize = dims.iter().product();
        let mut rng = Rng::new(seed);
        let running = stats(&mut rng, c);
        let x: Vec<f64> = uniform(&mut rng, len, -1.0, 1.0)
            .iter()
            .map(|v| v + 1.5)
            .collect();
        let inputs = [
            Input::new(x, &dims),
            Input::new(uniform(&mut rng, c, 0.5, 1.5), &[c]),
            Input::new(uniform(&mut rng, c, -0.5, 0.5), &[c]),
        ];
        check_gradients(seed, &inputs, |v: &[Var<'_, f64, Cpu>]| {
            sync_batch_norm_train(&v[0], &v[1], &v[2], &running, &cfg, &one)
                .map(|(y, _)| y)
                .map_err(|e| mla_core::Error::Autodiff(e.to_string()))
        })
        .unwrap_or_else(|e| panic!("{dims:?}: {e}"));
    }
}

#[test]
fn sync_batch_norm_needs_two_values_per_channel_over_the_job() {
    let one: Arc<dyn RankSum<f64, Cpu>> = Arc::new(WorldOfOne);
    let tape = Tape::new(&Cpu);
    let x = tape.var(tensor(&[1.0, 2.0], &[1, 2]));
    let w = tape.var(tensor(&[1.0, 1.0], &[2]));
    let b = tape.var(tensor(&[0.0, 0.0], &[2]));
    let run = BatchNormStats::new(&Cpu, 2).unwrap();
    let e = sync_batch_norm_train(&x, &w, &b, &run, &BatchNormConfig::default(), &one)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("more than 1 value per channel"), "{e}");
    // Another rank's row makes it two.
    let two: Arc<dyn RankSum<f64, Cpu>> = Arc::new(TwoEqualRanks);
    sync_batch_norm_train(&x, &w, &b, &run, &BatchNormConfig::default(), &two).unwrap();
}
