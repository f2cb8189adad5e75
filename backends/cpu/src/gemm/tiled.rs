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

type TileFn = unsafe fn(usize, usize, usize, *const f32, isize, isize, *const f32, usize, *mut f32, usize, bool);
type GemvFn = unsafe fn(usize, usize, *const f32, usize, *const f32, *mut f32);
type GerFn = unsafe fn(usize, usize, f32, *const f32, *const f32, *mut f32, usize);

/// The kernels of one instruction set.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub mr: usize,
    pub nr: usize,
    pub tile: TileFn,
    pub gemv_n: GemvFn,
    pub gemv_t: GemvFn,
    pub ger: GerFn,
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
                tile: simd::scalar::tile,
                gemv_n: simd::scalar::gemv_n,
                gemv_t: simd::scalar::gemv_t,
                ger: simd::scalar::ger,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernel {
                mr: simd::avx2::MR,
                nr: simd::avx2::NR,
                tile: simd::avx2::tile,
                gemv_n: simd::avx2::gemv_n,
                gemv_t: simd::avx2::gemv_t,
                ger: simd::avx2::ger,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Kernel {
                mr: simd::avx512::MR,
                nr: simd::avx512::NR,
                tile: simd::avx512::tile,
                gemv_n: simd::avx512::gemv_n,
                gemv_t: simd::avx512::gemv_t,
                ger: simd::avx512::ger,
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
            View { ptr: data.as_ptr(), rs: 1, cs: ld }
        } else {
            View { ptr: data.as_ptr(), rs: ld, cs: 1 }
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
        View { ptr: unsafe { self.at(i, j) }, ..*self }
    }
}

/// Depth of one k slice: a packed `KC x NR` B panel is 16 KiB with AVX2, 32 KiB with AVX-512.
pub(crate) const KC: usize = 256;
/// Rows of A per block: an `MC x KC` slice of A (96 KiB) stays in L2 while every B panel passes by.
pub(crate) const MC: usize = 96;
/// Columns of B packed at once (`KC x NC` = 1 MiB), bounding the per-thread pack buffer.
pub(crate) const NC: usize = 1024;

/// Which operands to copy into kernel-friendly panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub pack_a: bool,
}

impl Plan {
    /// Packing A pays when A is re-read across many B panels and its in-place
    /// layout scatters a tile's rows (A read transposed, or rows far apart).
    pub(crate) fn choose(kern: &Kernel, m: usize, n: usize, a: View) -> Plan {
        let panels = n.div_ceil(kern.nr);
        let pack_a = m > kern.mr && panels >= 4 && a.cs != 1;
        Plan { pack_a }
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

/// Packs the `kc x nc` block of B at `b` into `NR`-wide panels, panel-major,
/// `NR` contiguous values per k step, zero-padded past `nc`.
unsafe fn pack_b(nr: usize, kc: usize, nc: usize, b: View, dst: &mut [f32]) {
    for (q, j0) in (0..nc).step_by(nr).enumerate() {
        let w = nr.min(nc - j0);
        let panel = &mut dst[q * kc * nr..(q + 1) * kc * nr];
        if b.cs == 1 {
            for p in 0..kc {
                let src = std::slice::from_raw_parts(b.at(p, j0), w);
                let row = &mut panel[p * nr..(p + 1) * nr];
                row[..w].copy_from_slice(src);
                row[w..].fill(0.0);
            }
        } else {
            if w < nr {
                panel.fill(0.0);
            }
            // B read transposed: walk each source column (contiguous in k when rs == 1).
            for j in 0..w {
                let col = b.at(0, j0 + j);
                for p in 0..kc {
                    panel[p * nr + j] = *col.offset(p as isize * b.rs);
                }
            }
        }
    }
}

/// Packs the `mc x kc` block of A at `a` into `MR`-row tiles: element `(i, p)`
/// of tile `t` at `t * kc * MR + p * MR + i`.
unsafe fn pack_a(mr: usize, mc: usize, kc: usize, a: View, dst: &mut [f32]) {
    for (t, i0) in (0..mc).step_by(mr).enumerate() {
        let h = mr.min(mc - i0);
        let tile = &mut dst[t * kc * mr..(t + 1) * kc * mr];
        if a.rs == 1 {
            for p in 0..kc {
                let src = std::slice::from_raw_parts(a.at(i0, p), h);
                tile[p * mr..p * mr + h].copy_from_slice(src);
            }
        } else {
            for i in 0..h {
                let row = a.at(i0 + i, 0);
                for p in 0..kc {
                    tile[p * mr + i] = *row.offset(p as isize * a.cs);
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
pub(crate) unsafe fn gemm_st(kern: &Kernel, plan: Plan, m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32, ldc: usize) {
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
    PACKS.with(|packs| {
        // A re-entrant call (not expected) would find the buffers borrowed; fall back to fresh ones.
        let mut fresh = (Vec::new(), Vec::new());
        let mut guard = packs.try_borrow_mut();
        let (bbuf, abuf) = match guard.as_deref_mut() {
            Ok((b, a)) => (b, a),
            Err(_) => (&mut fresh.0, &mut fresh.1),
        };
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let acc = pc > 0;
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                let panels = nc.div_ceil(nr);
                ensure(bbuf, panels * kc * nr);
                pack_b(nr, kc, nc, b.offset(pc, jc), bbuf);
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let a_blk = a.offset(ic, pc);
                    let (a_base, rsa, csa, tile_step) = if plan.pack_a {
                        ensure(abuf, mc.div_ceil(mr) * kc * mr);
                        pack_a(mr, mc, kc, a_blk, abuf);
                        (abuf.as_ptr(), 1, mr as isize, (kc * mr) as isize)
                    } else {
                        (a_blk.ptr, a_blk.rs, a_blk.cs, mr as isize * a_blk.rs)
                    };
                    for q in 0..panels {
                        let j0 = q * nr;
                        let w = nr.min(nc - j0);
                        let bp = bbuf.as_ptr().add(q * kc * nr);
                        for (t, i0) in (0..mc).step_by(mr).enumerate() {
                            let h = mr.min(mc - i0);
                            let ap = a_base.offset(t as isize * tile_step);
                            let cp = c.add((ic + i0) * ldc + jc + j0);
                            (kern.tile)(h, w, kc, ap, rsa, csa, bp, nr, cp, ldc, acc);
                        }
                    }
                }
            }
        }
    });
}
