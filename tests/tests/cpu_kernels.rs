//! The CPU backend's SIMD kernels against naive loops, on every instruction set
//! this machine has plus the forced scalar fallback, and `Backend::gemm` /
//! `rls_project` end to end (every transpose combination, batch strides incl. 0).
//!
//! Tolerances follow the f32 error bound of a length-k dot product: each result
//! may be off by about `k * eps * sum |a_i b_i|` (computed in f64 by the
//! reference); a wrong index or a dropped term is off by O(1) and fails.

use mla_core::{Backend, GemmConfig};
use mla_cpu::{kernels, set_isa_override, Cpu, Isa};
use proptest::prelude::*;
use std::sync::Mutex;

/// Serialises the tests that change the process-wide ISA override.
static OVERRIDE: Mutex<()> = Mutex::new(());

fn isas() -> Vec<Isa> {
    Isa::available()
}

/// Deterministic values in [-1, 1) from a seed (the proptest case picks the seed).
/// Every test gets its data here, so this also turns on NaN-poisoning of the
/// backend's uninitialised output buffers: an element a kernel forgets to write
/// shows up as NaN instead of a lucky zero.
fn values(seed: u64, len: usize) -> Vec<f32> {
    mla_cpu::set_poison_uninit(true);
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Reference `op(A) op(B)` in f64, plus `sum |a b|` per element for the tolerance.
#[allow(clippy::too_many_arguments)]
fn naive_gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut s_abs) = (0.0f64, 0.0f64);
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                let bv = if tb { b[j * k + p] } else { b[p * n + j] } as f64;
                s += av * bv;
                s_abs += (av * bv).abs();
            }
            c[i * n + j] = s;
            mag[i * n + j] = s_abs;
        }
    }
    (c, mag)
}

fn assert_close(
    what: &str,
    got: &[f32],
    want: &[f64],
    mag: &[f64],
    k: usize,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: length", what);
    let eps = f32::EPSILON as f64;
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = (k as f64 + 2.0) * eps * s + 1e-30;
        prop_assert!(
            (g as f64 - w).abs() <= tol,
            "{}: element {} is {} but the f64 reference says {} (tolerance {:e})",
            what,
            i,
            g,
            w,
            tol
        );
    }
    Ok(())
}

