//! Every Backend op and its backward on CUDA against the CPU backend, on
//! random shapes (rarely multiples of a block size) and values. Without a
//! CUDA device each test prints why it is skipped and passes.

mod cuda_common;

use cuda_common::*;
use mla_core::shape::broadcast_strides;
use mla_core::{
    conv2d_geometry, pool2d_geometry, AdamConfig, Backend, BinaryOp, GemmConfig, Pool2dGeometry,
    SgdConfig, Shape, UnaryOp,
};
use mla_cpu::CpuFloat;
use mla_cuda::{Cuda, CudaFloat};
use mla_models::rng::Rng;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn runner(cases: u32) -> TestRunner {
    // Shrinking is bounded so a failing case is reported in seconds.
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..Config::default()
    })
}

fn close<T: CudaFloat>(
    what: &str,
    got: &[T],
    want: &[T],
    rtol: f64,
    atol: f64,
) -> Result<(), TestCaseError> {
    check_close(what, got, want, rtol, atol).map_err(TestCaseError::fail)
}

/// Runs `case` for f32 over `cases` random inputs and for f64 over a quarter as many.
fn both<S, F32, F64>(cases: u32, strategy: S, f32_case: F32, f64_case: F64)
where
    S: Strategy + Clone,
    S::Value: Clone,
    F32: Fn(S::Value) -> Result<(), TestCaseError>,
    F64: Fn(S::Value) -> Result<(), TestCaseError>,
{
    runner(cases).run(&strategy, f32_case).unwrap();
    runner((cases / 4).max(4)).run(&strategy, f64_case).unwrap();
}

// ---------------------------------------------------------------- copy_strided

fn case_copy<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    dims: &[usize],
    pads: &[usize],
    bcast: &[bool],
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    // Source: a padded buffer read with its own strides, some axes broadcast (stride 0).
    let src_shape: Vec<usize> = dims.iter().zip(pads).map(|(d, p)| d + p).collect();
    let mut src_strides = Shape::new(src_shape.clone()).strides();
    for (s, &b) in src_strides.iter_mut().zip(bcast) {
        if b {
            *s = 0;
        }
    }
    let src_len: usize = src_shape.iter().product::<usize>() + 3;
    let src_off = rng.below(3);
    // Destination: transposed (reversed axes) inside a larger buffer.
    let rev: Vec<usize> = dims.iter().rev().copied().collect();
    let rev_strides = Shape::new(rev).strides();
    let dst_strides: Vec<usize> = rev_strides.iter().rev().copied().collect();
    let dst_off = rng.below(5);
    let dst_len = dims.iter().product::<usize>() + dst_off + 2;
    let src = pair::<T>(cuda, &uniform(&mut rng, src_len, -1.0, 1.0));
    let init = uniform(&mut rng, dst_len, -1.0, 1.0);
    let mut dst = pair::<T>(cuda, &init);
    CPU.copy_strided(
        &mut dst.cpu,
        dst_off,
        &dst_strides,
        &src.cpu,
        src_off,
        &src_strides,
        dims,
    )
    .unwrap();
    cuda.copy_strided(
        &mut dst.gpu,
        dst_off,
        &dst_strides,
        &src.gpu,
        src_off,
        &src_strides,
        dims,
    )
    .unwrap();
    // A copy is exact.
    close(
        "copy_strided",
        &download::<T>(cuda, &dst.gpu),
        &dst.cpu,
        0.0,
        0.0,
    )
}

#[test]
fn copy_strided_matches_cpu() {
    let Some(cuda) = cuda() else { return };
    let strat = (1usize..=5).prop_flat_map(|rank| {
        (
            prop::collection::vec(1usize..9, rank),
            prop::collection::vec(0usize..3, rank),
            prop::collection::vec(prop::bool::weighted(0.2), rank),
            any::<u64>(),
        )
    });
    both(
        48,
        strat,
        |(d, p, b, s)| case_copy::<f32>(&cuda, &d, &p, &b, s),
        |(d, p, b, s)| case_copy::<f64>(&cuda, &d, &p, &b, s),
    );
}

