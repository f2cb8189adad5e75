use crate::CpuFloat;
use mla_core::GemmConfig;

/// HGM step: project `grad_w` with the old P (a small GEMM), then the RLS
/// update as one GEMV (`u = P r`) and one rank-1 update `P -= u u^T / d`.
/// The update forms `u_i * u_j` before scaling, so P stays exactly symmetric.
pub(crate) fn rls_project<T: CpuFloat>(
    p: &mut [T],
    r: &[T],
    grad_w: Option<&Vec<T>>,
    c: usize,
    s: usize,
    alpha: f64,
) -> Option<Vec<T>> {
    let projected = grad_w.map(|g| {
        let cfg = GemmConfig {
            batch: 1,
            m: c,
            n: s,
            k: s,
            trans_a: false,
            trans_b: false,
            stride_a: 0,
            stride_b: 0,
        };
        if c * s == 0 {
            return Vec::new();
        }
        // SAFETY: gemm_batch writes all c * s elements.
        unsafe { crate::alloc::uninit_vec(c * s, |out| T::gemm_batch(&cfg, g, p, out)) }
    });
    let mut u = vec![T::zero(); s];
    T::gemv(s, s, p, r, &mut u);
    // The denominator is one number that scales the whole update: accumulate it in f64.
    let d = alpha
        + r.iter()
            .zip(&u)
            .map(|(ri, ui)| ri.as_f64() * ui.as_f64())
            .sum::<f64>();
    T::ger(s, s, T::lit(-1.0 / d), &u, &u, p);
    projected
}
