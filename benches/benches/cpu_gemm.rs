//! f32 GEMM / GEMV through `Backend::gemm` of the CPU backend (output
//! allocation included), at the shapes of the AV-MNIST encoders and head at
//! batch 64, plus 1024^3 and a 128x128 GEMV.
//!
//! Throughput is in FLOP (criterion prints it as elem/s, so Gelem/s = GFLOP/s):
//! `2 * m * k * n`. `benches/reference/matmul_ref.py` measures numpy / torch at
//! the same shapes. Run: `cargo bench -p mla-benches --bench cpu_gemm`
//! (`RAYON_NUM_THREADS` sets the thread count; the default is every CPU).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mla_benches::values;
use mla_core::{Backend, GemmConfig};
use mla_cpu::Cpu;
use std::time::Duration;

/// `(name, m, k, n, trans_a, trans_b)`: `C[m, n] = op(A) op(B)` with `op(A)` `m x k`.
/// For each linear layer `in -> out` at batch 64, the variants a training step can
/// issue: forward `X W` / `X W^T` (W stored `[in, out]` / `[out, in]`, the latter is
/// what mla-models uses), the weight gradient `X^T dY` / `dY^T X`, and the input
/// gradient `dY W^T` / `dY W`.
const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("mlp_fc1/fwd_xw", 64, 784, 256, false, false),
    ("mlp_fc1/fwd_xwt", 64, 784, 256, false, true),
    ("mlp_fc1/dw_xtdy", 784, 64, 256, true, false),
    ("mlp_fc1/dw_dytx", 256, 64, 784, true, false),
    ("mlp_fc1/dx_dywt", 64, 256, 784, false, true),
    ("mlp_fc1/dx_dyw", 64, 256, 784, false, false),
    ("cnn_img_fc/fwd_xw", 64, 3136, 128, false, false),
    ("cnn_img_fc/fwd_xwt", 64, 3136, 128, false, true),
    ("cnn_img_fc/dw_xtdy", 3136, 64, 128, true, false),
    ("cnn_img_fc/dw_dytx", 128, 64, 3136, true, false),
    ("cnn_img_fc/dx_dywt", 64, 128, 3136, false, true),
    ("cnn_img_fc/dx_dyw", 64, 128, 3136, false, false),
    ("cnn_aud_fc/fwd_xw", 64, 9600, 128, false, false),
    ("cnn_aud_fc/fwd_xwt", 64, 9600, 128, false, true),
    ("cnn_aud_fc/dw_xtdy", 9600, 64, 128, true, false),
    ("cnn_aud_fc/dw_dytx", 128, 64, 9600, true, false),
    ("cnn_aud_fc/dx_dywt", 64, 128, 9600, false, true),
    ("cnn_aud_fc/dx_dyw", 64, 128, 9600, false, false),
    ("head/fwd_xw", 64, 128, 10, false, false),
    ("head/fwd_xwt", 64, 128, 10, false, true),
    ("head/dw_xtdy", 128, 64, 10, true, false),
    ("head/dw_dytx", 10, 64, 128, true, false),
    ("head/dx_dywt", 64, 10, 128, false, true),
    ("head/dx_dyw", 64, 10, 128, false, false),
    ("square/1024", 1024, 1024, 1024, false, false),
    ("gemv/128x128_ax", 128, 128, 1, false, false),
    ("gemv/128x128_atx", 128, 128, 1, true, false),
];

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30);
    for &(name, m, k, n, ta, tb) in SHAPES {
        let a = values(1, m * k, 1.0);
        let b = values(2, k * n, 1.0);
        let cfg = GemmConfig {
            batch: 1,
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            stride_a: 0,
            stride_b: 0,
        };
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| Backend::<f32>::gemm(&Cpu, &cfg, &a, &b).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
