//! Tests only: the AVX-512 kernels expanded over a plain-Rust model of the
//! intrinsics they use, checked against the scalar reference. This runs on any
//! CPU, so the AVX-512 tile / mask / tail logic is exercised even where the
//! real instructions are missing (the integration tests in
//! `tests/tests/cpu_kernels.rs` run the real ones wherever the CPU has them).
//! The model reads and writes only the lanes a mask selects, like the hardware.

#![allow(
    non_camel_case_types,
    clippy::needless_range_loop,
    clippy::too_many_arguments,
    dead_code
)]

#[derive(Clone, Copy, Debug)]
pub(crate) struct __m512([f32; 16]);
pub(crate) type __mmask16 = u16;

const PREFETCH_HINT: i32 = 3;
/// A prefetch is only a hint: it reads nothing the model could check (and
/// may point past the matrix, which the hardware allows), so it does nothing.
unsafe fn _mm_prefetch<const HINT: i32>(_p: *const i8) {}

unsafe fn _mm512_setzero_ps() -> __m512 {
    __m512([0.0; 16])
}
unsafe fn _mm512_set1_ps(v: f32) -> __m512 {
    __m512([v; 16])
}
unsafe fn _mm512_loadu_ps(p: *const f32) -> __m512 {
    __m512(std::array::from_fn(|i| *p.add(i)))
}
unsafe fn _mm512_maskz_loadu_ps(mask: __mmask16, p: *const f32) -> __m512 {
    __m512(std::array::from_fn(|i| {
        if mask >> i & 1 == 1 {
            *p.add(i)
        } else {
            0.0
        }
    }))
}
unsafe fn _mm512_storeu_ps(p: *mut f32, v: __m512) {
    for i in 0..16 {
        *p.add(i) = v.0[i];
    }
}
unsafe fn _mm512_mask_storeu_ps(p: *mut f32, mask: __mmask16, v: __m512) {
    for i in 0..16 {
        if mask >> i & 1 == 1 {
            *p.add(i) = v.0[i];
        }
    }
}
unsafe fn _mm512_fmadd_ps(a: __m512, b: __m512, c: __m512) -> __m512 {
    __m512(std::array::from_fn(|i| a.0[i].mul_add(b.0[i], c.0[i])))
}
unsafe fn _mm512_add_ps(a: __m512, b: __m512) -> __m512 {
    __m512(std::array::from_fn(|i| a.0[i] + b.0[i]))
}
unsafe fn _mm512_mul_ps(a: __m512, b: __m512) -> __m512 {
    __m512(std::array::from_fn(|i| a.0[i] * b.0[i]))
}
unsafe fn _mm512_reduce_add_ps(a: __m512) -> f32 {
    a.0.iter().sum()
}

include!("avx512_kernels.rs");
avx512_kernels!();

#[cfg(test)]
mod tests {
    use crate::gemm::tiled::{gemm_st, Kernel, Plan, View};
    use crate::simd::scalar;

    fn emulated() -> Kernel {
        Kernel {
            mr: super::MR,
            nr: super::NR,
            panel: super::panel,
            panel_packed: super::panel_packed,
            gemv_n: super::gemv_n,
            gemv_t: super::gemv_t,
            ger: super::ger,
            pack_bt: scalar::pack_panel_t,
            dot_nt: Some(super::dot_nt),
        }
    }

