// The AVX-512 kernels as one macro, expanded twice: in `avx512` over the real
// intrinsics with `#[target_feature(enable = "avx512f")]`, and (tests only) in
// `avx512_emu` over a plain-Rust model of the same intrinsics, so the kernel
// logic (tiles, masks, tails) is tested on machines without AVX-512 too.
// Everything it names (intrinsics, `__m512`, `__mmask16`) comes from the
// expansion site.
macro_rules! avx512_kernels {
    ($(#[$tf:meta])*) => {
        /// GEMM tile height (rows of C per tile): 8 fits the 64-row encoder shapes exactly.
        pub(crate) const MR: usize = 8;
        /// GEMM tile width (columns of C per tile): two registers.
        pub(crate) const NR: usize = 32;

        #[inline(always)]
        fn tail_mask(n: usize) -> __mmask16 {
            debug_assert!(n < 16);
            ((1u32 << n) - 1) as __mmask16
        }

        #[inline(always)]
        unsafe fn dot_rows<const R: usize>(k: usize, a: *const f32, lda: usize, x: *const f32) -> [f32; R] {
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            let mut p = 0;
            while p + 32 <= k {
                let x0 = _mm512_loadu_ps(x.add(p));
                let x1 = _mm512_loadu_ps(x.add(p + 16));
                for r in 0..R {
                    let row = a.add(r * lda + p);
                    acc0[r] = _mm512_fmadd_ps(_mm512_loadu_ps(row), x0, acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(16)), x1, acc1[r]);
                }
                p += 32;
            }
            while p < k {
                let rest = k - p;
                let mask = if rest >= 16 { 0xffff } else { tail_mask(rest) };
                let x0 = _mm512_maskz_loadu_ps(mask, x.add(p));
                for r in 0..R {
                    let av = _mm512_maskz_loadu_ps(mask, a.add(r * lda + p));
                    acc0[r] = _mm512_fmadd_ps(av, x0, acc0[r]);
                }
                p += 16;
            }
            let mut out = [0.0f32; R];
            for r in 0..R {
                out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
            }
            out
        }

        /// `y[i] = sum_p a[i * lda + p] * x[p]` for `i < m`, `p < k`.
        $(#[$tf])*
        pub(crate) unsafe fn gemv_n(m: usize, k: usize, a: *const f32, lda: usize, x: *const f32, y: *mut f32) {
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

        #[inline(always)]
        unsafe fn axpy_cols<const V: usize>(m: usize, a: *const f32, lda: usize, x: *const f32, y: *mut f32, mask: __mmask16) {
            let mut acc = [_mm512_setzero_ps(); V];
            for i in 0..m {
                let xi = _mm512_set1_ps(*x.add(i));
                let row = a.add(i * lda);
                for v in 0..V {
                    // Only the last register can be partial.
                    let av = if v + 1 == V { _mm512_maskz_loadu_ps(mask, row.add(16 * v)) } else { _mm512_loadu_ps(row.add(16 * v)) };
                    acc[v] = _mm512_fmadd_ps(av, xi, acc[v]);
                }
            }
            for v in 0..V {
                if v + 1 == V {
                    _mm512_mask_storeu_ps(y.add(16 * v), mask, acc[v]);
                } else {
                    _mm512_storeu_ps(y.add(16 * v), acc[v]);
                }
            }
        }

        /// `y[j] = sum_i a[i * lda + j] * x[i]` for `j < k`, `i < m` (y = A^T x).
        $(#[$tf])*
        pub(crate) unsafe fn gemv_t(m: usize, k: usize, a: *const f32, lda: usize, x: *const f32, y: *mut f32) {
            let mut j = 0;
            while j + 128 <= k {
                axpy_cols::<8>(m, a.add(j), lda, x, y.add(j), 0xffff);
                j += 128;
            }
            while j < k {
                let rest = k - j;
                let mask = if rest >= 16 { 0xffff } else { tail_mask(rest) };
                axpy_cols::<1>(m, a.add(j), lda, x, y.add(j), mask);
                j += 16;
            }
        }

        /// `a[i * lda + j] += alpha * (x[i] * y[j])`; see [`super::scalar::ger`].
        $(#[$tf])*
        pub(crate) unsafe fn ger(m: usize, n: usize, alpha: f32, x: *const f32, y: *const f32, a: *mut f32, lda: usize) {
            let al = _mm512_set1_ps(alpha);
            for i in 0..m {
                let xi = _mm512_set1_ps(*x.add(i));
                let row = a.add(i * lda);
                let mut j = 0;
                while j < n {
                    let rest = n - j;
                    let mask = if rest >= 16 { 0xffff } else { tail_mask(rest) };
                    let t = _mm512_mul_ps(xi, _mm512_maskz_loadu_ps(mask, y.add(j)));
                    let r = _mm512_fmadd_ps(al, t, _mm512_maskz_loadu_ps(mask, row.add(j)));
                    _mm512_mask_storeu_ps(row.add(j), mask, r);
                    j += 16;
                }
            }
        }

        /// `R x J` dot products of contiguous rows: `c[r * ldc + j] =
        /// sum_p a[r * lda + p] * bt[j * ldb + p]`, one register per pair,
        /// reduced across lanes at the end.
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
            let mut acc = [[_mm512_setzero_ps(); J]; R];
            let mut p = 0;
            while p < k {
                let mask = if k - p >= 16 { 0xffff } else { tail_mask(k - p) };
                let mut bv = [_mm512_setzero_ps(); J];
                for j in 0..J {
                    bv[j] = _mm512_maskz_loadu_ps(mask, bt.add(j * ldb + p));
                }
                for r in 0..R {
                    let av = _mm512_maskz_loadu_ps(mask, a.add(r * lda + p));
                    for j in 0..J {
                        acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
                    }
                }
                p += 16;
            }
            for r in 0..R {
                for j in 0..J {
                    *c.add(r * ldc + j) = _mm512_reduce_add_ps(acc[r][j]);
                }
            }
        }

        /// `C = A Bt^T` by dot products, for an A and a Bt both stored row by
        /// row along k (`c[i * ldc + j] = sum_p a[i * lda + p] * bt[j * ldb +
        /// p]`, every element of the `m x n` C written). For a B^T with few
        /// columns (a first convolution's weight gradient: n = 9) the 32-wide
        /// panels would leave most lanes idle and B^T would be packed first;
        /// here every lane works on k and nothing is copied. Blocks of 4 x 4
        /// products: 8 loads per 16 multiply-adds.
        $(#[$tf])*
        pub(crate) unsafe fn dot_nt(m: usize, n: usize, k: usize, a: *const f32, lda: usize, bt: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
            macro_rules! block {
                ($r:expr, $j:expr, $a:expr, $b:expr, $c:expr) => {
                    match ($r, $j) {
                        (4, 4) => dot_block::<4, 4>(k, $a, lda, $b, ldb, $c, ldc),
                        (4, 3) => dot_block::<4, 3>(k, $a, lda, $b, ldb, $c, ldc),
                        (4, 2) => dot_block::<4, 2>(k, $a, lda, $b, ldb, $c, ldc),
                        (4, 1) => dot_block::<4, 1>(k, $a, lda, $b, ldb, $c, ldc),
                        (3, 4) => dot_block::<3, 4>(k, $a, lda, $b, ldb, $c, ldc),
                        (3, 3) => dot_block::<3, 3>(k, $a, lda, $b, ldb, $c, ldc),
                        (3, 2) => dot_block::<3, 2>(k, $a, lda, $b, ldb, $c, ldc),
                        (3, 1) => dot_block::<3, 1>(k, $a, lda, $b, ldb, $c, ldc),
                        (2, 4) => dot_block::<2, 4>(k, $a, lda, $b, ldb, $c, ldc),
                        (2, 3) => dot_block::<2, 3>(k, $a, lda, $b, ldb, $c, ldc),
                        (2, 2) => dot_block::<2, 2>(k, $a, lda, $b, ldb, $c, ldc),
                        (2, 1) => dot_block::<2, 1>(k, $a, lda, $b, ldb, $c, ldc),
                        (1, 4) => dot_block::<1, 4>(k, $a, lda, $b, ldb, $c, ldc),
                        (1, 3) => dot_block::<1, 3>(k, $a, lda, $b, ldb, $c, ldc),
                        (1, 2) => dot_block::<1, 2>(k, $a, lda, $b, ldb, $c, ldc),
                        (1, 1) => dot_block::<1, 1>(k, $a, lda, $b, ldb, $c, ldc),
                        _ => unreachable!(),
                    }
                };
            }
            let mut i = 0;
            while i < m {
                let r = (m - i).min(4);
                let mut j = 0;
                while j < n {
                    // Column blocks of 4, the tail split evenly (n = 9: 3 x 3).
                    let left = n - j;
                    let q = if left > 4 && left < 8 { left.div_ceil(2) } else { left.min(4) };
                    let q = if left == 9 { 3 } else { q };
                    block!(r, q, a.add(i * lda), bt.add(j * ldb), c.add(i * ldc + j));
                    j += q;
                }
                i += r;
            }
        }

        /// One `M x NR` tile of C. With `PF`, also prefetches the next B
        /// panel (`NR` values further along each row of an in-place B): its
        /// rows are a page or more apart, so the hardware prefetchers miss
        /// them and the next panel's first tile would stall on every row.
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
            let mut c0 = [_mm512_setzero_ps(); M];
            let mut c1 = [_mm512_setzero_ps(); M];
            let mut ap = a;
            let mut bp = b;
            for _ in 0..k {
                let b0 = _mm512_loadu_ps(bp);
                let b1 = _mm512_loadu_ps(bp.add(16));
                if PF {
                    _mm_prefetch::<PREFETCH_HINT>(bp.add(NR) as *const i8);
                    _mm_prefetch::<PREFETCH_HINT>(bp.add(NR + 16) as *const i8);
                }
                for i in 0..M {
                    let av = _mm512_set1_ps(*ap.offset(i as isize * rsa));
                    c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                    c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
                }
                ap = ap.offset(csa);
                bp = bp.add(ldb);
            }
            let m0: __mmask16 = if nr >= 16 { 0xffff } else { tail_mask(nr) };
            let m1: __mmask16 = if nr >= 32 { 0xffff } else if nr > 16 { tail_mask(nr - 16) } else { 0 };
            for i in 0..M {
                let row = c.add(i * ldc);
                if acc {
                    c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, row));
                    c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, row.add(16)));
                }
                _mm512_mask_storeu_ps(row, m0, c0[i]);
                _mm512_mask_storeu_ps(row.add(16), m1, c1[i]);
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
            // A B read in place with rows a page or more apart (the wide
            // fully connected layers; not a packed panel, nor the
            // convolutions' column matrices, which the hardware follows):
            // the first tile prefetches the next panel while it runs.
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
                7 => tile_m::<7, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
                6 => tile_m::<6, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
                5 => tile_m::<5, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
                4 => tile_m::<4, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
                3 => tile_m::<3, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
                2 => tile_m::<2, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
                1 => tile_m::<1, false>(k, a, rsa, csa, b, ldb, c, ldc, nr, acc),
                _ => unreachable!(),
            }
        }

        /// All row tiles of one B panel, A read through its strides; see [`super::scalar::panel`].
        $(#[$tf])*
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
            panel_impl(mc, nr, k, a, rsa, csa, MR as isize * rsa, b, ldb, c, ldc, acc)
        }

        /// [`panel`] for an A packed by `MR`-row tiles (constant strides).
        $(#[$tf])*
        pub(crate) unsafe fn panel_packed(mc: usize, nr: usize, k: usize, a: *const f32, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, acc: bool) {
            panel_impl(mc, nr, k, a, 1, MR as isize, (k * MR) as isize, b, ldb, c, ldc, acc)
        }
    };
}
