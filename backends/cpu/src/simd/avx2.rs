//! AVX2 + FMA kernels (8 f32 lanes).
//!
//! # Safety
//! Every function here requires a CPU with AVX2 and FMA; callers check
//! [`super::Isa::is_available`] first. Pointer arguments follow the contracts
//! documented in [`super::scalar`], which is the reference implementation.

// Register arrays are indexed by constant-bound loops that the compiler unrolls.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

/// GEMM tile height (rows of C per tile).
pub(crate) const MR: usize = 6;
/// GEMM tile width (columns of C per tile): two registers.
pub(crate) const NR: usize = 16;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Dot products of `R` rows of `a` (row stride `lda`) with `x`, `k` long.
#[inline(always)]
unsafe fn dot_rows<const R: usize>(k: usize, a: *const f32, lda: usize, x: *const f32) -> [f32; R] {
    // Two accumulators per row keep 2R independent FMA chains in flight.
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    let mut p = 0;
    while p + 16 <= k {
        let x0 = _mm256_loadu_ps(x.add(p));
        let x1 = _mm256_loadu_ps(x.add(p + 8));
        for r in 0..R {
            let row = a.add(r * lda + p);
            acc0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(row), x0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(8)), x1, acc1[r]);
        }
        p += 16;
    }
    if p + 8 <= k {
        let x0 = _mm256_loadu_ps(x.add(p));
        for r in 0..R {
            acc0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(r * lda + p)), x0, acc0[r]);
        }
        p += 8;
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut s = hsum(_mm256_add_ps(acc0[r], acc1[r]));
        for q in p..k {
            s = (*a.add(r * lda + q)).mul_add(*x.add(q), s);
        }
        out[r] = s;
    }
    out
}

/// `y[i] = sum_p a[i * lda + p] * x[p]` for `i < m`, `p < k`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv_n(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    y: *mut f32,
) {
    let mut i = 0;
    while i + 4 <= m {
        let s = dot_rows::<4>(k, a.add(i * lda), lda, x);
        for (r, v) in s.into_iter().enumerate() {
            *y.add(i + r) = v;
        }
        i += 4;
    }
    while i < m {
        *y.add(i) = dot_rows::<1>(k, a.add(i * lda), lda, x)[0];
        i += 1;
    }
}

/// `y[j..j + 8*V]` = sum over rows of `x[i] * a[i, j..]`, accumulated in registers.
#[inline(always)]
unsafe fn axpy_cols<const V: usize>(
    m: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    y: *mut f32,
) {
    let mut acc = [_mm256_setzero_ps(); V];
    for i in 0..m {
        let xi = _mm256_broadcast_ss(&*x.add(i));
        let row = a.add(i * lda);
        for v in 0..V {
            acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(8 * v)), xi, acc[v]);
        }
    }
    for v in 0..V {
        _mm256_storeu_ps(y.add(8 * v), acc[v]);
    }
}

/// `y[j] = sum_i a[i * lda + j] * x[i]` for `j < k`, `i < m` (y = A^T x).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv_t(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    y: *mut f32,
) {
    let mut j = 0;
    // Eight registers of columns: enough independent chains to saturate both FMA ports.
    while j + 64 <= k {
        axpy_cols::<8>(m, a.add(j), lda, x, y.add(j));
        j += 64;
    }
    while j + 8 <= k {
        axpy_cols::<1>(m, a.add(j), lda, x, y.add(j));
        j += 8;
    }
    for q in j..k {
        let mut s = 0.0f32;
        for i in 0..m {
            s = (*a.add(i * lda + q)).mul_add(*x.add(i), s);
        }
        *y.add(q) = s;
    }
}

