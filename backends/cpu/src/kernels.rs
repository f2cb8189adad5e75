//! The f32 kernels with the instruction set chosen per call, for tests and
//! benchmarks that must exercise every path the machine has. The backend
//! itself calls the same code with [`crate::active_isa`].
//!
//! Matrices are dense row-major slices. Slice lengths are checked (a panic
//! names the kernel and the sizes), as is the availability of `isa`.

use crate::gemm::tiled::{self, Kernel, Plan, View};
use crate::simd::Isa;
use mla_core::GemmConfig;

fn need(kernel: &str, what: &str, have: usize, want: usize) {
    assert!(
        have >= want,
        "{kernel}: {what} has {have} elements, needs {want}"
    );
}

/// `y = A x` (`trans == false`, A is `m x k`, x has `k`, y has `m` elements) or
/// `y = A^T x` (`trans == true`, x has `m`, y has `k` elements).
pub fn gemv(isa: Isa, trans: bool, m: usize, k: usize, a: &[f32], x: &[f32], y: &mut [f32]) {
    let kern = Kernel::for_isa(isa);
    need("gemv", "A", a.len(), m * k);
    let (xl, yl) = if trans { (m, k) } else { (k, m) };
    need("gemv", "x", x.len(), xl);
    need("gemv", "y", y.len(), yl);
    // SAFETY: lengths checked above; `y` is a distinct &mut.
    unsafe {
        if trans {
            (kern.gemv_t)(m, k, a.as_ptr(), k, x.as_ptr(), y.as_mut_ptr())
        } else {
            (kern.gemv_n)(m, k, a.as_ptr(), k, x.as_ptr(), y.as_mut_ptr())
        }
    }
}

/// Rank-1 update `A += alpha * x y^T` of an `m x n` matrix. Each element is
/// `a + alpha * (x[i] * y[j])`, so with `x == y` a symmetric `A` stays exactly symmetric.
pub fn ger(isa: Isa, m: usize, n: usize, alpha: f32, x: &[f32], y: &[f32], a: &mut [f32]) {
    let kern = Kernel::for_isa(isa);
    need("ger", "A", a.len(), m * n);
    need("ger", "x", x.len(), m);
    need("ger", "y", y.len(), n);
    // SAFETY: lengths checked above; `a` is a distinct &mut.
    unsafe { (kern.ger)(m, n, alpha, x.as_ptr(), y.as_ptr(), a.as_mut_ptr(), n) }
}

/// Single-threaded `C = op(A) op(B)` through the tiled kernels only (never
/// GEMV, never matrixmultiply): `op(A)` is `m x k`, stored `[m, k]` or, when
/// `trans_a`, `[k, m]`; likewise B. `pack_a` / `pack_b` force each operand to be
/// packed or read in place (B is always packed when read transposed).
#[allow(clippy::too_many_arguments)]
pub fn gemm_tiled(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    pack_a: bool,
    pack_b: bool,
    c: &mut [f32],
) {
    let kern = Kernel::for_isa(isa);
    need("gemm_tiled", "A", a.len(), m * k);
    need("gemm_tiled", "B", b.len(), k * n);
    need("gemm_tiled", "C", c.len(), m * n);
    let av = View::new(a, if trans_a { m } else { k }, trans_a);
    let bv = View::new(b, if trans_b { k } else { n }, trans_b);
    // SAFETY: lengths checked above; `c` is a distinct &mut.
    unsafe {
        tiled::gemm_st(
            &kern,
            Plan { pack_a, pack_b },
            m,
            n,
            k,
            av,
            bv,
            c.as_mut_ptr(),
            n,
        )
    }
}

/// The backend's full f32 batched GEMM (shape dispatch, threading) with the
/// SIMD kernels on `isa`; `c` must hold `batch * m * n` elements and is overwritten.
pub fn gemm_batch(isa: Isa, cfg: &GemmConfig, a: &[f32], b: &[f32], c: &mut [f32]) {
    let GemmConfig {
        batch,
        m,
        n,
        k,
        stride_a,
        stride_b,
        ..
    } = *cfg;
    if batch > 0 {
        need("gemm_batch", "A", a.len(), (batch - 1) * stride_a + m * k);
        need("gemm_batch", "B", b.len(), (batch - 1) * stride_b + k * n);
    }
    need("gemm_batch", "C", c.len(), batch * m * n);
    crate::simd::check(isa);
    // SAFETY: operand and output lengths checked above.
    unsafe { crate::gemm::gemm_f32(isa, cfg, a, b, c.as_mut_ptr()) };
}
