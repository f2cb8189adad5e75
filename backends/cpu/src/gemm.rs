use mla_core::{Element, Error, GemmConfig, Result};
use rayon::prelude::*;

/// Element types the CPU backend computes in; each maps to its matrixmultiply kernel.
pub trait CpuFloat: Element {
    /// `C = A @ B` with arbitrary (row, col) strides, `C` overwritten.
    ///
    /// # Safety
    /// The pointers and strides must describe valid `m x k`, `k x n`, `m x n` matrices.
    #[allow(clippy::too_many_arguments)]
    unsafe fn mm(m: usize, k: usize, n: usize, a: *const Self, rsa: isize, csa: isize, b: *const Self, rsb: isize, csb: isize, c: *mut Self, rsc: isize, csc: isize);
}

impl CpuFloat for f32 {
    unsafe fn mm(m: usize, k: usize, n: usize, a: *const f32, rsa: isize, csa: isize, b: *const f32, rsb: isize, csb: isize, c: *mut f32, rsc: isize, csc: isize) {
        matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, csc)
    }
}

impl CpuFloat for f64 {
    unsafe fn mm(m: usize, k: usize, n: usize, a: *const f64, rsa: isize, csa: isize, b: *const f64, rsb: isize, csb: isize, c: *mut f64, rsc: isize, csc: isize) {
        matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, csc)
    }
}

/// One `op(A) @ op(B)` into `c` (row-major `m x n`).
fn gemm_one<T: CpuFloat>(cfg: &GemmConfig, a: &[T], b: &[T], c: &mut [T]) {
    let GemmConfig { m, n, k, trans_a, trans_b, .. } = *cfg;
    // Row-major [m,k] has strides (k, 1); its transpose view swaps them.
    let (rsa, csa) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    if k == 0 {
        c.iter_mut().for_each(|x| *x = T::zero());
        return;
    }
    // SAFETY: lengths checked by `gemm` below.
    unsafe { T::mm(m, k, n, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, c.as_mut_ptr(), n as isize, 1) }
}

pub(crate) fn gemm<T: CpuFloat>(cfg: &GemmConfig, a: &[T], b: &[T]) -> Result<Vec<T>> {
    let GemmConfig { batch, m, n, k, stride_a, stride_b, .. } = *cfg;
    let need = |stride: usize, len: usize| if batch == 0 { 0 } else { (batch - 1) * stride + len };
    if a.len() < need(stride_a, m * k) || b.len() < need(stride_b, k * n) {
        return Err(Error::invalid(
            "gemm",
            format!("buffers too short for batch {batch} of {m}x{k} @ {k}x{n}"),
            &[&[a.len()], &[b.len()]],
        ));
    }
    let mut c = vec![T::zero(); batch * m * n];
    if m * n == 0 {
        return Ok(c);
    }
    let one = |i: usize, ci: &mut [T]| {
        gemm_one(cfg, &a[i * stride_a..i * stride_a + m * k], &b[i * stride_b..i * stride_b + k * n], ci)
    };
    if batch > 1 && m * n * k >= 1 << 14 {
        c.par_chunks_mut(m * n).enumerate().for_each(|(i, ci)| one(i, ci));
    } else {
        c.chunks_mut(m * n).enumerate().for_each(|(i, ci)| one(i, ci));
    }
    Ok(c)
}