#[test]
fn contiguous_copy_and_rank_mismatch() {
    let Some(cuda) = cuda() else { return };
    let mut rng = Rng::new(1);
    let v = uniform(&mut rng, 1000, -1.0, 1.0);
    let src = pair::<f32>(&cuda, &v);
    let mut dst = pair::<f32>(&cuda, &vec![0.0; 1000]);
    cuda.copy_strided(&mut dst.gpu, 7, &[1], &src.gpu, 3, &[1], &[990])
        .unwrap();
    CPU.copy_strided(&mut dst.cpu, 7, &[1], &src.cpu, 3, &[1], &[990])
        .unwrap();
    assert_close(
        "contiguous copy",
        &download::<f32>(&cuda, &dst.gpu),
        &dst.cpu,
        0.0,
        0.0,
    );
    let err = cuda
        .copy_strided(&mut dst.gpu, 0, &[1, 1], &src.gpu, 0, &[1], &[2])
        .unwrap_err();
    assert_eq!(err.op(), Some("copy_strided"));
    let err = cuda
        .copy_strided(&mut dst.gpu, 10, &[1], &src.gpu, 0, &[1], &[995])
        .unwrap_err();
    assert_eq!(err.op(), Some("copy_strided"), "{err}");
}

// ------------------------------------------------------------------------ gemm

fn case_gemm<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    cfg: GemmConfig,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let alen = if cfg.stride_a == 0 {
        cfg.m * cfg.k
    } else {
        cfg.batch * cfg.m * cfg.k
    };
    let blen = if cfg.stride_b == 0 {
        cfg.k * cfg.n
    } else {
        cfg.batch * cfg.k * cfg.n
    };
    let a = pair::<T>(cuda, &uniform(&mut rng, alen, -1.0, 1.0));
    let b = pair::<T>(cuda, &uniform(&mut rng, blen, -1.0, 1.0));
    let want = CPU.gemm(&cfg, &a.cpu, &b.cpu).unwrap();
    let got = cuda.gemm(&cfg, &a.gpu, &b.gpu).unwrap();
    let (rtol, atol) = tol::<T>();
    close(
        &format!("gemm {cfg:?}"),
        &download::<T>(cuda, &got),
        &want,
        rtol,
        atol * (cfg.k as f64 + 1.0),
    )
}

fn gemm_strategy() -> impl Strategy<Value = (GemmConfig, u64)> + Clone {
    (
        1usize..4,
        1usize..70,
        1usize..70,
        0usize..70,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(batch, m, n, k, ta, tb, bca, bcb, seed)| {
            let cfg = GemmConfig {
                batch,
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
                stride_a: if bca { 0 } else { m * k },
                stride_b: if bcb { 0 } else { k * n },
            };
            (cfg, seed)
        })
}

#[test]
fn gemm_matches_cpu() {
    let Some(cuda) = cuda() else { return };
    both(
        64,
        gemm_strategy(),
        |(c, s)| case_gemm::<f32>(&cuda, c, s),
        |(c, s)| case_gemm::<f64>(&cuda, c, s),
    );
}

#[test]
fn gemm_at_encoder_shapes() {
    let Some(cuda) = cuda() else { return };
    for (m, k, n) in [
        (64, 784, 256),
        (64, 3136, 128),
        (64, 9600, 128),
        (64, 128, 10),
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false)] {
            let cfg = GemmConfig {
                batch: 1,
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
                stride_a: m * k,
                stride_b: k * n,
            };
            case_gemm::<f32>(&cuda, cfg, (m * n + k) as u64).unwrap();
        }
    }
}

#[test]
fn gemm_rejects_short_buffers() {
    let Some(cuda) = cuda() else { return };
    let a = pair::<f32>(&cuda, &[1.0; 5]);
    let b = pair::<f32>(&cuda, &[1.0; 6]);
    let cfg = GemmConfig {
        batch: 1,
        m: 2,
        n: 3,
        k: 3,
        trans_a: false,
        trans_b: false,
        stride_a: 6,
        stride_b: 9,
    };
    assert_eq!(
        cuda.gemm(&cfg, &a.gpu, &b.gpu).unwrap_err().op(),
        Some("gemm")
    );
}

