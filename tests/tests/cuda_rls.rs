//! The fused RLS (HGM) kernel against the CPU reference over 1,000 successive
//! updates: projected gradients every step, P every 50 steps and at the end,
//! and P exactly symmetric throughout.

mod cuda_common;

use cuda_common::*;
use mla_core::Backend;
use mla_cpu::CpuFloat;
use mla_cuda::{Cuda, CudaFloat};
use mla_models::rng::Rng;

/// Largest `|a - b|` relative to the largest `|b|`.
fn rel_max_diff<T: CudaFloat>(a: &[T], b: &[T]) -> f64 {
    let scale = b
        .iter()
        .fold(0.0f64, |m, v| m.max(v.as_f64().abs()))
        .max(f64::MIN_POSITIVE);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x.as_f64() - y.as_f64()).abs()))
        / scale
}

/// Bitwise (f32 -> f64 is exact, so comparing the widened bits is comparing the originals).
fn assert_symmetric<T: CudaFloat>(p: &[T], s: usize, step: usize) {
    for i in 0..s {
        for j in 0..i {
            assert!(
                p[i * s + j].as_f64().to_bits() == p[j * s + i].as_f64().to_bits(),
                "step {step}: P[{i}][{j}] = {} but P[{j}][{i}] = {}",
                p[i * s + j],
                p[j * s + i]
            );
        }
    }
}

/// `tol` bounds the max-norm difference relative to the CPU's max-norm.
fn run<T: CudaFloat + CpuFloat>(
    cuda: &Cuda,
    s: usize,
    c: usize,
    alpha: f64,
    steps: usize,
    tol: f64,
) {
    let mut rng = Rng::new(s as u64 * 31 + c as u64);
    let mut eye = vec![0.0; s * s];
    for i in 0..s {
        eye[i * s + i] = 1.0;
    }
    let mut p = pair::<T>(cuda, &eye);
    for step in 0..steps {
        // Batch-mean ReLU features are non-negative, as in training.
        let r = pair::<T>(cuda, &uniform(&mut rng, s, 0.0, 1.0));
        let g = pair::<T>(cuda, &uniform(&mut rng, c * s, -1.0, 1.0));
        let want = CPU
            .rls_project(&mut p.cpu, &r.cpu, Some(&g.cpu), c, s, alpha)
            .unwrap()
            .unwrap();
        let got = cuda
            .rls_project(&mut p.gpu, &r.gpu, Some(&g.gpu), c, s, alpha)
            .unwrap()
            .unwrap();
        let got = download::<T>(cuda, &got);
        let d = rel_max_diff(&got, &want);
        assert!(d <= tol, "s={s} step {step}: projected gradient differs by {d:e} (relative to its max), tolerance {tol:e}");
        if step % 50 == 49 || step + 1 == steps {
            let pg = download::<T>(cuda, &p.gpu);
            let d = rel_max_diff(&pg, &p.cpu);
            assert!(
                d <= tol,
                "s={s} step {step}: P differs by {d:e} (relative to its max), tolerance {tol:e}"
            );
            assert_symmetric(&pg, s, step);
        }
    }
}

#[test]
fn rls_1000_updates_s128() {
    let Some(cuda) = cuda() else { return };
    run::<f32>(&cuda, 128, 10, 1.0, 1000, 2e-4);
    run::<f64>(&cuda, 128, 10, 1.0, 1000, 1e-10);
}

#[test]
fn rls_1000_updates_s512() {
    let Some(cuda) = cuda() else { return };
    run::<f32>(&cuda, 512, 10, 1.0, 1000, 2e-4);
    run::<f64>(&cuda, 512, 10, 1.0, 200, 1e-10);
}

#[test]
fn rls_odd_sizes_and_many_classes() {
    let Some(cuda) = cuda() else { return };
    // s not a multiple of 32 or of the 8 rows per block; c past one pass of 16 vectors.
    run::<f32>(&cuda, 257, 37, 10.0, 60, 2e-4);
    run::<f64>(&cuda, 77, 1, 0.5, 60, 1e-10);
}

#[test]
fn rls_vector_path_edges() {
    let Some(cuda) = cuda() else { return };
    // 16-byte-load path with s not a multiple of the 8 rows per block, a
    // single partial row group, more than one pass over the vectors (c = 20),
    // many blocks (the last-block counter), and the f64 variant (2 elements
    // per load).
    run::<f32>(&cuda, 2052, 10, 1.0, 4, 2e-4);
    run::<f32>(&cuda, 4, 3, 1.0, 50, 2e-4);
    run::<f32>(&cuda, 36, 20, 1.0, 50, 2e-4);
    run::<f64>(&cuda, 130, 10, 1.0, 50, 1e-10);
    // More tiles of columns than rows per block, and P (64 MiB) larger than L2.
    run::<f32>(&cuda, 4096, 10, 1.0, 3, 2e-4);
}

#[test]
fn rls_without_gradient_only_updates_p() {
    let Some(cuda) = cuda() else { return };
    let s = 33;
    let mut rng = Rng::new(3);
    let p0 = {
        let mut e = vec![0.0; s * s];
        for i in 0..s {
            e[i * s + i] = 1.0;
        }
        e
    };
    let mut p = pair::<f32>(&cuda, &p0);
    let r = pair::<f32>(&cuda, &uniform(&mut rng, s, 0.0, 1.0));
    assert!(CPU
        .rls_project(&mut p.cpu, &r.cpu, None, 10, s, 1.0)
        .unwrap()
        .is_none());
    assert!(cuda
        .rls_project(&mut p.gpu, &r.gpu, None, 10, s, 1.0)
        .unwrap()
        .is_none());
    assert_close("P", &download::<f32>(&cuda, &p.gpu), &p.cpu, 1e-5, 1e-6);
    // After an update with r: P_new r = P_old r * alpha / (alpha + r^T P_old r) (MLA.md); P_old = I.
    let rv = r.cpu.clone();
    let rr: f32 = rv.iter().map(|x| x * x).sum();
    let pg = download::<f32>(&cuda, &p.gpu);
    for i in 0..s {
        let pr: f32 = (0..s).map(|j| pg[i * s + j] * rv[j]).sum();
        let want = rv[i] / (1.0 + rr);
        assert!(
            (pr - want).abs() <= 1e-5 + 1e-4 * want.abs(),
            "row {i}: (P r) = {pr}, want {want}"
        );
    }
}

#[test]
fn rls_rejects_bad_arguments() {
    let Some(cuda) = cuda() else { return };
    let mut p = pair::<f32>(&cuda, &[1.0, 0.0, 0.0, 1.0]);
    let r = pair::<f32>(&cuda, &[1.0, 2.0]);
    let err = cuda
        .rls_project(&mut p.gpu, &r.gpu, None, 1, 3, 1.0)
        .unwrap_err();
    assert_eq!(err.op(), Some("rls_project"), "{err}");
    let err = cuda
        .rls_project(&mut p.gpu, &r.gpu, None, 1, 2, 0.0)
        .unwrap_err();
    assert_eq!(err.op(), Some("rls_project"), "{err}");
}
