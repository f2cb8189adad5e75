//! Shared by the `cuda_*` test files: device lookup with a printed skip
//! reason, seeded random data, and CPU-vs-CUDA comparisons.
#![allow(dead_code)]

use mla_core::{Backend, Element};
use mla_cpu::Cpu;
use mla_cuda::{Cuda, CudaFloat};
use mla_models::rng::Rng;

/// The CUDA device, or `None` after printing why the test is skipped.
pub fn cuda() -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(c) => Some(c),
        Err(err) => {
            eprintln!("skipping: no CUDA device: {err}");
            None
        }
    }
}

pub fn uniform(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

pub fn cast<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::lit(x)).collect()
}

/// Tolerances per element type: (relative, absolute).
pub fn tol<T: Element>() -> (f64, f64) {
    match T::DTYPE {
        mla_core::DType::F32 => (1e-4, 1e-5),
        mla_core::DType::F64 => (1e-11, 1e-12),
    }
}

/// `|got - want| <= atol + rtol * |want|` everywhere (NaN must meet NaN).
pub fn check_close<T: Element>(
    what: &str,
    got: &[T],
    want: &[T],
    rtol: f64,
    atol: f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.as_f64(), w.as_f64());
        if g.is_nan() && w.is_nan() {
            continue;
        }
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_infinite() && g == w);
        if !ok {
            return Err(format!(
                "{what}: element {i} differs: cuda {g} vs cpu {w} (of {})",
                got.len()
            ));
        }
    }
    Ok(())
}

pub fn assert_close<T: Element>(what: &str, got: &[T], want: &[T], rtol: f64, atol: f64) {
    if let Err(e) = check_close(what, got, want, rtol, atol) {
        panic!("{e}");
    }
}

/// A host buffer on both backends.
pub struct Pair<T: CudaFloat + mla_cpu::CpuFloat> {
    pub cpu: Vec<T>,
    pub gpu: <Cuda as Backend<T>>::Storage,
}

pub fn pair<T: CudaFloat + mla_cpu::CpuFloat>(cuda: &Cuda, v: &[f64]) -> Pair<T> {
    let cpu: Vec<T> = cast(v);
    let gpu = Backend::<T>::from_slice(cuda, &cpu).expect("upload");
    Pair { cpu, gpu }
}

pub fn download<T: CudaFloat>(cuda: &Cuda, s: &<Cuda as Backend<T>>::Storage) -> Vec<T> {
    Backend::<T>::to_vec(cuda, s).expect("download")
}

pub fn indices(cuda: &Cuda, idx: &[u32]) -> (Vec<u32>, <Cuda as Backend<f32>>::Index) {
    (
        idx.to_vec(),
        Backend::<f32>::index_from_slice(cuda, idx).expect("upload indices"),
    )
}

pub const CPU: Cpu = Cpu;