fn dims(max: usize) -> impl Strategy<Value = usize> {
    // Bias towards the awkward sizes: 1, vector widths and one off them.
    prop_oneof![
        Just(1usize),
        Just(7),
        Just(8),
        Just(9),
        Just(15),
        Just(16),
        Just(17),
        Just(33),
        1..=max
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn gemv_matches_naive(m in dims(150), k in dims(150), trans in any::<bool>(), seed in any::<u64>()) {
        let a = values(seed, m * k);
        let (xl, yl) = if trans { (m, k) } else { (k, m) };
        let x = values(seed ^ 1, xl);
        // A^T x is the GEMM of the stored [m, k] matrix read transposed with a column vector.
        let (want, mag) = if trans { naive_gemm(k, 1, m, &a, true, &x, false) } else { naive_gemm(m, 1, k, &a, false, &x, false) };
        for isa in isas() {
            let mut y = vec![f32::NAN; yl];
            kernels::gemv(isa, trans, m, k, &a, &x, &mut y);
            assert_close(&format!("gemv {isa:?} trans={trans} {m}x{k}"), &y, &want, &mag, xl)?;
        }
    }

    #[test]
    fn ger_matches_naive(m in dims(70), n in dims(70), alpha in -2.0f32..2.0, seed in any::<u64>()) {
        let a0 = values(seed, m * n);
        let x = values(seed ^ 1, m);
        let y = values(seed ^ 2, n);
        for isa in isas() {
            let mut a = a0.clone();
            kernels::ger(isa, m, n, alpha, &x, &y, &mut a);
            for i in 0..m {
                for j in 0..n {
                    let want = a0[i * n + j] as f64 + alpha as f64 * x[i] as f64 * y[j] as f64;
                    let mag = (a0[i * n + j] as f64).abs() + (alpha as f64 * x[i] as f64 * y[j] as f64).abs();
                    prop_assert!((a[i * n + j] as f64 - want).abs() <= 3.0 * f32::EPSILON as f64 * mag + 1e-30,
                        "ger {:?} {}x{} at ({}, {}): {} vs {}", isa, m, n, i, j, a[i * n + j], want);
                }
            }
        }
    }

    #[test]
    fn ger_keeps_symmetric_matrices_exactly_symmetric(s in dims(70), alpha in -2.0f32..2.0, seed in any::<u64>()) {
        let v = values(seed, s * s);
        let mut p0 = vec![0.0f32; s * s];
        for i in 0..s {
            for j in 0..s {
                p0[i * s + j] = v[i.min(j) * s + i.max(j)];
            }
        }
        let u = values(seed ^ 3, s);
        for isa in isas() {
            let mut p = p0.clone();
            kernels::ger(isa, s, s, alpha, &u, &u, &mut p);
            for i in 0..s {
                for j in 0..i {
                    prop_assert_eq!(p[i * s + j].to_bits(), p[j * s + i].to_bits(), "{:?} s={} ({}, {})", isa, s, i, j);
                }
            }
        }
    }

    #[test]
    fn tiled_gemm_matches_naive(
        m in dims(130), n in dims(70), k in dims(300),
        ta in any::<bool>(), tb in any::<bool>(), pack_a in any::<bool>(), pack_b in any::<bool>(), seed in any::<u64>(),
    ) {
        let a = values(seed, m * k);
        let b = values(seed ^ 1, k * n);
        let (want, mag) = naive_gemm(m, n, k, &a, ta, &b, tb);
        for isa in isas() {
            let mut c = vec![f32::NAN; m * n];
            kernels::gemm_tiled(isa, m, n, k, &a, ta, &b, tb, pack_a, pack_b, &mut c);
            assert_close(&format!("tiled {isa:?} {m}x{k}x{n} ta={ta} tb={tb} pack_a={pack_a} pack_b={pack_b}"), &c, &want, &mag, k)?;
        }
    }

    #[test]
    fn batched_gemm_matches_naive(
        batch in 0usize..4, m in dims(40), n in dims(40), k in dims(40),
        ta in any::<bool>(), tb in any::<bool>(), share_a in any::<bool>(), share_b in any::<bool>(), seed in any::<u64>(),
    ) {
        let (sa, sb) = (if share_a { 0 } else { m * k }, if share_b { 0 } else { k * n });
        let a = values(seed, (batch.max(1) - 1) * sa + m * k);
        let b = values(seed ^ 1, (batch.max(1) - 1) * sb + k * n);
        let cfg = GemmConfig { batch, m, n, k, trans_a: ta, trans_b: tb, stride_a: sa, stride_b: sb };
        for isa in isas() {
            let mut c = vec![f32::NAN; batch * m * n];
            kernels::gemm_batch(isa, &cfg, &a, &b, &mut c);
            for i in 0..batch {
                let (want, mag) = naive_gemm(m, n, k, &a[i * sa..], ta, &b[i * sb..], tb);
                assert_close(&format!("batch {isa:?} {cfg:?} item {i}"), &c[i * m * n..(i + 1) * m * n], &want, &mag, k)?;
            }
        }
    }
}

/// Lone GEMMs split over the polling workers, issued from several threads at
/// once: one caller gets the workers, the others fall back to rayon, and every
/// result must still be exact (a task run twice or skipped would show here).
#[test]
fn concurrent_threaded_gemms_match_naive() {
    let (m, k, n) = (64, 784, 256);
    let a = values(21, m * k);
    let b = values(22, k * n);
    let (want, mag) = naive_gemm(m, n, k, &a, false, &b, false);
    let cfg = GemmConfig {
        batch: 1,
        m,
        n,
        k,
        trans_a: false,
        trans_b: false,
        stride_a: m * k,
        stride_b: k * n,
    };
    std::thread::scope(|s| {
        for t in 0..4 {
            let (a, b, want, mag, cfg) = (&a, &b, &want, &mag, &cfg);
            s.spawn(move || {
                for rep in 0..25 {
                    let mut c = vec![f32::NAN; m * n];
                    kernels::gemm_batch(mla_cpu::active_isa(), cfg, a, b, &mut c);
                    assert_close(&format!("thread {t} repetition {rep}"), &c, want, mag, k)
                        .unwrap();
                }
            });
        }
    });
}

/// Shapes past the blocking constants (KC = 256, MC = 96, NC = 1024) and big
/// enough to be split across threads (by columns, by rows, by batch items).
#[test]
fn blocked_and_threaded_gemm_matches_naive() {
    let cases: &[(usize, usize, usize, usize)] = &[
        // (batch, m, k, n)
        (1, 5, 600, 1100),
        // B rows >= 4 KiB apart: panels packed in groups, a partial group at the end of each NC block.
        (1, 20, 70, 1100),
        (1, 100, 300, 40),
        (1, 64, 784, 256),
        (1, 2000, 200, 10),
        (1, 700, 64, 100),
        (1, 64, 128, 10),
        (3, 64, 288, 130),
        (5, 1, 300, 200),
        (2, 97, 1, 33),
    ];
    for &(batch, m, k, n) in cases {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for shared in [false, true] {
                let (sa, sb) = (if shared { 0 } else { m * k }, k * n);
                let a = values(11, (batch - 1) * sa + m * k);
                let b = values(12, (batch - 1) * sb + k * n);
                let cfg = GemmConfig {
                    batch,
                    m,
                    n,
                    k,
                    trans_a: ta,
                    trans_b: tb,
                    stride_a: sa,
                    stride_b: sb,
                };
                for isa in isas() {
                    let mut c = vec![f32::NAN; batch * m * n];
                    kernels::gemm_batch(isa, &cfg, &a, &b, &mut c);
                    for i in 0..batch {
                        let (want, mag) = naive_gemm(m, n, k, &a[i * sa..], ta, &b[i * sb..], tb);
                        assert_close(
                            &format!("{isa:?} {cfg:?} item {i}"),
                            &c[i * m * n..(i + 1) * m * n],
                            &want,
                            &mag,
                            k,
                        )
                        .unwrap();
                    }
                }
            }
        }
    }
}