/// `a[i * lda + j] += alpha * (x[i] * y[j])`. The product `x[i] * y[j]` is
/// formed first so that `x == y` keeps a symmetric `a` exactly symmetric.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn ger(
    m: usize,
    n: usize,
    alpha: f32,
    x: *const f32,
    y: *const f32,
    a: *mut f32,
    lda: usize,
) {
    let al = _mm256_set1_ps(alpha);
    for i in 0..m {
        let xi_s = *x.add(i);
        let xi = _mm256_set1_ps(xi_s);
        let row = a.add(i * lda);
        let mut j = 0;
        while j + 16 <= n {
            let t0 = _mm256_mul_ps(xi, _mm256_loadu_ps(y.add(j)));
            let t1 = _mm256_mul_ps(xi, _mm256_loadu_ps(y.add(j + 8)));
            _mm256_storeu_ps(
                row.add(j),
                _mm256_fmadd_ps(al, t0, _mm256_loadu_ps(row.add(j))),
            );
            _mm256_storeu_ps(
                row.add(j + 8),
                _mm256_fmadd_ps(al, t1, _mm256_loadu_ps(row.add(j + 8))),
            );
            j += 16;
        }
        while j + 8 <= n {
            let t = _mm256_mul_ps(xi, _mm256_loadu_ps(y.add(j)));
            _mm256_storeu_ps(
                row.add(j),
                _mm256_fmadd_ps(al, t, _mm256_loadu_ps(row.add(j))),
            );
            j += 8;
        }
        for q in j..n {
            let r = row.add(q);
            *r = alpha.mul_add(xi_s * *y.add(q), *r);
        }
    }
}

/// Transposes an 8x8 block: `dst[r * lds + c] = src[c * ldsrc + r]`.
#[inline(always)]
unsafe fn transpose8(src: *const f32, ldsrc: usize, dst: *mut f32, lds: usize) {
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ldsrc)));
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let o = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    for (i, v) in o.into_iter().enumerate() {
        _mm256_storeu_ps(dst.add(i * lds), v);
    }
}

/// Packs one B panel read transposed: `dst[p * nr + j] = src[j * ld + p]` for
/// `p < kc`, `j < w`, zero for `w <= j < nr` (`nr` a multiple of 8). Used by the
/// AVX-512 kernels too (every AVX-512 CPU has AVX2).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pack_panel_t(
    kc: usize,
    w: usize,
    src: *const f32,
    ld: usize,
    dst: *mut f32,
    nr: usize,
) {
    let full = w / 8 * 8;
    let mut p = 0;
    while p + 8 <= kc {
        let mut j = 0;
        while j < full {
            transpose8(src.add(j * ld + p), ld, dst.add(p * nr + j), nr);
            j += 8;
        }
        p += 8;
    }
    for p in p..kc {
        for j in 0..full {
            *dst.add(p * nr + j) = *src.add(j * ld + p);
        }
    }
    for p in 0..kc {
        for j in full..nr {
            *dst.add(p * nr + j) = if j < w { *src.add(j * ld + p) } else { 0.0 };
        }
    }
}

/// One `M x NR` tile of C; see [`super::scalar::tile`] for the contract.
/// With `PF`, also prefetches the next B panel of an in-place B (as
/// `avx512::tile_m`).
#[inline(always)]
unsafe fn tile_m<const M: usize, const PF: bool>(
    k: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    acc: bool,
) {
    let mut c0 = [_mm256_setzero_ps(); M];
    let mut c1 = [_mm256_setzero_ps(); M];
    // One pointer per row, each stepped on its own: computing row i as
    // `a + i * rsa` let the compiler chain the rows' addresses through one
    // register, a serial chain of M adds per k step as long as the FMAs take.
    let mut rows = [a; M];
    for (i, r) in rows.iter_mut().enumerate() {
        *r = a.offset(i as isize * rsa);
    }
    let mut bp = b;
    for _ in 0..k {
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        if PF {
            // The next panel's part of this row: one cache line.
            _mm_prefetch::<_MM_HINT_T0>(bp.add(NR) as *const i8);
        }
        for i in 0..M {
            let av = _mm256_broadcast_ss(&*rows[i]);
            c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
            rows[i] = rows[i].offset(csa);
        }
        bp = bp.add(ldb);
    }
    if nr == NR {
        for i in 0..M {
            let row = c.add(i * ldc);
            if acc {
                c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(row));
                c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(row.add(8)));
            }
            _mm256_storeu_ps(row, c0[i]);
            _mm256_storeu_ps(row.add(8), c1[i]);
        }
    } else {
        let mut buf = [0.0f32; NR];
        for i in 0..M {
            _mm256_storeu_ps(buf.as_mut_ptr(), c0[i]);
            _mm256_storeu_ps(buf.as_mut_ptr().add(8), c1[i]);
            let row = c.add(i * ldc);
            for (j, &v) in buf.iter().enumerate().take(nr) {
                *row.add(j) = if acc { *row.add(j) + v } else { v };
            }
        }
    }
}

