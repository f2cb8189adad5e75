//! CPU and CUDA side by side: GEMM at the encoder shapes, forward + backward
//! of the `cnn` encoder's conv stack at batch 64, the fused RLS (HGM) update,
//! and one full MLA training step of the AV-MNIST `cnn` model at batch 64 and
//! 512. CUDA timings synchronise the device inside the timed closure, except
//! the `cuda_device_*` RLS ids: device time between CUDA events.
//! Without a CUDA device the CUDA half is skipped with a message.
//!
//! `cargo bench -p mla-benches --bench backends` (add `-- cuda` for the GPU half only).

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use mla_core::{Backend, GemmConfig, Tape, Tensor};
use mla_cpu::Cpu;
use mla_cuda::Cuda;
use mla_models::rng::Rng;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

fn cuda() -> Option<&'static Cuda> {
    static DEV: OnceLock<Option<Cuda>> = OnceLock::new();
    DEV.get_or_init(|| match Cuda::new(0) {
        Ok(c) => {
            let info = c.info();
            eprintln!(
                "CUDA device: {} (sm_{}{}, {} SMs, {} MiB, L2 {} KiB, peak DRAM bandwidth {})",
                info.name,
                info.compute_capability.0,
                info.compute_capability.1,
                info.sm_count,
                info.total_memory >> 20,
                info.l2_bytes.map_or(0, |b| b >> 10),
                info.peak_bandwidth()
                    .map_or("unknown".into(), |b| format!("{:.0} GB/s", b / 1e9)),
            );
            c.compile_kernels::<f32>().expect("kernels compile");
            Some(c)
        }
        Err(e) => {
            eprintln!("skipping the CUDA benchmarks: no CUDA device: {e}");
            None
        }
    })
    .as_ref()
}

fn random(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| lo + (hi - lo) * rng.uniform() as f32)
        .collect()
}

/// Times `f` on `backend`, synchronising inside the timed closure.
fn bench_on<B: Backend<f32>, R>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: String,
    backend: &B,
    mut f: impl FnMut() -> R,
) {
    g.bench_function(id, |b| {
        b.iter(|| {
            let out = f();
            backend.synchronize().expect("synchronize");
            black_box(out)
        })
    });
}

// ------------------------------------------------------------------------ GEMM

/// `x [m, k] @ W^T` with `W [n, k]`: the linear layers of the encoders and the head.
fn gemm_case<B: Backend<f32>>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    backend: &B,
    (m, k, n): (usize, usize, usize),
) {
    let mut rng = Rng::new(1);
    let a = backend
        .from_slice(&random(&mut rng, m * k, -1.0, 1.0))
        .unwrap();
    let w = backend
        .from_slice(&random(&mut rng, n * k, -1.0, 1.0))
        .unwrap();
    let cfg = GemmConfig {
        batch: 1,
        m,
        n,
        k,
        trans_a: false,
        trans_b: true,
        stride_a: m * k,
        stride_b: n * k,
    };
    bench_on(g, format!("{name}/{m}x{k}x{n}"), backend, || {
        backend.gemm(&cfg, &a, &w).unwrap()
    });
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for shape in [
        (64, 784, 256),
        (64, 3136, 128),
        (64, 9600, 128),
        (64, 128, 10),
    ] {
        g.throughput(Throughput::Elements(
            (2 * shape.0 * shape.1 * shape.2) as u64,
        ));
        gemm_case(&mut g, "cpu", &Cpu, shape);
        if let Some(cuda) = cuda() {
            gemm_case(&mut g, "cuda", cuda, shape);
        }
    }
    g.finish();
}

// ------------------------------------------------------------ cnn encoder convs

/// conv3x3(1->32, pad 1), ReLU, maxpool 2, conv3x3(32->64, pad 1), ReLU,
/// maxpool 2, then backward from the sum: the conv part of the `cnn` encoder.
fn conv_stack<B: Backend<f32>>(
    backend: &B,
    x: &Tensor<f32, B>,
    w1: &Tensor<f32, B>,
    w2: &Tensor<f32, B>,
) -> Vec<Tensor<f32, B>> {
    let tape = Tape::new(backend);
    let (x, w1v, w2v) = (
        tape.constant(x.clone()),
        tape.var(w1.clone()),
        tape.var(w2.clone()),
    );
    let h = x
        .conv2d(&w1v, 1, 1)
        .unwrap()
        .relu()
        .unwrap()
        .max_pool2d(2, 2)
        .unwrap();
    let h = h
        .conv2d(&w2v, 1, 1)
        .unwrap()
        .relu()
        .unwrap()
        .max_pool2d(2, 2)
        .unwrap();
    let loss = h.sum_all().unwrap();
    let grads = tape.backward(&loss).unwrap();
    vec![
        grads.get(&w1v).unwrap().clone(),
        grads.get(&w2v).unwrap().clone(),
    ]
}