// ----------------------------------------------------------------------- unary

const UNARY: [UnaryOp; 9] = [
    UnaryOp::Relu,
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Neg,
    UnaryOp::Sqr,
    UnaryOp::Sqrt,
    UnaryOp::Affine {
        mul: -1.75,
        add: 0.5,
    },
];

fn case_unary<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    op: UnaryOp,
    n: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let (lo, hi) = match op {
        UnaryOp::Log | UnaryOp::Sqrt => (0.05, 4.0),
        _ => (-4.0, 4.0),
    };
    let x = pair::<T>(cuda, &uniform(&mut rng, n, lo, hi));
    let g = pair::<T>(cuda, &uniform(&mut rng, n, -1.0, 1.0));
    let (rtol, atol) = tol::<T>();
    let y_cpu = CPU.unary(op, &x.cpu).unwrap();
    let y_gpu = cuda.unary(op, &x.gpu).unwrap();
    close(
        &format!("{op:?}"),
        &download::<T>(cuda, &y_gpu),
        &y_cpu,
        rtol,
        atol,
    )?;
    let d_cpu = CPU.unary_backward(op, &x.cpu, &y_cpu, &g.cpu).unwrap();
    let d_gpu = cuda.unary_backward(op, &x.gpu, &y_gpu, &g.gpu).unwrap();
    close(
        &format!("{op:?} backward"),
        &download::<T>(cuda, &d_gpu),
        &d_cpu,
        rtol,
        atol,
    )
}

#[test]
fn unary_and_backward_match_cpu() {
    let Some(cuda) = cuda() else { return };
    let strat = (0usize..UNARY.len(), 0usize..3000, any::<u64>());
    both(
        64,
        strat,
        |(o, n, s)| case_unary::<f32>(&cuda, UNARY[o], n, s),
        |(o, n, s)| case_unary::<f64>(&cuda, UNARY[o], n, s),
    );
}

// ---------------------------------------------------------------------- binary

fn case_binary<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    op: BinaryOp,
    dims: &[usize],
    lmask: &[bool],
    rmask: &[bool],
    drop: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    // Each operand keeps an axis or broadcasts it (size 1); rhs may also have fewer axes.
    let ld: Vec<usize> = dims
        .iter()
        .zip(lmask)
        .map(|(&d, &keep)| if keep { d } else { 1 })
        .collect();
    let rd: Vec<usize> = dims
        .iter()
        .zip(rmask)
        .map(|(&d, &keep)| if keep { d } else { 1 })
        .skip(drop.min(dims.len()))
        .collect();
    let (ls, rs) = (Shape::new(ld.clone()), Shape::new(rd.clone()));
    let (out, lst, rst) = broadcast_strides("binary", &ls, &rs).unwrap();
    let a = pair::<T>(cuda, &uniform(&mut rng, ls.elem_count(), -2.0, 2.0));
    // Keep divisors away from zero.
    let bv: Vec<f64> = uniform(&mut rng, rs.elem_count(), 0.5, 2.0)
        .into_iter()
        .map(|v| if rng.uniform() < 0.5 { -v } else { v })
        .collect();
    let b = pair::<T>(cuda, &bv);
    let want = CPU.binary(op, &a.cpu, &lst, &b.cpu, &rst, &out).unwrap();
    let got = cuda.binary(op, &a.gpu, &lst, &b.gpu, &rst, &out).unwrap();
    let (rtol, atol) = tol::<T>();
    close(
        &format!("{op:?} {ld:?} {rd:?}"),
        &download::<T>(cuda, &got),
        &want,
        rtol,
        atol,
    )
}