/// All row tiles of one B panel; see [`super::scalar::panel`].
#[inline(always)]
unsafe fn panel_impl(
    mc: usize,
    nr: usize,
    k: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    tile_step: isize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    let full = mc / MR;
    // An in-place B with rows a page or more apart: see `avx512::panel_impl`.
    let in_place = ldb != NR && ldb * 4 >= 4096;
    for t in 0..full {
        let (a, c) = (a.offset(t as isize * tile_step), c.add(t * MR * ldc));
        if t == 0 && in_place {
            tile_m::<MR, true>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc);
        } else {
            tile_m::<MR, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc);
        }
    }
    let (a, c) = (a.offset(full as isize * tile_step), c.add(full * MR * ldc));
    match mc % MR {
        0 => {}
        5 => tile_m::<5, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
        4 => tile_m::<4, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
        3 => tile_m::<3, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
        2 => tile_m::<2, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
        1 => tile_m::<1, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
        _ => unreachable!(),
    }
}

/// All row tiles of one B panel, A read through its strides; see [`super::scalar::panel`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn panel(
    mc: usize,
    nr: usize,
    k: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    panel_impl(
        mc,
        nr,
        k,
        a,
        rsa,
        csa,
        MR as isize * rsa,
        b,
        ldb,
        c,
        ldc,
        acc,
    )
}

/// [`panel`] for an A packed by `MR`-row tiles: the constant strides turn
/// every A access into a fixed offset from one pointer.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn panel_packed(
    mc: usize,
    nr: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    panel_impl(
        mc,
        nr,
        k,
        a,
        1,
        MR as isize,
        (k * MR) as isize,
        b,
        ldb,
        c,
        ldc,
        acc,
    )
}

/// `R x J` dot products of contiguous rows (see [`dot_nt`]); the last `k % 8`
/// terms are added one by one after the lane sums.
#[inline(always)]
unsafe fn dot_block<const R: usize, const J: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    bt: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); J]; R];
    let mut p = 0;
    while p + 8 <= k {
        let mut bv = [_mm256_setzero_ps(); J];
        for j in 0..J {
            bv[j] = _mm256_loadu_ps(bt.add(j * ldb + p));
        }
        for r in 0..R {
            let av = _mm256_loadu_ps(a.add(r * lda + p));
            for j in 0..J {
                acc[r][j] = _mm256_fmadd_ps(av, bv[j], acc[r][j]);
            }
        }
        p += 8;
    }
    for r in 0..R {
        for j in 0..J {
            let mut s = hsum(acc[r][j]);
            for q in p..k {
                s = (*a.add(r * lda + q)).mul_add(*bt.add(j * ldb + q), s);
            }
            *c.add(r * ldc + j) = s;
        }
    }
}

/// `C = A Bt^T` by dot products of contiguous rows (`c[i * ldc + j] = sum_p
/// a[i * lda + p] * bt[j * ldb + p]`); see `avx512::dot_nt`. Blocks of 3 x 3
/// (9 accumulators, 3 B registers and one A register of the 16).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_nt(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    bt: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    let mut i = 0;
    while i < m {
        let r = (m - i).min(3);
        let mut j = 0;
        while j < n {
            let q = (n - j).min(3);
            let (a, b, c) = (a.add(i * lda), bt.add(j * ldb), c.add(i * ldc + j));
            match (r, q) {
                (3, 3) => dot_block::<3, 3>(k, a, lda, b, ldb, c, ldc),
                (3, 2) => dot_block::<3, 2>(k, a, lda, b, ldb, c, ldc),
                (3, 1) => dot_block::<3, 1>(k, a, lda, b, ldb, c, ldc),
                (2, 3) => dot_block::<2, 3>(k, a, lda, b, ldb, c, ldc),
                (2, 2) => dot_block::<2, 2>(k, a, lda, b, ldb, c, ldc),
                (2, 1) => dot_block::<2, 1>(k, a, lda, b, ldb, c, ldc),
                (1, 3) => dot_block::<1, 3>(k, a, lda, b, ldb, c, ldc),
                (1, 2) => dot_block::<1, 2>(k, a, lda, b, ldb, c, ldc),
                (1, 1) => dot_block::<1, 1>(k, a, lda, b, ldb, c, ldc),
                _ => unreachable!(),
            }
            j += q;
        }
        i += r;
    }
}