fn conv_case<B: Backend<f32>>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    backend: &B,
    (h, w): (usize, usize),
    what: &str,
) {
    let mut rng = Rng::new(2);
    let x = Tensor::from_slice(
        backend,
        &random(&mut rng, 64 * h * w, 0.0, 1.0),
        [64, 1, h, w],
    )
    .unwrap();
    let w1 =
        Tensor::from_slice(backend, &random(&mut rng, 32 * 9, -0.3, 0.3), [32, 1, 3, 3]).unwrap();
    let w2 = Tensor::from_slice(
        backend,
        &random(&mut rng, 64 * 32 * 9, -0.06, 0.06),
        [64, 32, 3, 3],
    )
    .unwrap();
    bench_on(g, format!("{name}/{what}_{h}x{w}"), backend, || {
        conv_stack(backend, &x, &w1, &w2)
    });
}

fn cnn_convs(c: &mut Criterion) {
    let mut g = c.benchmark_group("cnn_convs_fwd_bwd_b64");
    // Flat sampling: the CPU side takes tens of milliseconds per iteration.
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat);
    for (size, what) in [((28, 28), "image"), ((40, 63), "audio")] {
        conv_case(&mut g, "cpu", &Cpu, size, what);
        if let Some(cuda) = cuda() {
            conv_case(&mut g, "cuda", cuda, size, what);
        }
    }
    g.finish();
}

// ------------------------------------------------------------------------- RLS

/// Classes (rows of the head gradient) in the RLS benchmarks.
const RLS_CLASSES: usize = 10;

/// P = I (s x s), a non-negative r and a random head gradient, on `backend`.
fn rls_operands<B: Backend<f32>>(backend: &B, s: usize) -> (B::Storage, B::Storage, B::Storage) {
    let mut rng = Rng::new(3);
    let mut eye = vec![0.0f32; s * s];
    for i in 0..s {
        eye[i * s + i] = 1.0;
    }
    let p = backend.from_slice(&eye).unwrap();
    let r = backend.from_slice(&random(&mut rng, s, 0.0, 1.0)).unwrap();
    let gw = backend
        .from_slice(&random(&mut rng, RLS_CLASSES * s, -1.0, 1.0))
        .unwrap();
    (p, r, gw)
}

fn rls_case<B: Backend<f32>>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    backend: &B,
    s: usize,
) {
    let c = RLS_CLASSES;
    let (mut p, r, gw) = rls_operands(backend, s);
    // A large alpha keeps P well away from zero however many iterations run.
    bench_on(g, format!("{name}/s{s}_c{c}"), backend, || {
        backend
            .rls_project(&mut p, &r, Some(&gw), c, s, 1e6)
            .unwrap()
    });
}

/// Device time of the update alone (CUDA events around it, no host
/// synchronisation inside the span). `cold`: a memset of twice the L2 size
/// runs before each update, outside the span, so P comes from DRAM as it does
/// in a training step, where activations pass through L2 between updates.
fn rls_cuda_device(g: &mut BenchmarkGroup<'_, WallTime>, cuda: &Cuda, s: usize, cold: bool) {
    let c = RLS_CLASSES;
    let (mut p, r, gw) = rls_operands(cuda, s);
    let l2 = cuda.info().l2_bytes.unwrap_or(64 << 20) as usize;
    let id = format!(
        "cuda_device_{}/s{s}_c{c}",
        if cold { "cold_l2" } else { "hot_l2" }
    );
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if cold {
                    drop(Backend::<f32>::zeros(cuda, 2 * l2 / 4).unwrap());
                }
                let (_, t) = cuda
                    .time_on_device(|| cuda.rls_project(&mut p, &r, Some(&gw), c, s, 1e6))
                    .unwrap();
                total += t;
            }
            total
        })
    });
}

fn rls(c: &mut Criterion) {
    let mut g = c.benchmark_group("rls_project");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat);
    for s in [128, 512, 2048] {
        // Bytes of P read and written once: the memory-bound floor.
        g.throughput(Throughput::Bytes((2 * s * s * 4) as u64));
        rls_case(&mut g, "cpu", &Cpu, s);
        if let Some(cuda) = cuda() {
            rls_case(&mut g, "cuda", cuda, s);
            rls_cuda_device(&mut g, cuda, s, true);
            rls_cuda_device(&mut g, cuda, s, false);
        }
    }
    g.finish();
}

