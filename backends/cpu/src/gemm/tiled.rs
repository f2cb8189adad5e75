//! Our own blocked f32 GEMM around the per-ISA tile kernels in `simd`.
//!
//! Layout follows the usual Goto/BLIS scheme, cut down to what small and
//! skinny shapes need: the k dimension is cut into `KC` slices; B is packed
//! into zero-padded `NR`-wide panels (so a panel sits in L1 and edge columns
//! need no special case), and A is read in place through its strides unless
//! the plan asks for it to be packed too (worth it when A is re-read across
//! many B panels from a layout with poor locality).

use crate::simd::{self, Isa};
use std::cell::RefCell;

type PanelFn = unsafe fn(
    usize,
    usize,
    usize,
    *const f32,
    isize,
    isize,
    *const f32,
    usize,
    *mut f32,
    usize,
    bool,
);
type GemvFn = unsafe fn(usize, usize, *const f32, usize, *const f32, *mut f32);
type GerFn = unsafe fn(usize, usize, f32, *const f32, *const f32, *mut f32, usize);
type PackedPanelFn =
    unsafe fn(usize, usize, usize, *const f32, *const f32, usize, *mut f32, usize, bool);
type PackFn = unsafe fn(usize, usize, *const f32, usize, *mut f32, usize);
type DotFn = unsafe fn(usize, usize, usize, *const f32, usize, *const f32, usize, *mut f32, usize);

/// The kernels of one instruction set.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub mr: usize,
    pub nr: usize,
    /// All row tiles of one B panel (`scalar::panel`).
    pub panel: PanelFn,
    /// `panel` for an A packed by [`pack_a`].
    pub panel_packed: PackedPanelFn,
    pub gemv_n: GemvFn,
    pub gemv_t: GemvFn,
    pub ger: GerFn,
    /// Packs a B panel that is stored transposed (see `scalar::pack_panel_t`).
    pub pack_bt: PackFn,
    /// `C = A B` by dot products when A's rows and B's columns are both
    /// contiguous along k (`avx512::dot_nt`, `avx2::dot_nt`), for few columns; `None` where
    /// the instruction set has no such kernel.
    pub dot_nt: Option<DotFn>,
}

