//! Device-level behaviour that needs a process of its own (the allocator's
//! totals and the device error word are shared by every test in a process):
//! initialisation errors, errors found on the device, flat memory over steps.

mod cuda_common;

use cuda_common::*;
use mla_core::{Backend, Indices, Pool2dGeometry, Tape, Tensor};
use mla_cuda::Cuda;
use mla_models::rng::Rng;

#[test]
fn device_behaviour() {
    // Runs everywhere: asking never panics, and a missing device is an error value.
    let available = mla_cuda::is_available();
    assert_eq!(available, Cuda::new(0).is_ok());
    let err = Cuda::new(4096).unwrap_err();
    assert_eq!(err.op(), Some("cuda_init"), "{err}");
    assert!(matches!(err, mla_core::Error::Backend { .. }), "{err}");

    let Some(cuda) = cuda() else { return };
    eprintln!(
        "device: {} ({} MiB)",
        cuda.device_name(),
        cuda.total_memory() >> 20
    );
    errors_found_on_the_device_are_reported(&cuda);
    memory_stays_flat_over_steps(&cuda);
    uploads_round_trip_through_staging(&cuda);
    device_time_is_measured(&cuda);
}

/// Uploads go through pinned chunks that are reused once their copy is done:
/// many sizes back to back (more than there are chunks, so chunks are waited
/// for and regrown), the host buffer overwritten right after each upload, one
/// upload past the staging limit (copied from pageable memory), and kernels
/// queued in between; every buffer must hold exactly what was uploaded.
fn uploads_round_trip_through_staging(cuda: &Cuda) {
    let mut rng = Rng::new(11);
    let mut sizes: Vec<usize> = (0..40)
        .map(|i| 1 + (rng.uniform() * 300_000.0) as usize * (i % 3))
        .collect();
    sizes.push((64 << 20) / 4 + 3);
    let mut host = Vec::new();
    let mut uploaded = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let v: Vec<f32> = (0..n).map(|k| (i * 1_000_003 + k) as f32).collect();
        let b = cuda.from_slice(&v).unwrap();
        // A kernel on the stream between uploads.
        let doubled =
            Backend::<f32>::unary(cuda, mla_core::UnaryOp::Affine { mul: 2.0, add: 0.0 }, &b)
                .unwrap();
        let mut v = v;
        let want = v.clone();
        v.iter_mut().for_each(|x| *x = -1.0);
        host.push(want);
        uploaded.push((b, doubled));
    }
    for (i, ((b, doubled), want)) in uploaded.iter().zip(&host).enumerate() {
        let got = download::<f32>(cuda, b);
        assert!(
            got == *want,
            "upload {i} ({} elements) came back different",
            want.len()
        );
        let d = download::<f32>(cuda, doubled);
        assert!(
            d.iter().zip(want).all(|(x, y)| *x == 2.0 * y),
            "upload {i}: the kernel queued after it read different data"
        );
    }
}

fn device_time_is_measured(cuda: &Cuda) {
    let x = cuda.from_slice(&vec![1.0f32; 1 << 20]).unwrap();
    let (y, t) = cuda
        .time_on_device(|| Backend::<f32>::unary(cuda, mla_core::UnaryOp::Exp, &x))
        .unwrap();
    assert!(
        t > std::time::Duration::ZERO && t < std::time::Duration::from_secs(5),
        "{t:?}"
    );
    let y = download::<f32>(cuda, &y);
    assert!(y.iter().all(|v| (*v - std::f32::consts::E).abs() < 1e-6));
    // Not profiling unless MLA_CUDA_PROFILE is set: no report then.
    if std::env::var_os("MLA_CUDA_PROFILE").is_none() {
        assert!(cuda.take_profile().unwrap().is_none());
    }
}