#[test]
fn binary_broadcast_matches_cpu() {
    let Some(cuda) = cuda() else { return };
    let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];
    let strat = (0usize..4, 0usize..5).prop_flat_map(|(op, rank)| {
        (
            Just(op),
            prop::collection::vec(1usize..12, rank),
            prop::collection::vec(prop::bool::weighted(0.7), rank),
            prop::collection::vec(prop::bool::weighted(0.7), rank),
            0usize..3,
            any::<u64>(),
        )
    });
    both(
        96,
        strat,
        |(o, d, l, r, k, s)| case_binary::<f32>(&cuda, ops[o], &d, &l, &r, k, s),
        |(o, d, l, r, k, s)| case_binary::<f64>(&cuda, ops[o], &d, &l, &r, k, s),
    );
}

#[test]
fn binary_large_contiguous_and_bias_row() {
    let Some(cuda) = cuda() else { return };
    // Same-shape contiguous (the fast kernel) and a bias row over a big matrix.
    case_binary::<f32>(&cuda, BinaryOp::Mul, &[300_001], &[true], &[true], 0, 3).unwrap();
    case_binary::<f32>(
        &cuda,
        BinaryOp::Add,
        &[513, 1031],
        &[true, true],
        &[false, true],
        0,
        4,
    )
    .unwrap();
    case_binary::<f32>(
        &cuda,
        BinaryOp::Div,
        &[64, 32, 28, 28],
        &[true; 4],
        &[false, true, false, false],
        0,
        5,
    )
    .unwrap();
}

// -------------------------------------------------------------------- sum_axis

fn case_sum<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    outer: usize,
    len: usize,
    inner: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let x = pair::<T>(cuda, &uniform(&mut rng, outer * len * inner, -1.0, 1.0));
    let want = CPU.sum_axis(&x.cpu, outer, len, inner).unwrap();
    let got = cuda.sum_axis(&x.gpu, outer, len, inner).unwrap();
    let (rtol, atol) = tol::<T>();
    close(
        &format!("sum_axis [{outer}, {len}, {inner}]"),
        &download::<T>(cuda, &got),
        &want,
        rtol,
        atol * (len as f64).sqrt().max(1.0) * 10.0,
    )
}

#[test]
fn sum_axis_matches_cpu() {
    let Some(cuda) = cuda() else { return };
    let strat = (0usize..40, 0usize..300, 1usize..70, any::<u64>());
    both(
        64,
        strat,
        |(o, l, i, s)| case_sum::<f32>(&cuda, o, l, i, s),
        |(o, l, i, s)| case_sum::<f64>(&cuda, o, l, i, s),
    );
    // inner == 1 (row kernel), including zero-length axes.
    let strat = (0usize..300, 0usize..2000, any::<u64>());
    runner(32)
        .run(&strat, |(o, l, s)| case_sum::<f32>(&cuda, o, l, 1, s))
        .unwrap();
}

#[test]
fn sum_axis_long_rows_and_wide_columns() {
    let Some(cuda) = cuda() else { return };
    // Few long rows take the split (partial sums) path.
    case_sum::<f32>(&cuda, 1, 1_000_003, 1, 1).unwrap();
    case_sum::<f64>(&cuda, 3, 200_001, 1, 2).unwrap();
    // Conv weight gradient: sum over the batch of per-sample products.
    case_sum::<f32>(&cuda, 1, 64, 64 * 288, 3).unwrap();
    // Few output columns, long axis.
    case_sum::<f32>(&cuda, 1, 70_000, 10, 4).unwrap();
}

// --------------------------------------------------------------------- softmax

fn case_softmax<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    rows: usize,
    cols: usize,
    log: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let x = pair::<T>(cuda, &uniform(&mut rng, rows * cols, -8.0, 8.0));
    let g = pair::<T>(cuda, &uniform(&mut rng, rows * cols, -1.0, 1.0));
    let (rtol, atol) = tol::<T>();
    let y_cpu = CPU.softmax(&x.cpu, rows, cols, log).unwrap();
    let y_gpu = cuda.softmax(&x.gpu, rows, cols, log).unwrap();
    close(
        &format!("softmax log={log} [{rows}, {cols}]"),
        &download::<T>(cuda, &y_gpu),
        &y_cpu,
        rtol,
        atol,
    )?;
    let d_cpu = CPU
        .softmax_backward(&y_cpu, &g.cpu, rows, cols, log)
        .unwrap();
    let d_gpu = cuda
        .softmax_backward(&y_gpu, &g.gpu, rows, cols, log)
        .unwrap();
    close(
        &format!("softmax backward log={log} [{rows}, {cols}]"),
        &download::<T>(cuda, &d_gpu),
        &d_cpu,
        rtol,
        atol * 10.0,
    )
}