/// A lone square GEMM large enough to take the matrixmultiply route.
#[test]
fn large_gemm_matches_naive() {
    let (m, k, n) = (520, 512, 516);
    let a = values(21, m * k);
    let b = values(22, k * n);
    for (ta, tb) in [(false, false), (true, true)] {
        let cfg = GemmConfig {
            batch: 1,
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            stride_a: 0,
            stride_b: 0,
        };
        let c = Backend::<f32>::gemm(&Cpu, &cfg, &a, &b).unwrap();
        let (want, mag) = naive_gemm(m, n, k, &a, ta, &b, tb);
        assert_close(&format!("{cfg:?}"), &c, &want, &mag, k).unwrap();
    }
}

fn backend_gemm_case(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    sa0: bool,
    sb0: bool,
    seed: u64,
) {
    let (sa, sb) = (
        if sa0 { 0 } else { m * k + 3 },
        if sb0 { 0 } else { k * n + 1 },
    );
    let a = values(seed, batch.saturating_sub(1) * sa + m * k);
    let b = values(seed ^ 9, batch.saturating_sub(1) * sb + k * n);
    let cfg = GemmConfig {
        batch,
        m,
        n,
        k,
        trans_a: ta,
        trans_b: tb,
        stride_a: sa,
        stride_b: sb,
    };
    let c32 = Backend::<f32>::gemm(&Cpu, &cfg, &a, &b).unwrap();
    let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    let c64 = Backend::<f64>::gemm(&Cpu, &cfg, &a64, &b64).unwrap();
    assert_eq!(c32.len(), batch * m * n);
    for i in 0..batch {
        let (want, mag) = naive_gemm(m, n, k, &a[i * sa..], ta, &b[i * sb..], tb);
        let r = i * m * n..(i + 1) * m * n;
        assert_close(
            &format!("Backend<f32>::gemm {cfg:?} item {i}"),
            &c32[r.clone()],
            &want,
            &mag,
            k,
        )
        .unwrap();
        for (j, (&g, &w)) in c64[r].iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-12 * (1.0 + mag[j]),
                "Backend<f64>::gemm {cfg:?} item {i} elem {j}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn backend_gemm_on_every_isa_all_transposes_and_strides() {
    let _guard = OVERRIDE.lock().unwrap_or_else(|e| e.into_inner());
    let shapes: &[(usize, usize, usize, usize)] = &[
        (1, 1, 1, 1),
        (2, 3, 1, 5),
        (3, 17, 9, 33),
        (4, 64, 10, 128),
        (2, 1, 40, 31),
        (3, 40, 1, 31),
        (1, 64, 256, 784),
        (0, 4, 5, 6),
        // A first convolution's weight gradient (dot products on AVX-512):
        // batched, and a lone one split over threads.
        (3, 32, 9, 784),
        (1, 32, 9, 2520),
        (1, 13, 16, 64),
        (2, 7, 5, 77),
        // B read in place past one row block (97..=384 rows), its rows a page
        // or more apart (the next panel prefetched), and 16 KiB or more apart
        // (packed for the narrow AVX2 panels); more rows: B packed.
        (1, 130, 1100, 64),
        (1, 100, 4100, 9),
        (1, 400, 40, 30),
    ];
    for isa in isas() {
        set_isa_override(Some(isa)).unwrap();
        for (s, &(batch, m, n, k)) in shapes.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    for (sa0, sb0) in [(false, false), (true, false), (false, true)] {
                        backend_gemm_case(batch, m, n, k, ta, tb, sa0, sb0, s as u64);
                    }
                }
            }
        }
    }
    set_isa_override(None).unwrap();
}

#[test]
fn backend_gemm_rejects_short_buffers() {
    let cfg = GemmConfig {
        batch: 2,
        m: 2,
        n: 2,
        k: 2,
        trans_a: false,
        trans_b: false,
        stride_a: 4,
        stride_b: 4,
    };
    let err = Backend::<f32>::gemm(&Cpu, &cfg, &vec![0.0; 7], &vec![0.0; 8]).unwrap_err();
    assert_eq!(err.op(), Some("gemm"));
}

#[test]
fn rls_project_matches_naive_on_every_isa() {
    let _guard = OVERRIDE.lock().unwrap_or_else(|e| e.into_inner());
    for isa in isas() {
        set_isa_override(Some(isa)).unwrap();
        for &(c, s) in &[(1usize, 1usize), (3, 7), (10, 33), (10, 128)] {
            let v = values(s as u64, s * s);
            // P = I + 0.1 * sym(v): symmetric positive definite enough for a stable update.
            let mut p = vec![0.0f32; s * s];
            for i in 0..s {
                for j in 0..s {
                    p[i * s + j] = 0.1 * v[i.min(j) * s + i.max(j)] / s as f32
                        + if i == j { 1.0 } else { 0.0 };
                }
            }
            let r = values(7, s);
            let g = values(8, c * s);
            let alpha = 0.5;
            let p0 = p.clone();
            let projected = Backend::<f32>::rls_project(&Cpu, &mut p, &r, Some(&g), c, s, alpha)
                .unwrap()
                .unwrap();
            // Reference in f64.
            let (want_proj, mag) = naive_gemm(c, s, s, &g, false, &p0, false);
            assert_close(
                &format!("{isa:?} rls projection c={c} s={s}"),
                &projected,
                &want_proj,
                &mag,
                s,
            )
            .unwrap();
            let u: Vec<f64> = (0..s)
                .map(|i| (0..s).map(|j| p0[i * s + j] as f64 * r[j] as f64).sum())
                .collect();
            let d = alpha + (0..s).map(|i| r[i] as f64 * u[i]).sum::<f64>();
            for i in 0..s {
                for j in 0..s {
                    let want = p0[i * s + j] as f64 - u[i] * u[j] / d;
                    let got = p[i * s + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{isa:?} s={s} P[{i},{j}] = {got}, want {want}"
                    );
                    assert_eq!(
                        p[i * s + j].to_bits(),
                        p[j * s + i].to_bits(),
                        "{isa:?} P lost symmetry at ({i}, {j})"
                    );
                }
            }
            let none = Backend::<f32>::rls_project(&Cpu, &mut p, &r, None, c, s, alpha).unwrap();
            assert!(none.is_none());
        }
    }
    set_isa_override(None).unwrap();
}

