//! The FLOP count of the matrix products (`mla_core::flops`, reported per
//! training step in metrics.jsonl, the summary and `mla bench`) against
//! counts written out by hand: each GEMM forward and backward, a
//! convolution, and whole joint and MLA (HGM) steps of the mlp model layer
//! by layer. A gradient the step does not need (the input's) must not be
//! computed, so it must not be counted either.

mod trainer_common;

use mla_core::{flops, Tape};
use mla_cpu::Cpu;
use mla_models::data::Dataset;
use mla_models::trainer::{MethodKind, Silent, TrainConfig, Trainer};
use mla_tests::{tensor, T64};
use std::sync::Arc;
use trainer_common::{small_mlp, synthetic, Synthetic, AUDIO_SHAPE, IMAGE_SHAPE};

/// The operations `f` adds to this thread's count.
fn counted(f: impl FnOnce()) -> u64 {
    let before = flops::count();
    f();
    flops::count() - before
}

fn filled(dims: &[usize]) -> T64 {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    tensor(&v, dims)
}

#[test]
fn a_gemm_counts_two_per_multiply_add_forward_and_backward() {
    let (m, k, n) = (5, 7, 3);
    let gemm = 2 * (m * k * n) as u64;
    assert_eq!(
        counted(|| drop(filled(&[m, k]).matmul(&filled(&[k, n])).unwrap())),
        gemm
    );
    // Transposed operands are the same product.
    let t = filled(&[k, m])
        .matmul_t(&filled(&[n, k]), true, true)
        .unwrap();
    assert_eq!(t.dims(), &[m, n]);
    // Backward: one GEMM per input that needs a gradient.
    for (x_tracked, w_tracked, backward) in [(true, true, 2), (false, true, 1), (true, false, 1)] {
        let got = counted(|| {
            let tape = Tape::new(&Cpu);
            let var = |t: T64, tracked: bool| {
                if tracked {
                    tape.var(t)
                } else {
                    tape.constant(t)
                }
            };
            let x = var(filled(&[m, k]), x_tracked);
            let w = var(filled(&[k, n]), w_tracked);
            let loss = x.matmul(&w).unwrap().sum_all().unwrap();
            tape.backward(&loss).unwrap();
        });
        assert_eq!(got, gemm * (1 + backward), "x {x_tracked}, w {w_tracked}");
    }
}

#[test]
fn a_convolution_counts_its_im2col_gemms() {
    // [n, c, h, w] * [oc, c, 3, 3], padding 1: h x w outputs per sample.
    let (n, c, h, w, oc) = (2, 3, 5, 4, 6);
    let gemm = 2 * (n * oc * c * 9 * h * w) as u64;
    let x = filled(&[n, c, h, w]);
    let wt = filled(&[oc, c, 3, 3]);
    assert_eq!(counted(|| drop(x.conv2d(&wt, 1, 1).unwrap())), gemm);
    for (x_tracked, backward) in [(true, 2), (false, 1)] {
        let got = counted(|| {
            let tape = Tape::new(&Cpu);
            let xv = if x_tracked {
                tape.var(x.clone())
            } else {
                tape.constant(x.clone())
            };
            let wv = tape.var(wt.clone());
            let loss = xv.conv2d(&wv, 1, 1).unwrap().sum_all().unwrap();
            tape.backward(&loss).unwrap();
        });
        assert_eq!(got, gemm * (1 + backward), "input tracked: {x_tracked}");
    }
}

/// `2 b i o` per linear layer pass.
fn linear(b: usize, i: usize, o: usize) -> u64 {
    2 * (b * i * o) as u64
}

/// An mlp encoder's step on `b` rows of `input` values: fc1 forward and its
/// weight gradient (the input needs none), fc2 forward, input and weight
/// gradients.
fn mlp_encoder(b: usize, input: usize, s: usize) -> u64 {
    2 * linear(b, input, 256) + 3 * linear(b, 256, s)
}

/// One step's counted operations and the trainer's per-epoch record.
fn first_step(method: MethodKind) -> (u64, TrainConfig) {
    let dir = synthetic(&format!("flops-{method}"), &Synthetic::default());
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    let cfg = small_mlp(method);
    let mut t = Trainer::new(Cpu, ds.clone(), cfg.clone()).unwrap();
    let steps = t.time_steps(0, 1).unwrap();
    assert_eq!(steps[0].samples, cfg.batch_size);
    // The epoch's record counts the same steps (every batch full here).
    let train = Synthetic::default().train;
    let mut one = Trainer::new(
        Cpu,
        ds,
        TrainConfig {
            epochs: 1,
            ..cfg.clone()
        },
    )
    .unwrap();
    one.run(&mut Silent).unwrap();
    let rec = &one.state().history[0];
    assert_eq!(rec.train_steps as usize, train.div_ceil(cfg.batch_size));
    assert!(
        (rec.train_gflop * 1e9 - steps[0].flops as f64 * rec.train_steps as f64).abs() < 1.0,
        "{method}: epoch {} GFLOP against {} per step",
        rec.train_gflop,
        steps[0].flops
    );
    (steps[0].flops, cfg)
}

#[test]
fn a_joint_step_counts_every_layer_once_forward_and_its_gradients_backward() {
    let (got, cfg) = first_step(MethodKind::Joint);
    let (b, s) = (cfg.batch_size, cfg.feature_size);
    let inputs = [IMAGE_SHAPE, AUDIO_SHAPE].map(|d| d.iter().product::<usize>());
    let mut want: u64 = inputs.iter().map(|&i| mlp_encoder(b, i, s)).sum();
    // The concatenation head over both features.
    want += 3 * linear(b, 2 * s, Synthetic::default().classes);
    assert_eq!(got, want);
}

#[test]
fn an_mla_step_counts_each_modality_step_and_hgm_s_projection() {
    let (got, cfg) = first_step(MethodKind::Mla);
    let (b, s, c) = (
        cfg.batch_size,
        cfg.feature_size,
        Synthetic::default().classes,
    );
    let mut want = 0;
    for shape in [IMAGE_SHAPE, AUDIO_SHAPE] {
        // Each modality's step: its encoder and the shared head.
        want += mlp_encoder(b, shape.iter().product(), s) + 3 * linear(b, s, c);
        // OWM: P r, the rank-one update of P, r^T P r, and grad_W P.
        let (c, s) = (c as u64, s as u64);
        want += 4 * s * s + 2 * s + 2 * c * s * s;
    }
    assert_eq!(got, want);
}