#[test]
fn softmax_and_backward_match_cpu() {
    let Some(cuda) = cuda() else { return };
    let strat = (1usize..80, 1usize..300, any::<bool>(), any::<u64>());
    both(
        64,
        strat,
        |(r, c, l, s)| case_softmax::<f32>(&cuda, r, c, l, s),
        |(r, c, l, s)| case_softmax::<f64>(&cuda, r, c, l, s),
    );
}

// --------------------------------------------------------------- cross entropy

fn case_ce<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let x = pair::<T>(cuda, &uniform(&mut rng, rows * cols, -6.0, 6.0));
    let labels: Vec<u32> = (0..rows).map(|_| rng.below(cols) as u32).collect();
    let (lc, lg) = indices(cuda, &labels);
    let gl = pair::<T>(cuda, &[0.75]);
    let (rtol, atol) = tol::<T>();
    let (loss_c, probs_c) = CPU.cross_entropy(&x.cpu, &lc, rows, cols).unwrap();
    let (loss_g, probs_g) = cuda.cross_entropy(&x.gpu, &lg, rows, cols).unwrap();
    close(
        "cross_entropy loss",
        &download::<T>(cuda, &loss_g),
        &loss_c,
        rtol,
        atol,
    )?;
    close(
        "cross_entropy probs",
        &download::<T>(cuda, &probs_g),
        &probs_c,
        rtol,
        atol,
    )?;
    let d_c = CPU
        .cross_entropy_backward(&probs_c, &lc, &gl.cpu, rows, cols)
        .unwrap();
    let d_g = cuda
        .cross_entropy_backward(&probs_g, &lg, &gl.gpu, rows, cols)
        .unwrap();
    close(
        "cross_entropy backward",
        &download::<T>(cuda, &d_g),
        &d_c,
        rtol,
        atol,
    )
}

#[test]
fn cross_entropy_and_backward_match_cpu() {
    let Some(cuda) = cuda() else { return };
    let strat = (1usize..130, 1usize..40, any::<u64>());
    both(
        64,
        strat,
        |(r, c, s)| case_ce::<f32>(&cuda, r, c, s),
        |(r, c, s)| case_ce::<f64>(&cuda, r, c, s),
    );
    // Past a million logits the per-row pass plus a separate mean.
    case_ce::<f32>(&cuda, 2100, 500, 9).unwrap();
}

// ------------------------------------------------------------- gather/scatter

fn case_gather<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    rows: usize,
    row_len: usize,
    n_idx: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let x = pair::<T>(cuda, &uniform(&mut rng, rows * row_len, -1.0, 1.0));
    let idx: Vec<u32> = (0..n_idx).map(|_| rng.below(rows) as u32).collect();
    let (ic, ig) = indices(cuda, &idx);
    let want = CPU.gather_rows(&x.cpu, &ic, row_len).unwrap();
    let got = cuda.gather_rows(&x.gpu, &ig, row_len).unwrap();
    close("gather_rows", &download::<T>(cuda, &got), &want, 0.0, 0.0)?;
    let g = pair::<T>(cuda, &uniform(&mut rng, n_idx * row_len, -1.0, 1.0));
    let want = CPU.scatter_add_rows(&g.cpu, &ic, rows, row_len).unwrap();
    let got = cuda.scatter_add_rows(&g.gpu, &ig, rows, row_len).unwrap();
    let (rtol, atol) = tol::<T>();
    close(
        "scatter_add_rows",
        &download::<T>(cuda, &got),
        &want,
        rtol,
        atol,
    )
}