    fn values(seed: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1999) as f32 / 1999.0) * 2.0 - 1.0)
            .collect()
    }

    fn close(got: f32, want: f64, mag: f64, k: usize) -> bool {
        (got as f64 - want).abs() <= (k as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30
    }

    /// Sizes around the 16-lane vector and the 8 x 32 tile, and past the k slice.
    const SIZES: [usize; 12] = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 47, 65];

    #[test]
    fn emulated_avx512_gemm_matches_naive() {
        let kern = emulated();
        for (s, &m) in SIZES.iter().enumerate() {
            for &n in &SIZES {
                for &k in &[1usize, 5, 16, 17, 100, 400] {
                    for (ta, tb, pack_a, pack_b) in [
                        (false, false, false, false),
                        (true, false, true, true),
                        (false, true, false, true),
                        (true, true, false, false),
                    ] {
                        let a = values(s, m * k);
                        let b = values(s + 1, k * n);
                        let mut c = vec![f32::NAN; m * n];
                        let av = View::new(&a, if ta { m } else { k }, ta);
                        let bv = View::new(&b, if tb { k } else { n }, tb);
                        unsafe {
                            gemm_st(
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
                        };
                        for i in 0..m {
                            for j in 0..n {
                                let (mut w, mut mag) = (0.0f64, 0.0f64);
                                for p in 0..k {
                                    let x = if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                                    let y = if tb { b[j * k + p] } else { b[p * n + j] } as f64;
                                    w += x * y;
                                    mag += (x * y).abs();
                                }
                                assert!(
                                    close(c[i * n + j], w, mag, k),
                                    "{m}x{k}x{n} ta={ta} tb={tb} at ({i},{j}): {} vs {w}",
                                    c[i * n + j]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn emulated_avx512_dot_products_match_naive() {
        let kern = emulated();
        let dot = kern.dot_nt.expect("the AVX-512 dot-product kernel");
        for (s, &m) in SIZES.iter().enumerate() {
            for n in 1..=17 {
                for &k in &[1usize, 5, 16, 17, 100, 400] {
                    // Leading dimensions past the logical widths: only the
                    // first k of each row may be read, only m x n written.
                    let (lda, ldb, ldc) = (k + 3, k + 1, n + 2);
                    let a = values(s, m * lda);
                    let bt = values(s + 1, n * ldb);
                    let mut c = vec![f32::NAN; m * ldc];
                    unsafe {
                        dot(
                            m,
                            n,
                            k,
                            a.as_ptr(),
                            lda,
                            bt.as_ptr(),
                            ldb,
                            c.as_mut_ptr(),
                            ldc,
                        )
                    };
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j];
                            if j >= n {
                                assert!(got.is_nan(), "{m}x{k}x{n}: wrote ({i},{j})");
                                continue;
                            }
                            let terms =
                                (0..k).map(|p| a[i * lda + p] as f64 * bt[j * ldb + p] as f64);
                            let w: f64 = terms.clone().sum();
                            let mag: f64 = terms.map(f64::abs).sum();
                            assert!(
                                close(got, w, mag, k),
                                "{m}x{k}x{n} at ({i},{j}): {got} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn emulated_avx512_gemv_and_ger_match_naive() {
        let kern = emulated();
        for (s, &m) in SIZES.iter().chain(&[130, 200]).enumerate() {
            for &k in SIZES.iter().chain(&[130, 200]) {
                let a = values(s, m * k);
                let x = values(s + 2, m.max(k));
                // y = A x
                let mut y = vec![f32::NAN; m];
                unsafe { (kern.gemv_n)(m, k, a.as_ptr(), k, x.as_ptr(), y.as_mut_ptr()) };
                for i in 0..m {
                    let w: f64 = (0..k).map(|p| a[i * k + p] as f64 * x[p] as f64).sum();
                    let mag: f64 = (0..k)
                        .map(|p| (a[i * k + p] as f64 * x[p] as f64).abs())
                        .sum();
                    assert!(close(y[i], w, mag, k), "gemv_n {m}x{k} row {i}");
                }
                // y = A^T x
                let mut y = vec![f32::NAN; k];
                unsafe { (kern.gemv_t)(m, k, a.as_ptr(), k, x.as_ptr(), y.as_mut_ptr()) };
                for j in 0..k {
                    let w: f64 = (0..m).map(|i| a[i * k + j] as f64 * x[i] as f64).sum();
                    let mag: f64 = (0..m)
                        .map(|i| (a[i * k + j] as f64 * x[i] as f64).abs())
                        .sum();
                    assert!(close(y[j], w, mag, m), "gemv_t {m}x{k} col {j}");
                }
                // A += 0.5 x y^T
                let yv = values(s + 3, k);
                let mut g = a.clone();
                unsafe { (kern.ger)(m, k, 0.5, x.as_ptr(), yv.as_ptr(), g.as_mut_ptr(), k) };
                for i in 0..m {
                    for j in 0..k {
                        let w = a[i * k + j] as f64 + 0.5 * x[i] as f64 * yv[j] as f64;
                        assert!(
                            close(g[i * k + j], w, a[i * k + j].abs() as f64 + 1.0, 1),
                            "ger {m}x{k} at ({i},{j})"
                        );
                    }
                }
            }
        }
    }
}