/// Device-to-device copy of 256 MiB: the bandwidth the RLS update is held against.
fn bandwidth(c: &mut Criterion) {
    let Some(cuda) = cuda() else { return };
    let n = 64 << 20;
    let src = Backend::<f32>::zeros(cuda, n).unwrap();
    let mut dst = Backend::<f32>::zeros(cuda, n).unwrap();
    let mut g = c.benchmark_group("bandwidth");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    g.throughput(Throughput::Bytes((2 * n * 4) as u64));
    g.bench_function("cuda/d2d_copy_256MiB", |b| {
        b.iter(|| {
            cuda.copy_strided(&mut dst, 0, &[1], &src, 0, &[1], &[n])
                .unwrap();
            Backend::<f32>::synchronize(cuda).unwrap();
        })
    });
    g.finish();
}

// ------------------------------------------------------------- full MLA step

/// A throwaway mla-dataset/1 directory with AV-MNIST shapes (random content:
/// timing only), removed on drop.
struct BenchData(std::path::PathBuf);

impl BenchData {
    fn new(train: usize) -> BenchData {
        use mla_models::data::npy::write_npy;
        let dir =
            std::env::temp_dir().join(format!("mla-bench-avmnist-{}-{train}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = train + 2; // one validation and one test sample keep evaluation negligible
        let mut rng = Rng::new(4);
        let labels: Vec<i64> = (0..n).map(|i| (i % 10) as i64).collect();
        let split: Vec<u8> = (0..n)
            .map(|i| {
                if i < train {
                    0
                } else if i == train {
                    1
                } else {
                    2
                }
            })
            .collect();
        write_npy(dir.join("labels.npy"), &[n], &labels).unwrap();
        write_npy(dir.join("split.npy"), &[n], &split).unwrap();
        write_npy(
            dir.join("image.npy"),
            &[n, 1, 28, 28],
            &random(&mut rng, n * 28 * 28, 0.0, 1.0),
        )
        .unwrap();
        write_npy(
            dir.join("audio.npy"),
            &[n, 1, 40, 63],
            &random(&mut rng, n * 40 * 63, -2.0, 2.0),
        )
        .unwrap();
        let manifest = format!(
            r#"{{"format": "mla-dataset/1", "name": "bench", "num_classes": 10,
                "class_names": ["0","1","2","3","4","5","6","7","8","9"],
                "labels": "labels.npy", "split": "split.npy",
                "modalities": [{{"name": "image", "data": "image.npy"}}, {{"name": "audio", "data": "audio.npy"}}]}}"#
        );
        std::fs::write(dir.join("dataset.json"), manifest).unwrap();
        BenchData(dir)
    }
}

impl Drop for BenchData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Time per MLA step (one batch through each modality, HGM on, SGD with
/// momentum), from the trainer's own train-loop clock: batch loading and
/// upload included, evaluation excluded; the loop reads the loss at its end,
/// so queued device work is inside the measurement.
fn mla_case<B: Backend<f32>>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    backend: &B,
    data: &BenchData,
    batch: usize,
    steps: usize,
) {
    use mla_models::trainer::{MethodKind, Silent, TrainConfig, Trainer};
    let ds = std::sync::Arc::new(mla_models::data::Dataset::open(&data.0).unwrap());
    let cfg = TrainConfig {
        method: MethodKind::Mla,
        epochs: usize::MAX,
        batch_size: batch,
        eval_batch_size: 2,
        train_limit: Some(batch * steps),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(backend.clone(), ds, cfg).unwrap();
    g.bench_function(format!("{name}/batch{batch}"), |b| {
        b.iter_custom(|iters| {
            let (mut secs, mut done) = (0.0, 0u64);
            while done < iters {
                let rec = t.run_epoch(&mut Silent).unwrap();
                secs += rec.train_seconds;
                done += steps as u64;
            }
            Duration::from_secs_f64(secs * iters as f64 / done as f64)
        })
    });
}

fn mla_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("mla_step_avmnist_cnn");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat);
    for (batch, steps) in [(64, 8), (512, 2)] {
        let data = BenchData::new(batch * steps);
        mla_case(&mut g, "cpu", &Cpu, &data, batch, steps);
        if let Some(cuda) = cuda() {
            mla_case(&mut g, "cuda", cuda, &data, batch, steps);
        }
    }
    g.finish();
}

criterion_group!(benches, gemm, cnn_convs, rls, bandwidth, mla_step);
criterion_main!(benches);