#[test]
fn gather_and_scatter_match_cpu() {
    let Some(cuda) = cuda() else { return };
    let strat = (1usize..50, 1usize..200, 0usize..80, any::<u64>());
    both(
        48,
        strat,
        |(r, l, n, s)| case_gather::<f32>(&cuda, r, l, n, s),
        |(r, l, n, s)| case_gather::<f64>(&cuda, r, l, n, s),
    );
}

// ----------------------------------------------------------------- im2col etc.

#[allow(clippy::too_many_arguments)]
fn case_im2col<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let Ok(g) = conv2d_geometry(&[n, c, h, w], &[2, c, k, k], stride, pad) else {
        return Ok(()); // kernel larger than the padded input: rejected before any backend
    };
    let mut rng = Rng::new(seed);
    let x = pair::<T>(cuda, &uniform(&mut rng, n * c * h * w, -1.0, 1.0));
    let want = CPU.im2col(&x.cpu, &g).unwrap();
    let got = cuda.im2col(&x.gpu, &g).unwrap();
    close(
        &format!("im2col {g:?}"),
        &download::<T>(cuda, &got),
        &want,
        0.0,
        0.0,
    )?;
    let cols = pair::<T>(cuda, &uniform(&mut rng, want.len(), -1.0, 1.0));
    let want = CPU.col2im(&cols.cpu, &g).unwrap();
    let got = cuda.col2im(&cols.gpu, &g).unwrap();
    let (rtol, atol) = tol::<T>();
    close(
        &format!("col2im {g:?}"),
        &download::<T>(cuda, &got),
        &want,
        rtol,
        atol,
    )
}

#[test]
fn im2col_and_col2im_match_cpu() {
    let Some(cuda) = cuda() else { return };
    let strat = (
        1usize..4,
        1usize..5,
        1usize..13,
        1usize..13,
        1usize..5,
        1usize..4,
        0usize..3,
        any::<u64>(),
    );
    both(
        64,
        strat,
        |(n, c, h, w, k, st, p, s)| case_im2col::<f32>(&cuda, n, c, h, w, k, st, p, s),
        |(n, c, h, w, k, st, p, s)| case_im2col::<f64>(&cuda, n, c, h, w, k, st, p, s),
    );
    // The cnn encoder's second conv on audio at batch 64.
    case_im2col::<f32>(&cuda, 64, 32, 20, 31, 3, 1, 1, 11).unwrap();
}

// --------------------------------------------------------------------- pooling

fn case_pool<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    g: Pool2dGeometry,
    ties: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let n_in = g.planes * g.h * g.w;
    // Small integers make ties common: the first maximum must win on both.
    let xv: Vec<f64> = if ties {
        (0..n_in).map(|_| rng.below(3) as f64).collect()
    } else {
        uniform(&mut rng, n_in, -1.0, 1.0)
    };
    let x = pair::<T>(cuda, &xv);
    let (y_c, a_c) = CPU.max_pool2d(&x.cpu, &g).unwrap();
    let (y_g, a_g) = cuda.max_pool2d(&x.gpu, &g).unwrap();
    close("max_pool2d", &download::<T>(cuda, &y_g), &y_c, 0.0, 0.0)?;
    let a_gv = Backend::<T>::index_to_vec(cuda, &a_g).unwrap();
    prop_assert_eq!(&a_gv, &a_c, "max_pool2d argmax");
    let n_out = g.planes * g.oh * g.ow;
    let gr = pair::<T>(cuda, &uniform(&mut rng, n_out, -1.0, 1.0));
    let (rtol, atol) = tol::<T>();
    let d_c = CPU.max_pool2d_backward(&gr.cpu, &a_c, &g).unwrap();
    let d_g = cuda.max_pool2d_backward(&gr.gpu, &a_g, &g).unwrap();
    close(
        "max_pool2d_backward",
        &download::<T>(cuda, &d_g),
        &d_c,
        rtol,
        atol,
    )?;
    let y_c = CPU.avg_pool2d(&x.cpu, &g).unwrap();
    let y_g = cuda.avg_pool2d(&x.gpu, &g).unwrap();
    close("avg_pool2d", &download::<T>(cuda, &y_g), &y_c, rtol, atol)?;
    let d_c = CPU.avg_pool2d_backward(&gr.cpu, &g).unwrap();
    let d_g = cuda.avg_pool2d_backward(&gr.gpu, &g).unwrap();
    close(
        "avg_pool2d_backward",
        &download::<T>(cuda, &d_g),
        &d_c,
        rtol,
        atol,
    )
}