#[test]
fn isa_override_refuses_what_the_cpu_lacks() {
    let _guard = OVERRIDE.lock().unwrap_or_else(|e| e.into_inner());
    assert!(Isa::available().contains(&Isa::Scalar));
    assert!(Isa::available().contains(&mla_cpu::detected_isa()));
    for isa in Isa::ALL {
        let res = set_isa_override(Some(isa));
        assert_eq!(res.is_ok(), isa.is_available(), "{isa:?}");
        if let Err(e) = res {
            assert_eq!(e.op(), Some("set_isa_override"));
        } else {
            assert_eq!(mla_cpu::active_isa(), isa);
        }
    }
    set_isa_override(None).unwrap();
    assert_eq!(mla_cpu::active_isa(), mla_cpu::detected_isa());
}

// ---- im2col / col2im, broadcasting binary ops and axis sums against naive loops ----

use mla_core::{BinaryOp, Conv2dGeometry};

fn geometry(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: (usize, usize),
    stride: usize,
    pad: usize,
) -> Option<Conv2dGeometry> {
    let (kh, kw) = k;
    if h + 2 * pad < kh || w + 2 * pad < kw {
        return None;
    }
    Some(Conv2dGeometry {
        n,
        c,
        h,
        w,
        kh,
        kw,
        stride,
        pad,
        oh: (h + 2 * pad - kh) / stride + 1,
        ow: (w + 2 * pad - kw) / stride + 1,
    })
}

