//! Portable kernels: the fallback on CPUs without AVX2, and the contract every
//! SIMD version follows. Written so the compiler can auto-vectorise the inner loops.

/// GEMM tile height.
pub(crate) const MR: usize = 4;
/// GEMM tile width.
pub(crate) const NR: usize = 8;

/// `y[i] = sum_p a[i * lda + p] * x[p]` for `i < m`, `p < k` (y = A x).
///
/// # Safety
/// `a` is readable for rows `0..m` of `k` elements at stride `lda`, `x` for `k`
/// elements, `y` writable for `m` elements.
pub(crate) unsafe fn gemv_n(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    y: *mut f32,
) {
    let x = std::slice::from_raw_parts(x, k);
    for i in 0..m {
        let row = std::slice::from_raw_parts(a.add(i * lda), k);
        // Eight partial sums break the dependency chain (and allow vectorisation).
        let mut acc = [0.0f32; 8];
        let mut rc = row.chunks_exact(8);
        let mut xc = x.chunks_exact(8);
        for (r, xv) in (&mut rc).zip(&mut xc) {
            for l in 0..8 {
                acc[l] += r[l] * xv[l];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (r, xv) in rc.remainder().iter().zip(xc.remainder()) {
            s += r * xv;
        }
        *y.add(i) = s;
    }
}

/// `y[j] = sum_i a[i * lda + j] * x[i]` for `j < k`, `i < m` (y = A^T x).
///
/// # Safety
/// `a` is readable for rows `0..m` of `k` elements at stride `lda`, `x` for `m`
/// elements, `y` writable for `k` elements.
pub(crate) unsafe fn gemv_t(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    y: *mut f32,
) {
    let y = std::slice::from_raw_parts_mut(y, k);
    y.iter_mut().for_each(|v| *v = 0.0);
    for i in 0..m {
        let xi = *x.add(i);
        let row = std::slice::from_raw_parts(a.add(i * lda), k);
        for (yj, &aij) in y.iter_mut().zip(row) {
            *yj += aij * xi;
        }
    }
}

/// `a[i * lda + j] += alpha * (x[i] * y[j])` for `i < m`, `j < n`. The product
/// `x[i] * y[j]` is formed first so that `x == y` keeps a symmetric `a` exactly symmetric.
///
/// # Safety
/// `a` is writable for rows `0..m` of `n` elements at stride `lda`; `x`, `y`
/// readable for `m` and `n` elements; `a` does not overlap `x` or `y`.
pub(crate) unsafe fn ger(
    m: usize,
    n: usize,
    alpha: f32,
    x: *const f32,
    y: *const f32,
    a: *mut f32,
    lda: usize,
) {
    let y = std::slice::from_raw_parts(y, n);
    for i in 0..m {
        let xi = *x.add(i);
        let row = std::slice::from_raw_parts_mut(a.add(i * lda), n);
        for (aij, &yj) in row.iter_mut().zip(y) {
            *aij += alpha * (xi * yj);
        }
    }
}

/// One tile of C: `C(i, j) = [C(i, j) if acc] + sum_{p < k} A(i, p) B(p, j)`
/// for `i < mr <= MR`, `j < nr <= NR`, where
/// `A(i, p) = a[i * rsa + p * csa]`, `B(p, j) = b[p * ldb + j]`, `C(i, j) = c[i * ldc + j]`.
///
/// # Safety
/// `A(i, p)` readable for `i < mr`, `p < k`; `b` readable for a full `NR` columns
/// of every row `p < k` (packed panels are zero-padded); `C(i, j)` writable for
/// `i < mr`, `j < nr`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    mr: usize,
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
    debug_assert!(mr <= MR && nr <= NR);
    // A constant tile height keeps the accumulators in registers.
    match mr {
        4 => tile_m::<4>(nr, k, a, rsa, csa, b, ldb, c, ldc, acc),
        3 => tile_m::<3>(nr, k, a, rsa, csa, b, ldb, c, ldc, acc),
        2 => tile_m::<2>(nr, k, a, rsa, csa, b, ldb, c, ldc, acc),
        1 => tile_m::<1>(nr, k, a, rsa, csa, b, ldb, c, ldc, acc),
        _ => unreachable!("tile height {mr} > MR"),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_m<const M: usize>(
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
    let mut t = [[0.0f32; NR]; M];
    for p in 0..k {
        let brow = &*(b.add(p * ldb) as *const [f32; NR]);
        for (i, ti) in t.iter_mut().enumerate() {
            let av = *a.offset(i as isize * rsa + p as isize * csa);
            for j in 0..NR {
                ti[j] += av * brow[j];
            }
        }
    }
    for (i, ti) in t.iter().enumerate() {
        for (j, &v) in ti.iter().enumerate().take(nr) {
            let cij = c.add(i * ldc + j);
            *cij = if acc { *cij + v } else { v };
        }
    }
}

/// Packs one B panel read transposed: `dst[p * nr + j] = src[j * ld + p]` for
/// `p < kc`, `j < w`, zero for `w <= j < nr`.
///
/// # Safety
/// `src` readable for rows `j < w` of `kc` elements at stride `ld`; `dst` writable for `kc * nr`.
pub(crate) unsafe fn pack_panel_t(
    kc: usize,
    w: usize,
    src: *const f32,
    ld: usize,
    dst: *mut f32,
    nr: usize,
) {
    for p in 0..kc {
        for j in 0..nr {
            *dst.add(p * nr + j) = if j < w { *src.add(j * ld + p) } else { 0.0 };
        }
    }
}

/// All row tiles of one B panel: [`tile`] for rows `t * MR..` of `0..mc`,
/// tile `t` reading A from `a + t * MR * rsa`, writing C from `c + t * MR * ldc`.
/// The per-ISA versions take the whole panel so the call and set-up cost is
/// paid once per panel, not once per tile.
///
/// # Safety
/// As for [`tile`], for every row `i < mc`.
#[allow(clippy::too_many_arguments)]
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
    for i0 in (0..mc).step_by(MR) {
        tile(
            MR.min(mc - i0),
            nr,
            k,
            a.offset(i0 as isize * rsa),
            rsa,
            csa,
            b,
            ldb,
            c.add(i0 * ldc),
            ldc,
            acc,
        );
    }
}

/// [`panel`] for an A packed by `MR`-row tiles (`rsa = 1`, `csa = MR`, tile `t` at `a + t * k * MR`).
///
/// # Safety
/// As for [`panel`].
#[allow(clippy::too_many_arguments)]
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
    for (t, i0) in (0..mc).step_by(MR).enumerate() {
        tile(
            MR.min(mc - i0),
            nr,
            k,
            a.add(t * k * MR),
            1,
            MR as isize,
            b,
            ldb,
            c.add(i0 * ldc),
            ldc,
            acc,
        );
    }
}