fn pool_strategy() -> impl Strategy<Value = (Pool2dGeometry, bool, u64)> + Clone {
    (
        1usize..6,
        1usize..14,
        1usize..14,
        1usize..4,
        1usize..4,
        1usize..4,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_filter_map(
            "kernel fits",
            |(planes, h, w, kh, kw, stride, ties, seed)| {
                let g =
                    pool2d_geometry("max_pool2d", &[1, planes, h, w], kh, kw, stride, 0).ok()?;
                Some((g, ties, seed))
            },
        )
}

#[test]
fn pooling_and_backward_match_cpu() {
    let Some(cuda) = cuda() else { return };
    both(
        64,
        pool_strategy(),
        |(g, t, s)| case_pool::<f32>(&cuda, g, t, s),
        |(g, t, s)| case_pool::<f64>(&cuda, g, t, s),
    );
}

// ------------------------------------------------------------------ optimizers

fn case_optim<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    n: usize,
    momentum: bool,
    nesterov: bool,
    decoupled: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let (rtol, atol) = tol::<T>();
    let p0 = uniform(&mut rng, n, -1.0, 1.0);
    let mut p = pair::<T>(cuda, &p0);
    let mut v = pair::<T>(cuda, &vec![0.0; n]);
    let sgd = SgdConfig {
        lr: 0.1,
        momentum: if momentum { 0.9 } else { 0.0 },
        weight_decay: 1e-3,
        nesterov,
    };
    for _ in 0..3 {
        let g = pair::<T>(cuda, &uniform(&mut rng, n, -1.0, 1.0));
        if momentum {
            CPU.sgd_step(&mut p.cpu, &g.cpu, Some(&mut v.cpu), &sgd)
                .unwrap();
            cuda.sgd_step(&mut p.gpu, &g.gpu, Some(&mut v.gpu), &sgd)
                .unwrap();
        } else {
            CPU.sgd_step(&mut p.cpu, &g.cpu, None, &sgd).unwrap();
            cuda.sgd_step(&mut p.gpu, &g.gpu, None, &sgd).unwrap();
        }
    }
    close(
        "sgd param",
        &download::<T>(cuda, &p.gpu),
        &p.cpu,
        rtol,
        atol,
    )?;
    close(
        "sgd velocity",
        &download::<T>(cuda, &v.gpu),
        &v.cpu,
        rtol,
        atol,
    )?;
    let mut p = pair::<T>(cuda, &p0);
    let mut m = pair::<T>(cuda, &vec![0.0; n]);
    let mut vv = pair::<T>(cuda, &vec![0.0; n]);
    let adam = AdamConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-2,
        decoupled,
    };
    for step in 1..=4 {
        let g = pair::<T>(cuda, &uniform(&mut rng, n, -1.0, 1.0));
        CPU.adam_step(&mut p.cpu, &g.cpu, &mut m.cpu, &mut vv.cpu, &adam, step)
            .unwrap();
        cuda.adam_step(&mut p.gpu, &g.gpu, &mut m.gpu, &mut vv.gpu, &adam, step)
            .unwrap();
    }
    close(
        "adam param",
        &download::<T>(cuda, &p.gpu),
        &p.cpu,
        rtol,
        atol,
    )?;
    close("adam m", &download::<T>(cuda, &m.gpu), &m.cpu, rtol, atol)?;
    close("adam v", &download::<T>(cuda, &vv.gpu), &vv.cpu, rtol, atol)
}