/// Input index feeding column entry (n, c, ki, kj, oy, ox), if inside the image.
fn source(
    g: &Conv2dGeometry,
    n: usize,
    c: usize,
    ki: usize,
    kj: usize,
    oy: usize,
    ox: usize,
) -> Option<usize> {
    let iy = (oy * g.stride + ki) as isize - g.pad as isize;
    let ix = (ox * g.stride + kj) as isize - g.pad as isize;
    (iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w)
        .then(|| ((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize)
}

fn for_each_entry(g: &Conv2dGeometry, mut f: impl FnMut(usize, Option<usize>)) {
    let (ckk, ohw) = (g.c * g.kh * g.kw, g.oh * g.ow);
    for n in 0..g.n {
        for c in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let col = n * ckk * ohw
                                + ((c * g.kh + ki) * g.kw + kj) * ohw
                                + oy * g.ow
                                + ox;
                            f(col, source(g, n, c, ki, kj, oy, ox));
                        }
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn im2col_and_col2im_match_naive(
        n in 1usize..3, c in 1usize..4, h in 1usize..12, w in 1usize..12,
        kh in 1usize..6, kw in 1usize..6, stride in 1usize..4, pad in 0usize..4, seed in any::<u64>(),
    ) {
        let Some(g) = geometry(n, c, h, w, (kh, kw), stride, pad) else { return Ok(()) };
        let x = values(seed, n * c * h * w);
        let cols = Backend::<f32>::im2col(&Cpu, &x, &g).unwrap();
        let ncols = n * c * kh * kw * g.oh * g.ow;
        prop_assert_eq!(cols.len(), ncols);
        let mut want_x = vec![0.0f64; x.len()];
        let dcols = values(seed ^ 5, ncols);
        let mut bad = None;
        for_each_entry(&g, |col, src| {
            let want = src.map_or(0.0, |i| x[i]);
            if cols[col].to_bits() != want.to_bits() && bad.is_none() {
                bad = Some((col, cols[col], want));
            }
            if let Some(i) = src {
                want_x[i] += dcols[col] as f64;
            }
        });
        prop_assert!(bad.is_none(), "im2col {:?}: (index, got, want) = {:?}", g, bad);
        let back = Backend::<f32>::col2im(&Cpu, &dcols, &g).unwrap();
        prop_assert_eq!(back.len(), x.len());
        for (i, (&got, &want)) in back.iter().zip(&want_x).enumerate() {
            prop_assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "col2im {:?} at {}: {} vs {}", g, i, got, want);
        }
    }

    /// "Same" convolutions (stride 1, kernel width 2 pad + 1: output as wide
    /// as the input, the encoders' 3x3 / pad 1) take a block-copy path.
    #[test]
    fn same_width_im2col_matches_naive(
        n in 1usize..3, c in 1usize..3, h in 1usize..10, w in 1usize..12,
        kh in 1usize..6, pad in 0usize..3, oc in 1usize..4, seed in any::<u64>(),
    ) {
        let Some(g) = geometry(n, c, h, w, (kh, 2 * pad + 1), 1, pad) else { return Ok(()) };
        prop_assert_eq!(g.ow, w);
        let x = values(seed, n * c * h * w);
        let cols = Backend::<f32>::im2col(&Cpu, &x, &g).unwrap();
        let mut bad = None;
        for_each_entry(&g, |col, src| {
            let want = src.map_or(0.0, |i| x[i]);
            if cols[col].to_bits() != want.to_bits() && bad.is_none() {
                bad = Some((col, cols[col], want));
            }
        });
        prop_assert!(bad.is_none(), "im2col {:?}: (index, got, want) = {:?}", g, bad);
        check_conv(&g, oc, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv2d_matches_naive_loops(
        n in 1usize..4, c in 1usize..4, oc in 1usize..5, h in 1usize..10, w in 1usize..10,
        kh in 1usize..4, kw in 1usize..4, stride in 1usize..3, pad in 0usize..2, seed in any::<u64>(),
    ) {
        let Some(g) = geometry(n, c, h, w, (kh, kw), stride, pad) else { return Ok(()) };
        check_conv(&g, oc, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn broadcasting_binary_matches_naive(
        dims in proptest::collection::vec(1usize..6, 0..5), mask_l in any::<u8>(), mask_r in any::<u8>(), op in 0usize..4, seed in any::<u64>(),
    ) {
        // Each operand broadcasts along the axes its mask selects (stride 0), dense elsewhere.
        let rank = dims.len();
        let operand = |mask: u8| -> (Vec<usize>, usize) {
            let mut strides = vec![0; rank];
            let mut size = 1;
            for ax in (0..rank).rev() {
                if mask >> ax & 1 == 0 {
                    strides[ax] = size;
                    size *= dims[ax];
                }
            }
            (strides, size)
        };
        let (ls, lsize) = operand(mask_l);
        let (rs, rsize) = operand(mask_r);
        let lhs = values(seed, lsize);
        // Divisors kept away from zero.
        let rhs: Vec<f32> = values(seed ^ 1, rsize).iter().map(|v| if op == 3 { v.signum() * (0.5 + v.abs()) } else { *v }).collect();
        let bop = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div][op];
        let out = Backend::<f32>::binary(&Cpu, bop, &lhs, &ls, &rhs, &rs, &dims).unwrap();
        let total: usize = dims.iter().product();
        prop_assert_eq!(out.len(), total);
        for (flat, &got) in out.iter().enumerate() {
            let (mut rem, mut lo, mut ro) = (flat, 0, 0);
            for ax in (0..rank).rev() {
                let i = rem % dims[ax];
                rem /= dims[ax];
                lo += i * ls[ax];
                ro += i * rs[ax];
            }
            let (a, b) = (lhs[lo], rhs[ro]);
            let want = match bop { BinaryOp::Add => a + b, BinaryOp::Sub => a - b, BinaryOp::Mul => a * b, BinaryOp::Div => a / b };
            prop_assert_eq!(got.to_bits(), want.to_bits(), "{:?} dims {:?} at {}: {} vs {}", bop, dims, flat, got, want);
        }
    }

    #[test]
    fn sum_axis_matches_naive(outer in 1usize..5, len in 0usize..40, inner in prop_oneof![Just(1usize), 1usize..3000], seed in any::<u64>()) {
        let x = values(seed, outer * len * inner);
        let out = Backend::<f32>::sum_axis(&Cpu, &x, outer, len, inner).unwrap();
        prop_assert_eq!(out.len(), outer * inner);
        for o in 0..outer {
            for j in 0..inner {
                let want: f64 = (0..len).map(|l| x[(o * len + l) * inner + j] as f64).sum();
                let mag: f64 = (0..len).map(|l| (x[(o * len + l) * inner + j] as f64).abs()).sum();
                let got = out[o * inner + j] as f64;
                prop_assert!((got - want).abs() <= (len as f64 + 1.0) * f32::EPSILON as f64 * mag + 1e-30, "({}, {}): {} vs {}", o, j, got, want);
            }
        }
    }
}

/// A whole-tensor sum long enough to be split into pieces.
#[test]
fn long_sums_are_accurate() {
    let x = values(77, 300_001);
    let out = Backend::<f32>::sum_axis(&Cpu, &x, 1, x.len(), 1).unwrap();
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    assert!(
        (out[0] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
        "{} vs {want}",
        out[0]
    );
}

// ---- pooling against naive loops (ties and NaN included) ----

use mla_core::Pool2dGeometry;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pooling_matches_naive(
        planes in 1usize..5, h in 1usize..11, w in 1usize..11,
        // The 2x2 / stride 2 window of the encoders has its own code path.
        (kh, kw, stride) in prop_oneof![Just((2usize, 2usize, 2usize)), Just((3, 3, 2)), (1usize..4, 1usize..4, 1usize..4)],
        pad in prop_oneof![Just(0usize), Just(1)],
        quantise in any::<bool>(), nan_at in proptest::option::of(0usize..400), seed in any::<u64>(),
    ) {
        // PyTorch's bound (pad <= k / 2); average pooling takes no padding.
        prop_assume!(pad <= kh / 2 && pad <= kw / 2);
        prop_assume!(kh <= h + 2 * pad && kw <= w + 2 * pad);
        let g = Pool2dGeometry { planes, h, w, kh, kw, stride, pad, oh: (h + 2 * pad - kh) / stride + 1, ow: (w + 2 * pad - kw) / stride + 1 };
        // Quantised values make ties common (the first maximum must win).
        let mut x: Vec<f32> = values(seed, planes * h * w).iter().map(|&v| if quantise { (v * 2.0).round() } else { v }).collect();
        if let Some(i) = nan_at.filter(|&i| i < x.len()) {
            x[i] = f32::NAN;
        }
        let (y, arg) = Backend::<f32>::max_pool2d(&Cpu, &x, &g).unwrap();
        let n_out = planes * g.oh * g.ow;
        prop_assert_eq!((y.len(), arg.len()), (n_out, n_out));
        let avg = if pad == 0 {
            let avg = Backend::<f32>::avg_pool2d(&Cpu, &x, &g).unwrap();
            prop_assert_eq!(avg.len(), n_out);
            Some(avg)
        } else {
            prop_assert!(Backend::<f32>::avg_pool2d(&Cpu, &x, &g).is_err(), "avg_pool2d accepted padding");
            None
        };
        let grad = values(seed ^ 4, n_out);
        let mut want_dmax = vec![0.0f64; x.len()];
        let mut want_davg = vec![0.0f64; x.len()];
        for p in 0..planes {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let o = (p * g.oh + oy) * g.ow + ox;
                    let (mut best, mut sum) = (None::<usize>, 0.0f64);
                    for ki in 0..kh {
                        for kj in 0..kw {
                            // Positions in the padding are -inf: skipped, they never win.
                            let iy = (oy * stride + ki) as isize - pad as isize;
                            let ix = (ox * stride + kj) as isize - pad as isize;
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                continue;
                            }
                            let i = iy as usize * w + ix as usize;
                            let v = x[p * h * w + i];
                            sum += v as f64;
                            best = match best {
                                None => Some(i),
                                Some(b) => {
                                    let bv = x[p * h * w + b];
                                    if v > bv || (v.is_nan() && !bv.is_nan()) { Some(i) } else { Some(b) }
                                }
                            };
                            want_davg[p * h * w + i] += grad[o] as f64 / (kh * kw) as f64;
                        }
                    }
                    let b = best.expect("every window holds an input element");
                    prop_assert_eq!(arg[o] as usize, b, "argmax at output {} ({:?})", o, g);
                    prop_assert_eq!(y[o].to_bits(), x[p * h * w + b].to_bits());
                    if let Some(avg) = &avg {
                        let mean = sum / (kh * kw) as f64;
                        prop_assert!(avg[o].is_nan() && mean.is_nan() || (avg[o] as f64 - mean).abs() <= 1e-6 * (1.0 + mean.abs()), "avg at {}: {} vs {}", o, avg[o], mean);
                    }
                    want_dmax[p * h * w + b] += grad[o] as f64;
                }
            }
        }
        let dmax = Backend::<f32>::max_pool2d_backward(&Cpu, &grad, &arg, &g).unwrap();
        for i in 0..x.len() {
            prop_assert!((dmax[i] as f64 - want_dmax[i]).abs() <= 1e-5 * (1.0 + want_dmax[i].abs()), "max backward at {}", i);
        }
        if avg.is_some() {
            let davg = Backend::<f32>::avg_pool2d_backward(&Cpu, &grad, &g).unwrap();
            for i in 0..x.len() {
                prop_assert!((davg[i] as f64 - want_davg[i]).abs() <= 1e-5 * (1.0 + want_davg[i].abs()), "avg backward at {}", i);
            }
        }
    }
}

// ---- batch norm against naive loops ----

use mla_core::BatchNormGeometry;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The fused f32 kernels against f64 loops written from the definitions:
    /// biased batch variance, `y = xhat * w + b`, and the backward as sums
    /// over the channel of the chain rule through mean and variance
    /// (not the closed form the kernel uses).
    #[test]
    fn batch_norm_matches_naive(
        n in 1usize..6, c in 1usize..5, inner in prop_oneof![Just(1usize), 1usize..40],
        offset in -4.0f32..4.0, seed in any::<u64>(),
    ) {
        let count = n * inner;
        prop_assume!(count >= 2);
        let g = BatchNormGeometry { n, c, inner, eps: 1e-5 };
        let x: Vec<f32> = values(seed, n * c * inner).iter().map(|v| v + offset).collect();
        let w = values(seed ^ 1, c);
        let b = values(seed ^ 2, c);
        let dy = values(seed ^ 3, n * c * inner);
        let (y, mean, var) = Backend::<f32>::batch_norm(&Cpu, &x, &w, &b, &g).unwrap();
        let (dx, dw, db) = Backend::<f32>::batch_norm_backward(&Cpu, &x, &dy, &mean, &var, &w, &g).unwrap();
        prop_assert_eq!((y.len(), dx.len(), mean.len(), var.len(), dw.len(), db.len()), (x.len(), x.len(), c, c, c, c));
        let at = |i: usize, ch: usize, j: usize| (i * c + ch) * inner + j;
        let m = count as f64;
        for ch in 0..c {
            let idx: Vec<usize> = (0..n).flat_map(|i| (0..inner).map(move |j| at(i, ch, j))).collect();
            let mu = idx.iter().map(|&k| x[k] as f64).sum::<f64>() / m;
            let v = idx.iter().map(|&k| (x[k] as f64 - mu).powi(2)).sum::<f64>() / m;
            let is = 1.0 / (v + 1e-5).sqrt();
            prop_assert!((mean[ch] as f64 - mu).abs() <= 1e-6 * (1.0 + mu.abs()), "mean {} vs {}", mean[ch], mu);
            prop_assert!((var[ch] as f64 - v).abs() <= 1e-5 * (1e-3 + v), "var {} vs {}", var[ch], v);
            let (wc, bc) = (w[ch] as f64, b[ch] as f64);
            // dL/dxhat, then through var and mean by the chain rule.
            let dxhat: Vec<f64> = idx.iter().map(|&k| dy[k] as f64 * wc).collect();
            let dvar: f64 = idx.iter().zip(&dxhat).map(|(&k, &d)| d * (x[k] as f64 - mu) * -0.5 * is.powi(3)).sum();
            let dmu: f64 = dxhat.iter().map(|d| -d * is).sum::<f64>()
                + dvar * idx.iter().map(|&k| -2.0 * (x[k] as f64 - mu)).sum::<f64>() / m;
            let (mut want_dw, mut want_db) = (0.0, 0.0);
            for (&k, &d) in idx.iter().zip(&dxhat) {
                let xh = (x[k] as f64 - mu) * is;
                let want_y = xh * wc + bc;
                // f32 rounding of x - mean grows with |mean| / std.
                let tol = 1e-5 * (1.0 + want_y.abs() + (mu.abs() * is * wc.abs()));
                prop_assert!((y[k] as f64 - want_y).abs() <= tol, "y at {}: {} vs {}", k, y[k], want_y);
                let want_dx = d * is + dvar * 2.0 * (x[k] as f64 - mu) / m + dmu / m;
                let scale: f64 = is * wc.abs() * idx.iter().map(|&k| (dy[k] as f64).abs()).sum::<f64>() / m;
                let tol = 1e-4 * (1e-3 + want_dx.abs() + scale * (1.0 + mu.abs() * is));
                prop_assert!((dx[k] as f64 - want_dx).abs() <= tol, "dx at {}: {} vs {} ({:?})", k, dx[k], want_dx, g);
                want_dw += dy[k] as f64 * xh;
                want_db += dy[k] as f64;
            }
            prop_assert!((dw[ch] as f64 - want_dw).abs() <= 1e-4 * (1.0 + m.sqrt()) * (1.0 + mu.abs() * is), "dweight {} vs {}", dw[ch], want_dw);
            prop_assert!((db[ch] as f64 - want_db).abs() <= 1e-5 * (1.0 + m), "dbias {} vs {}", db[ch], want_db);
        }
    }
}

