use crate::{el, CpuFloat};
use rayon::prelude::*;

/// Reference HGM step: project `grad_w` with the old P, then the RLS update.
/// The rank-1 update is written as `u u^T / d` with `u = P r`, which keeps P
/// exactly symmetric (each pair (i, j), (j, i) gets the same product).
pub(crate) fn rls_project<T: CpuFloat>(p: &mut [T], r: &[T], grad_w: Option<&Vec<T>>, c: usize, s: usize, alpha: f64) -> Option<Vec<T>> {
    let projected = grad_w.map(|g| {
        let mut out = vec![T::zero(); c * s];
        out.par_chunks_mut(s).enumerate().for_each(|(row, o)| {
            let gr = &g[row * s..(row + 1) * s];
            for (k, &gk) in gr.iter().enumerate() {
                if gk == T::zero() {
                    continue;
                }
                for (o, &pk) in o.iter_mut().zip(&p[k * s..(k + 1) * s]) {
                    *o = *o + gk * pk;
                }
            }
        });
        out
    });
    let u: Vec<T> = (0..s).map(|i| p[i * s..(i + 1) * s].iter().zip(r).fold(T::zero(), |a, (&pij, &rj)| a + pij * rj)).collect();
    let d = el::<T>(alpha) + r.iter().zip(&u).fold(T::zero(), |a, (&ri, &ui)| a + ri * ui);
    let inv = T::one() / d;
    // `(u_i * u_j) * inv`, not `(u_i * inv) * u_j`: the first is the same
    // float for (i, j) and (j, i) (multiplication commutes exactly), the
    // second is not, and P would drift from symmetry by rounding.
    p.par_chunks_mut(s).enumerate().for_each(|(i, row)| {
        let ui = u[i];
        for (pij, &uj) in row.iter_mut().zip(&u) {
            *pij = *pij - (ui * uj) * inv;
        }
    });
    projected
}