#[test]
fn optimizer_steps_match_cpu() {
    let Some(cuda) = cuda() else { return };
    let strat = (
        0usize..5000,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    both(
        32,
        strat,
        |(n, m, ne, d, s)| case_optim::<f32>(&cuda, n, m, ne, d, s),
        |(n, m, ne, d, s)| case_optim::<f64>(&cuda, n, m, ne, d, s),
    );
}

// ----------------------------------------------------------------- rls (small)

fn case_rls<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    s: usize,
    c: usize,
    with_grad: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let mut p0 = vec![0.0; s * s];
    for i in 0..s {
        p0[i * s + i] = 1.0;
    }
    let mut p = pair::<T>(cuda, &p0);
    let (rtol, atol) = tol::<T>();
    for step in 0..3 {
        let r = pair::<T>(cuda, &uniform(&mut rng, s, 0.0, 1.0));
        let g = pair::<T>(cuda, &uniform(&mut rng, c * s, -1.0, 1.0));
        let want = CPU
            .rls_project(&mut p.cpu, &r.cpu, with_grad.then_some(&g.cpu), c, s, 2.0)
            .unwrap();
        let got = cuda
            .rls_project(&mut p.gpu, &r.gpu, with_grad.then_some(&g.gpu), c, s, 2.0)
            .unwrap();
        prop_assert_eq!(want.is_some(), got.is_some());
        if let (Some(w), Some(gt)) = (want, got) {
            close(
                &format!("rls projected step {step}"),
                &download::<T>(cuda, &gt),
                &w,
                rtol,
                atol * 10.0,
            )?;
        }
        close(
            &format!("rls P step {step}"),
            &download::<T>(cuda, &p.gpu),
            &p.cpu,
            rtol,
            atol * 10.0,
        )?;
    }
    Ok(())
}

#[test]
fn rls_project_small_shapes_match_cpu() {
    let Some(cuda) = cuda() else { return };
    // c up to 40 crosses the 16-vectors-per-pass chunking inside the kernel.
    let strat = (1usize..70, 0usize..40, any::<bool>(), any::<u64>());
    both(
        48,
        strat,
        |(s, c, g, seed)| case_rls::<f32>(&cuda, s, c, g, seed),
        |(s, c, g, seed)| case_rls::<f64>(&cuda, s, c, g, seed),
    );
}

/// The ResNet ops whose CUDA kernels are not written yet fail with an error
/// naming the op and the backend (never a panic or a wrong result); batch
/// norm in evaluation mode and dropout are built from existing kernels and run.
#[test]
fn ops_without_cuda_kernels_name_the_op() {
    use mla_core::{BatchNormConfig, BatchNormStats, Tensor};
    let Some(cuda) = cuda() else { return };
    let t = |dims: &[usize]| {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        Tensor::<f32, Cuda>::from_slice(&cuda, &v, dims.to_vec()).unwrap()
    };
    let x = t(&[2, 3, 4, 4]);
    let (w, b) = (t(&[3]), t(&[3]));
    let stats = BatchNormStats::new(&cuda, 3).unwrap();
    let cfg = BatchNormConfig::default();
    let err = x
        .batch_norm_train(&w, &b, &stats, &cfg)
        .map(|o| o.out)
        .unwrap_err();
    assert_eq!(err.op(), Some("batch_norm"));
    assert!(
        err.to_string()
            .contains("not implemented on the cuda backend"),
        "{err}"
    );
    let err = x.max_pool2d_pad(3, 2, 1).unwrap_err();
    assert_eq!(err.op(), Some("max_pool2d"));
    assert!(err.to_string().contains("cuda"), "{err}");
    assert_eq!(
        x.batch_norm_eval(&w, &b, &stats, &cfg).unwrap().dims(),
        &[2, 3, 4, 4]
    );
    let mut rng = Rng::new(1);
    let y = x.dropout(0.5, true, &mut || rng.uniform()).unwrap();
    assert_eq!(y.dims(), &[2, 3, 4, 4]);
}