impl Kernel {
    /// Panics if `isa` is not available: the function pointers below are only
    /// sound to call on a CPU that has it.
    pub(crate) fn for_isa(isa: Isa) -> Kernel {
        simd::check(isa);
        match isa {
            Isa::Scalar => Kernel {
                mr: simd::scalar::MR,
                nr: simd::scalar::NR,
                panel: simd::scalar::panel,
                panel_packed: simd::scalar::panel_packed,
                gemv_n: simd::scalar::gemv_n,
                gemv_t: simd::scalar::gemv_t,
                ger: simd::scalar::ger,
                pack_bt: simd::scalar::pack_panel_t,
                dot_nt: None,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernel {
                mr: simd::avx2::MR,
                nr: simd::avx2::NR,
                panel: simd::avx2::panel,
                panel_packed: simd::avx2::panel_packed,
                gemv_n: simd::avx2::gemv_n,
                gemv_t: simd::avx2::gemv_t,
                ger: simd::avx2::ger,
                pack_bt: simd::avx2::pack_panel_t,
                dot_nt: Some(simd::avx2::dot_nt),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Kernel {
                mr: simd::avx512::MR,
                nr: simd::avx512::NR,
                panel: simd::avx512::panel,
                panel_packed: simd::avx512::panel_packed,
                gemv_n: simd::avx512::gemv_n,
                gemv_t: simd::avx512::gemv_t,
                ger: simd::avx512::ger,
                pack_bt: simd::avx2::pack_panel_t,
                dot_nt: Some(simd::avx512::dot_nt),
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("only the scalar kernels exist off x86_64"),
        }
    }
}

/// A read-only strided matrix: element `(i, j)` lives at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a View is only ever built from a shared slice that outlives the GEMM call.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// Row-major `[rows, cols]` storage, read transposed when `trans`.
    pub(crate) fn new(data: &[f32], cols: usize, trans: bool) -> View {
        let ld = cols as isize;
        if trans {
            View {
                ptr: data.as_ptr(),
                rs: 1,
                cs: ld,
            }
        } else {
            View {
                ptr: data.as_ptr(),
                rs: ld,
                cs: 1,
            }
        }
    }

    #[inline]
    unsafe fn at(&self, i: usize, j: usize) -> *const f32 {
        self.ptr.offset(i as isize * self.rs + j as isize * self.cs)
    }

    /// The sub-matrix starting at `(i, j)`.
    #[inline]
    pub(crate) fn offset(&self, i: usize, j: usize) -> View {
        // SAFETY: callers only offset within the matrix the view describes.
        View {
            ptr: unsafe { self.at(i, j) },
            ..*self
        }
    }
}

/// Most depth of one k slice for the 16-wide AVX2 (and 8-wide scalar) panels:
/// a packed `KC x NR` B panel is 24 KiB, inside a 32 KiB L1. `k` is cut into
/// equal slices no deeper than this, so there is no short last slice that
/// would reload C for little work (k = 288 is one slice, not 256 + 32).
pub(crate) const KC: usize = 384;
/// The same for the 32-wide AVX-512 panels (32 KiB).
pub(crate) const KC_WIDE: usize = 256;
/// Most rows of A per block: an `MC x KC` slice of A (144 KiB) stays in L2 while every B panel passes by.
pub(crate) const MC: usize = 96;
/// Columns of B packed at once (`KC x NC` = 1.5 MiB), bounding the per-thread pack buffer.
pub(crate) const NC: usize = 1024;

/// B panels per task from which a row-major A is packed too. At batch 64 on
/// 2 threads, packing A measured up to 15% faster with 25 or more panels per
/// thread (the input-gradient products, n = 784-9600) and 6-23% slower with 4
/// or 8 (the forward products, n = 128-256), in the same interleaved runs.
pub(crate) const PACK_A_PANELS: usize = 16;

/// Rows of A above which a B stored row by row is packed (see [`Plan::choose`]).
pub(crate) const PACK_B_ROWS: usize = 384;
/// Row distance of B (bytes) from which narrow in-place panels thrash L1.
pub(crate) const FAR_ROW_BYTES: usize = 16 << 10;

/// Which operands to copy into kernel-friendly panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub pack_a: bool,
    /// Pack B even where its rows could be read in place (always packed when read transposed).
    pub pack_b: bool,
}

impl Plan {
    /// Packing costs an extra pass over the operand, so it pays when the packed
    /// copy is re-read many times. A B panel is re-read by every row tile: a B
    /// stored row by row is packed only when A has more rows than
    /// [`PACK_B_ROWS`]. With fewer, the first tile's loads of an in-place
    /// panel overlap its multiply-adds where a separate packing pass stalls on
    /// them (panel rows are 1-38 KB apart at the encoder shapes, a new page
    /// every row or two, which the hardware prefetchers do not follow; the
    /// kernels prefetch the next panel themselves where rows are a page or
    /// more apart): the batch-64 `A B` products measured 77-89% of the faster
    /// of numpy / torch packed and 89-104% in place, and with 128-288 rows
    /// (the fc weight gradients `dy^T x`, the conv2 input gradients) in place
    /// was 3-12% faster than packed on AVX-512 and 2-11% on AVX2, in the same
    /// interleaved runs, except for the 16-wide AVX2 panels of a B whose rows
    /// are [`FAR_ROW_BYTES`] or more apart (the audio fc, rows 38 KB apart:
    /// 46% of the reference in place, 96% packed). A B stored transposed is
    /// always packed.
    ///
    /// A is re-read once per B panel. It is packed when there are several
    /// panels and its in-place layout scatters a tile's rows (A read
    /// transposed), or when each of the `tasks` sharing the columns has many
    /// panels ([`PACK_A_PANELS`]).
    pub(crate) fn choose(
        kern: &Kernel,
        m: usize,
        n: usize,
        a: View,
        b: View,
        tasks: usize,
    ) -> Plan {
        let panels = n.div_ceil(kern.nr);
        let pack_a = m > kern.mr
            && ((panels >= 4 && a.cs != 1) || panels.div_ceil(tasks.max(1)) >= PACK_A_PANELS);
        let far_rows = b.rs.unsigned_abs() * 4 >= FAR_ROW_BYTES;
        let pack_b = m > PACK_B_ROWS || (m > MC && kern.nr < 32 && far_rows);
        Plan { pack_a, pack_b }
    }
}

thread_local! {
    /// Per-thread pack buffers, grown on demand and reused across calls (no allocation in steady state).
    static PACKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn ensure(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// Copies `kc` rows of `w <= N` values (stride `ld`) into rows of `N` (zero-padded).
/// `N` is a constant so full rows compile to a few vector moves, not a memcpy call.
#[inline(always)]
unsafe fn pack_rows<const N: usize>(
    kc: usize,
    w: usize,
    src: *const f32,
    ld: isize,
    dst: *mut f32,
) {
    if w == N {
        for p in 0..kc {
            std::ptr::copy_nonoverlapping(src.offset(p as isize * ld), dst.add(p * N), N);
        }
    } else {
        for p in 0..kc {
            std::ptr::copy_nonoverlapping(src.offset(p as isize * ld), dst.add(p * N), w);
            std::slice::from_raw_parts_mut(dst.add(p * N + w), N - w).fill(0.0);
        }
    }
}

#[inline]
unsafe fn pack_rows_dyn(n: usize, kc: usize, w: usize, src: *const f32, ld: isize, dst: *mut f32) {
    match n {
        4 => pack_rows::<4>(kc, w, src, ld, dst),
        6 => pack_rows::<6>(kc, w, src, ld, dst),
        8 => pack_rows::<8>(kc, w, src, ld, dst),
        16 => pack_rows::<16>(kc, w, src, ld, dst),
        32 => pack_rows::<32>(kc, w, src, ld, dst),
        _ => {
            for p in 0..kc {
                for j in 0..n {
                    *dst.add(p * n + j) = if j < w {
                        *src.offset(p as isize * ld + j as isize)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Packs `kc` rows of the B panel of width `w` starting at `b` into `dst`
/// (`NR` contiguous values per k step, zero-padded past `w`).
unsafe fn pack_b_panel(kern: &Kernel, kc: usize, w: usize, b: View, dst: *mut f32) {
    let nr = kern.nr;
    if b.cs == 1 {
        pack_rows_dyn(nr, kc, w, b.ptr, b.rs, dst);
    } else if b.rs == 1 {
        (kern.pack_bt)(kc, w, b.ptr, b.cs as usize, dst, nr);
    } else {
        for p in 0..kc {
            for j in 0..nr {
                *dst.add(p * nr + j) = if j < w { *b.at(p, j) } else { 0.0 };
            }
        }
    }
}

/// Panels of a wide row-major B packed together: each k step then reads
/// `PACK_GROUP * NR` contiguous values of a row instead of one cache line per
/// row and panel. With rows a page or more apart (n = 9600: 38 KB) packing one
/// panel touched a different page for every row (1.3x slower on that shape);
/// with narrower B the group would only push packed panels out of L1 before use.
const PACK_GROUP: usize = 4;

/// Packs the `kc x cols` block of a row-major B at `b` into `cols.div_ceil(nr)`
/// consecutive panels at `dst` (panel g at `dst + g * kc * nr`, zero-padded).
unsafe fn pack_b_group(nr: usize, kc: usize, cols: usize, b: View, dst: *mut f32) {
    debug_assert_eq!(b.cs, 1);
    let panels = cols.div_ceil(nr);
    for p in 0..kc {
        let row = b.ptr.offset(p as isize * b.rs);
        for g in 0..panels {
            let w = nr.min(cols - g * nr);
            pack_rows_dyn(nr, 1, w, row.add(g * nr), 0, dst.add(g * kc * nr + p * nr));
        }
    }
}

/// Packs the `mc x kc` block of A at `a` into `MR`-row tiles: element `(i, p)`
/// of tile `t` at `t * kc * MR + p * MR + i`.
unsafe fn pack_a(mr: usize, mc: usize, kc: usize, a: View, dst: *mut f32) {
    for (t, i0) in (0..mc).step_by(mr).enumerate() {
        let h = mr.min(mc - i0);
        let tile = dst.add(t * kc * mr);
        if a.rs == 1 {
            // Rows of the tile are contiguous in memory for each k step.
            pack_rows_dyn(mr, kc, h, a.at(i0, 0), a.cs, tile);
        } else {
            for i in 0..h {
                let row = a.at(i0 + i, 0);
                for p in 0..kc {
                    *tile.add(p * mr + i) = *row.offset(p as isize * a.cs);
                }
            }
        }
    }
}

/// Single-threaded `C = A B` for `A: m x k`, `B: k x n`, `C` row-major with
/// leading dimension `ldc`. Handles every size, including `k == 0`.
///
/// # Safety
/// The views must describe readable `m x k` and `k x n` matrices and `c` a
/// writable `m x n` block that overlaps neither.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_st(
    kern: &Kernel,
    plan: Plan,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: *mut f32,
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            std::slice::from_raw_parts_mut(c.add(i * ldc), n).fill(0.0);
        }
        return;
    }
    let (mr, nr) = (kern.mr, kern.nr);
    // Full-width panels of a B stored row by row can be read where they are.
    let b_in_place = b.cs == 1 && !plan.pack_b;
    PACKS.with(|packs| {
        // A re-entrant call (not expected) would find the buffers borrowed; fall back to fresh ones.
        let mut fresh = (Vec::new(), Vec::new());
        let mut guard = packs.try_borrow_mut();
        let (bbuf, abuf) = match guard.as_deref_mut() {
            Ok((b, a)) => (b, a),
            Err(_) => (&mut fresh.0, &mut fresh.1),
        };
        let kc_max = if nr > 16 { KC_WIDE } else { KC };
        let slice = k.div_ceil(k.div_ceil(kc_max));
        // Equal row blocks of at most MC rows, whole tiles each (128 rows = 2 x 66, not 96 + 32).
        let row_block = m.div_ceil(m.div_ceil(MC)).next_multiple_of(mr);
        for pc in (0..k).step_by(slice) {
            let kc = slice.min(k - pc);
            let acc = pc > 0;
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                let panels = nc.div_ceil(nr);
                let b_blk = b.offset(pc, jc);
                ensure(bbuf, panels * kc * nr);
                // Panel q: its data pointer and k-step stride.
                // Rows of B a page or more apart: pack panels in groups (see `PACK_GROUP`).
                let group = if b.rs.unsigned_abs() * 4 >= 4096 {
                    PACK_GROUP
                } else {
                    1
                };
                let mut panel_src = |q: usize| -> (*const f32, usize) {
                    let j0 = q * nr;
                    let w = nr.min(nc - j0);
                    if b_in_place && w == nr {
                        (b_blk.offset(0, j0).ptr, b_blk.rs as usize)
                    } else if b.cs == 1 && !b_in_place {
                        if q.is_multiple_of(group) {
                            let cols = (group * nr).min(nc - j0);
                            pack_b_group(
                                nr,
                                kc,
                                cols,
                                b_blk.offset(0, j0),
                                bbuf.as_mut_ptr().add(q * kc * nr),
                            );
                        }
                        (bbuf.as_ptr().add(q * kc * nr), nr)
                    } else {
                        let dst = bbuf.as_mut_ptr().add(q * kc * nr);
                        pack_b_panel(kern, kc, w, b_blk.offset(0, j0), dst);
                        (dst as *const f32, nr)
                    }
                };
                // Panel sources on the stack (every ISA's panels are at least 8 wide),
                // filled while the first row block runs: each panel is packed right
                // before its first use, so packing (memory-bound) and the tile
                // kernels (compute-bound) interleave instead of running as two phases.
                let mut srcs = [(std::ptr::null::<f32>(), 0usize); NC / 8];
                debug_assert!(panels <= srcs.len());
                for ic in (0..m).step_by(row_block) {
                    let mc = row_block.min(m - ic);
                    let a_blk = a.offset(ic, pc);
                    if plan.pack_a {
                        ensure(abuf, mc.div_ceil(mr) * kc * mr);
                        pack_a(mr, mc, kc, a_blk, abuf.as_mut_ptr());
                    }
                    for q in 0..panels {
                        if ic == 0 {
                            srcs[q] = panel_src(q);
                        }
                        let (bp, ldb) = srcs[q];
                        let j0 = q * nr;
                        let w = nr.min(nc - j0);
                        let cp = c.add(ic * ldc + jc + j0);
                        if plan.pack_a {
                            (kern.panel_packed)(mc, w, kc, abuf.as_ptr(), bp, ldb, cp, ldc, acc);
                        } else {
                            (kern.panel)(
                                mc, w, kc, a_blk.ptr, a_blk.rs, a_blk.cs, bp, ldb, cp, ldc, acc,
                            );
                        }
                    }
                }
            }
        }
    });
}