#[test]
fn batch_norm_kernels_reject_short_buffers() {
    let g = BatchNormGeometry {
        n: 2,
        c: 3,
        inner: 4,
        eps: 1e-5,
    };
    let x = values(1, 24);
    let (w, short) = (values(2, 3), values(3, 2));
    let err = Backend::<f32>::batch_norm(&Cpu, &x, &w, &short, &g).unwrap_err();
    assert_eq!(err.op(), Some("batch_norm"));
    let err = Backend::<f32>::batch_norm(&Cpu, &x[..23].to_vec(), &w, &w, &g).unwrap_err();
    assert_eq!(err.op(), Some("batch_norm"));
    let err = Backend::<f32>::batch_norm_backward(&Cpu, &x, &x[..20].to_vec(), &w, &w, &w, &g)
        .unwrap_err();
    assert_eq!(err.op(), Some("batch_norm_backward"));
}

#[test]
fn thread_count_errors_are_values() {
    assert_eq!(
        mla_cpu::set_num_threads(0).unwrap_err().op(),
        Some("set_num_threads")
    );
    // Once any parallel work has run, the global pool exists and cannot be resized.
    let x = values(1, 1 << 17);
    Backend::<f32>::unary(&Cpu, mla_core::UnaryOp::Relu, &x).unwrap();
    let err = mla_cpu::set_num_threads(3).unwrap_err();
    assert_eq!(err.op(), Some("set_num_threads"));
    assert!(err.to_string().contains("before any tensor work"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn unary_ops_and_their_backward_match_naive(len in 0usize..70_000, op in 0usize..9, seed in any::<u64>()) {
        use mla_core::UnaryOp;
        let ops = [UnaryOp::Relu, UnaryOp::Sigmoid, UnaryOp::Tanh, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Neg, UnaryOp::Sqr, UnaryOp::Sqrt, UnaryOp::Affine { mul: 1.5, add: -0.25 }];
        let op = ops[op];
        // Log and Sqrt get positive inputs.
        let x: Vec<f32> = values(seed, len).iter().map(|&v| if matches!(op, UnaryOp::Log | UnaryOp::Sqrt) { v.abs() + 0.1 } else { v }).collect();
        let g = values(seed ^ 7, len);
        let y = Backend::<f32>::unary(&Cpu, op, &x).unwrap();
        let dx = Backend::<f32>::unary_backward(&Cpu, op, &x, &y, &g).unwrap();
        prop_assert_eq!((y.len(), dx.len()), (len, len));
        for i in 0..len {
            let v = x[i] as f64;
            let (want, d) = match op {
                UnaryOp::Relu => (v.max(0.0), if v > 0.0 { 1.0 } else { 0.0 }),
                UnaryOp::Sigmoid => { let s = 1.0 / (1.0 + (-v).exp()); (s, s * (1.0 - s)) }
                UnaryOp::Tanh => (v.tanh(), 1.0 - v.tanh().powi(2)),
                UnaryOp::Exp => (v.exp(), v.exp()),
                UnaryOp::Log => (v.ln(), 1.0 / v),
                UnaryOp::Neg => (-v, -1.0),
                UnaryOp::Sqr => (v * v, 2.0 * v),
                UnaryOp::Sqrt => (v.sqrt(), 0.5 / v.sqrt()),
                UnaryOp::Affine { mul, add } => (mul * v + add, mul),
            };
            prop_assert!((y[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{:?}({}) = {} want {}", op, v, y[i], want);
            let wd = g[i] as f64 * d;
            prop_assert!((dx[i] as f64 - wd).abs() <= 1e-5 * (1.0 + wd.abs()), "{:?}' at {}: {} want {}", op, v, dx[i], wd);
        }
    }
}

/// The backend's convolution (forward, input and weight gradients) against
/// naive loops over [`for_each_entry`], with the f32 bound of a length-k dot
/// product (k = c kh kw forward, oc for the input, n oh ow for the weight).
fn check_conv(g: &Conv2dGeometry, oc: usize, seed: u64) -> Result<(), String> {
    let (ckk, ohw) = (g.c * g.kh * g.kw, g.oh * g.ow);
    let x = values(seed, g.n * g.c * g.h * g.w);
    let wt = values(seed ^ 1, oc * ckk);
    let dy = values(seed ^ 2, g.n * oc * ohw);
    let y = Backend::<f32>::conv2d(&Cpu, &x, &wt, g, oc).map_err(|e| e.to_string())?;
    let (dx, dw) = Backend::<f32>::conv2d_backward(&Cpu, &x, &wt, &dy, g, oc, true, true)
        .map_err(|e| e.to_string())?;
    let (dx, dw) = (dx.ok_or("no dx")?, dw.ok_or("no dw")?);
    let mut want_y = vec![(0f64, 0f64); y.len()];
    let mut want_dx = vec![(0f64, 0f64); x.len()];
    let mut want_dw = vec![(0f64, 0f64); wt.len()];
    for_each_entry(g, |col, src| {
        let Some(i) = src else { return };
        let (s, rest) = (col / (ckk * ohw), col % (ckk * ohw));
        let (r, p) = (rest / ohw, rest % ohw);
        for o in 0..oc {
            let (wv, yi) = (wt[o * ckk + r] as f64, (s * oc + o) * ohw + p);
            let (xv, gv) = (x[i] as f64, dy[yi] as f64);
            let add = |t: &mut (f64, f64), v: f64| {
                t.0 += v;
                t.1 += v.abs();
            };
            add(&mut want_y[yi], wv * xv);
            add(&mut want_dx[i], wv * gv);
            add(&mut want_dw[o * ckk + r], xv * gv);
        }
    });
    let cmp = |what: &str, got: &[f32], want: &[(f64, f64)], k: usize| {
        if got.len() != want.len() {
            return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
        }
        for (i, (&v, &(w, mag))) in got.iter().zip(want).enumerate() {
            let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30;
            // Written so that a NaN fails.
            let within = (v as f64 - w).abs() <= tol;
            if !within {
                return Err(format!("{what} {g:?} oc {oc} at {i}: {v} vs {w}"));
            }
        }
        Ok(())
    };
    cmp("conv2d", &y, &want_y, ckk)?;
    cmp("input gradient", &dx, &want_dx, oc * g.kh * g.kw)?;
    cmp("weight gradient", &dw, &want_dw, g.n * ohw)
}

/// Shapes whose column matrices fill several of the backend's chunks
/// (about 2^20 values each): 147,456 values per sample, 7 samples a
/// chunk, so 16 samples are chunks of 7, 7 and 2 (the weight gradient
/// accumulated over chunks, a short last chunk), and a stem-like shape of
/// 1.8 million values per sample, one sample a chunk. A late ResNet stage
/// (7x7 planes, 28,224 values per sample, 37 samples a chunk) puts the
/// samples of a chunk side by side: 40 samples are side-by-side chunks of
/// 37 and 3, 38 samples one of 37 and a last chunk of one sample, in the
/// per-sample layout.
#[test]
fn conv2d_in_several_chunks_matches_naive_loops() {
    for (g, oc) in [
        (geometry(16, 4, 64, 64, (3, 3), 1, 1).unwrap(), 3),
        (geometry(2, 3, 224, 224, (7, 7), 2, 3).unwrap(), 2),
        (geometry(9, 2, 40, 63, (3, 3), 2, 1).unwrap(), 5),
        (geometry(40, 64, 7, 7, (3, 3), 1, 1).unwrap(), 4),
        (geometry(38, 64, 7, 7, (3, 3), 1, 1).unwrap(), 3),
    ] {
        check_conv(&g, oc, 7).unwrap();
    }
}