fn errors_found_on_the_device_are_reported(cuda: &Cuda) {
    let x = pair::<f32>(cuda, &[1.0, 2.0, 3.0, 4.0]);
    let (_, bad) = indices(cuda, &[0, 7]);
    // Queued without complaint (the backend cannot know yet) ...
    let out = cuda.gather_rows(&x.gpu, &bad, 2).unwrap();
    // ... reported at the next synchronisation, naming the op; then cleared.
    let err = Backend::<f32>::synchronize(cuda).unwrap_err();
    assert_eq!(err.op(), Some("gather_rows"), "{err}");
    Backend::<f32>::synchronize(cuda).unwrap();
    assert_eq!(download::<f32>(cuda, &out)[..2], [1.0, 2.0]);

    let logits = pair::<f32>(cuda, &[0.5, 1.5, -1.0, 0.0]);
    let (_, labels) = indices(cuda, &[1, 2]);
    let (loss, _) = cuda.cross_entropy(&logits.gpu, &labels, 2, 2).unwrap();
    let err = Backend::<f32>::to_vec(cuda, &loss).unwrap_err();
    assert_eq!(err.op(), Some("cross_entropy"), "{err}");

    let g = Pool2dGeometry {
        planes: 1,
        h: 2,
        w: 4,
        kh: 2,
        kw: 2,
        stride: 2,
        pad: 0,
        oh: 1,
        ow: 2,
    };
    let grad = pair::<f32>(cuda, &[1.0, 1.0]);
    let (_, argmax) = indices(cuda, &[0, 1]); // the second window starts at column 2
    cuda.max_pool2d_backward(&grad.gpu, &argmax, &g).unwrap();
    let err = Backend::<f32>::synchronize(cuda).unwrap_err();
    assert_eq!(err.op(), Some("max_pool2d_backward"), "{err}");
    Backend::<f32>::synchronize(cuda).unwrap();
}

/// A training-like step (conv, pool, linear, cross-entropy, backward, SGD)
/// repeated: after the first steps the allocator serves every request from
/// its free lists, so the device footprint stops growing.
fn memory_stays_flat_over_steps(cuda: &Cuda) {
    let mut rng = Rng::new(3);
    let w1 = Tensor::<f32, Cuda>::from_slice(
        cuda,
        &cast::<f32>(&uniform(&mut rng, 8 * 3 * 3, -0.5, 0.5)),
        [8, 1, 3, 3],
    )
    .unwrap();
    let wh = Tensor::<f32, Cuda>::from_slice(
        cuda,
        &cast::<f32>(&uniform(&mut rng, 10 * 8 * 14 * 14, -0.05, 0.05)),
        [10, 8 * 14 * 14],
    )
    .unwrap();
    let mut params = vec![w1, wh];
    let step = |params: &mut Vec<Tensor<f32, Cuda>>, rng: &mut Rng| {
        let x = Tensor::<f32, Cuda>::from_slice(
            cuda,
            &cast::<f32>(&uniform(rng, 32 * 28 * 28, 0.0, 1.0)),
            [32, 1, 28, 28],
        )
        .unwrap();
        let labels: Vec<u32> = (0..32).map(|_| rng.below(10) as u32).collect();
        let labels = Indices::new(cuda, &labels).unwrap();
        let tape = Tape::new(cuda);
        let vars: Vec<_> = params.iter().map(|p| tape.var(p.clone())).collect();
        let h = tape
            .constant(x)
            .conv2d(&vars[0], 1, 1)
            .unwrap()
            .relu()
            .unwrap()
            .max_pool2d(2, 2)
            .unwrap()
            .flatten()
            .unwrap();
        let loss = h
            .matmul_t(&vars[1], false, true)
            .unwrap()
            .cross_entropy(&labels)
            .unwrap();
        let grads = tape.backward(&loss).unwrap();
        let gs: Vec<_> = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
        drop(grads);
        drop(vars);
        drop(loss);
        let cfg = mla_core::SgdConfig {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        for (p, g) in params.iter_mut().zip(&gs) {
            cuda.sgd_step(p.storage_mut().unwrap(), g.storage(), None, &cfg)
                .unwrap();
        }
    };
    for _ in 0..3 {
        step(&mut params, &mut rng);
    }
    Backend::<f32>::synchronize(cuda).unwrap();
    let before = cuda.memory_stats();
    for _ in 0..30 {
        step(&mut params, &mut rng);
    }
    Backend::<f32>::synchronize(cuda).unwrap();
    let after = cuda.memory_stats();
    eprintln!("allocator after 3 steps: {before:?}; after 33: {after:?}");
    assert_eq!(
        after.live_bytes + after.cached_bytes,
        before.live_bytes + before.cached_bytes,
        "device footprint grew"
    );
    assert_eq!(
        after.live_bytes, before.live_bytes,
        "live bytes grew: something leaks across steps"
    );
}
