//! Batched GEMM: shape dispatch between our SIMD kernels and matrixmultiply,
//! and the threading policy.
//!
//! Threading: every parallel loop in this crate runs on rayon's pool or on the
//! polling workers of `handoff` (sized from it), never both for one GEMM, so
//! the cores are never oversubscribed. matrixmultiply is built without its own
//! `threading` pool: a lone large f32 GEMM (at least [`LARGE_FLOPS`], every
//! dimension at least [`LARGE_DIM`]) is cut into one block of columns per
//! thread here, each a single-threaded matrixmultiply call; f64 (gradient
//! checks) runs single-threaded. Batched GEMMs and everything else run our
//! kernels, one item or one block of columns / rows per task.

pub(crate) mod tiled;

use crate::simd;
use mla_core::{Element, Error, GemmConfig, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use tiled::{Kernel, Plan, View};

/// Element types the CPU backend computes in.
pub trait CpuFloat: Element {
    /// `C[i] = op(A[i]) op(B[i])` for the whole batch, every element of `c`
    /// written (lengths checked by the caller; `c` may start uninitialised).
    #[doc(hidden)]
    fn gemm_batch(cfg: &GemmConfig, a: &[Self], b: &[Self], c: &mut [MaybeUninit<Self>]);
    /// `y = A x` for a row-major `m x k` matrix.
    #[doc(hidden)]
    fn gemv(m: usize, k: usize, a: &[Self], x: &[Self], y: &mut [Self]);
    /// `A += alpha * (x[i] * y[j])` for a row-major `m x n` matrix.
    #[doc(hidden)]
    fn ger(m: usize, n: usize, alpha: Self, x: &[Self], y: &[Self], a: &mut [Self]);
}

impl CpuFloat for f32 {
    fn gemm_batch(cfg: &GemmConfig, a: &[f32], b: &[f32], c: &mut [MaybeUninit<f32>]) {
        // SAFETY: `c` holds batch * m * n elements (checked by the caller).
        unsafe { gemm_f32(simd::active_isa(), cfg, a, b, c.as_mut_ptr().cast()) }
    }
    fn gemv(m: usize, k: usize, a: &[f32], x: &[f32], y: &mut [f32]) {
        crate::kernels::gemv(simd::active_isa(), false, m, k, a, x, y)
    }
    fn ger(m: usize, n: usize, alpha: f32, x: &[f32], y: &[f32], a: &mut [f32]) {
        crate::kernels::ger(simd::active_isa(), m, n, alpha, x, y, a)
    }
}

impl CpuFloat for f64 {
    fn gemm_batch(cfg: &GemmConfig, a: &[f64], b: &[f64], c: &mut [MaybeUninit<f64>]) {
        // f64 is for gradient checks: matrixmultiply (single-threaded), one item after another.
        let GemmConfig {
            m,
            n,
            k,
            trans_a,
            trans_b,
            stride_a,
            stride_b,
            ..
        } = *cfg;
        let (rsa, csa) = mm_strides(trans_a, m, k);
        let (rsb, csb) = mm_strides(trans_b, k, n);
        for (i, ci) in c.chunks_mut(m * n).enumerate() {
            let (ai, bi) = (&a[i * stride_a..], &b[i * stride_b..]);
            // SAFETY: the caller checked that each item's operands lie inside `a` and `b`;
            // with beta = 0 matrixmultiply writes C without reading it.
            unsafe {
                matrixmultiply::dgemm(
                    m,
                    k,
                    n,
                    1.0,
                    ai.as_ptr(),
                    rsa,
                    csa,
                    bi.as_ptr(),
                    rsb,
                    csb,
                    0.0,
                    ci.as_mut_ptr().cast(),
                    n as isize,
                    1,
                )
            }
        }
    }
    fn gemv(m: usize, k: usize, a: &[f64], x: &[f64], y: &mut [f64]) {
        for (yi, row) in y[..m].iter_mut().zip(a.chunks_exact(k.max(1))) {
            *yi = row[..k].iter().zip(x).map(|(a, x)| a * x).sum();
        }
    }
    fn ger(m: usize, n: usize, alpha: f64, x: &[f64], y: &[f64], a: &mut [f64]) {
        for (i, row) in a[..m * n].chunks_exact_mut(n.max(1)).enumerate() {
            for (aij, yj) in row.iter_mut().zip(y) {
                *aij += alpha * (x[i] * yj);
            }
        }
    }
}

/// matrixmultiply's (row stride, column stride) of an operand that is
/// `rows x cols` as used, stored row-major, or stored transposed when `trans`.
fn mm_strides(trans: bool, rows: usize, cols: usize) -> (isize, isize) {
    if trans {
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

/// What packing one element costs, in multiply-adds: a copy moves about two
/// elements a cycle from L2 where the tile kernels do 16 multiply-adds.
const PACK_COST: usize = 8;
/// Below this many flops per rayon task, splitting costs more than it saves.
const TASK_FLOPS: usize = 1 << 20;
/// A lone f32 GEMM with at least this many flops and every dimension at least
/// [`LARGE_DIM`] goes to matrixmultiply, faster than our kernels there (their
/// blocking is cut for small and skinny shapes).
pub(crate) const LARGE_FLOPS: usize = 1 << 28;
pub(crate) const LARGE_DIM: usize = 512;
/// `A B^T` products with at most this many columns and at least
/// [`DOT_MIN_K`] depth go to the dot-product kernel (where the ISA has one):
/// the first convolutions' weight gradients (n = 9, k = 784-2520) and the
/// head's forward (n = 10).
pub(crate) const DOT_MAX_N: usize = 16;
pub(crate) const DOT_MIN_K: usize = 64;

pub(crate) fn gemm<T: CpuFloat>(cfg: &GemmConfig, a: &[T], b: &[T]) -> Result<Vec<T>> {
    let GemmConfig { batch, m, n, k, .. } = *cfg;
    if a.len() < cfg.lhs_len() || b.len() < cfg.rhs_len() {
        return Err(Error::invalid(
            "gemm",
            format!("buffers too short for batch {batch} of {m}x{k} @ {k}x{n}"),
            &[&[a.len()], &[b.len()]],
        ));
    }
    if batch * m * n == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: gemm_batch writes every element of C.
    Ok(unsafe { crate::alloc::uninit_vec(batch * m * n, |c| T::gemm_batch(cfg, a, b, c)) })
}

/// A raw pointer to C shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint regions; the owning slice outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

thread_local! {
    /// Set while this thread runs an item of a batched GEMM's parallel loop
    /// (the only place a GEMM runs inside a parallel loop of this crate).
    static IN_ITEM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f()` marked as a parallel loop's item for [`run_tasks`].
fn as_item(f: impl FnOnce()) {
    // Restored on unwind too, so a panicking item leaves no stale mark.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_ITEM.set(self.0);
        }
    }
    let _restore = Restore(IN_ITEM.replace(true));
    f();
}

/// Runs `f(i)` for `i < t`: `f(0)` on the calling thread, the rest as rayon
/// tasks. A parallel iterator started from outside the pool would park the
/// caller and hand everything to the workers, which costs a wake-up and a
/// hand-back (10-20 us measured here, a tenth of a 25 MFLOP GEMM); this way the
/// caller computes while one worker wakes. At most `t - 1` workers are busy,
/// plus the caller: never more threads than `t`.
fn run_tasks(t: usize, f: impl Fn(usize) + Sync) {
    // A lone GEMM: the polling workers of `handoff` start at once. A batched
    // GEMM's item inside a parallel loop: rayon's own workers are busy anyway.
    if !IN_ITEM.get() && crate::handoff::run(t, &f) {
        return;
    }
    rayon::in_place_scope(|s| {
        let f = &f;
        for i in 1..t {
            s.spawn(move |_| f(i));
        }
        f(0);
    });
}

/// One f32 GEMM item on `isa`, split over up to `tasks` rayon tasks.
///
/// # Safety
/// `a`/`b` describe readable `m x k` / `k x n` matrices, `c` a writable
/// row-major `m x n` buffer (no overlap).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_item(
    kern: &Kernel,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: *mut f32,
    tasks: usize,
) {
    if n == 1 {
        // C is a column: op(A) times the vector op(B) (contiguous either way).
        if a.cs == 1 {
            (kern.gemv_n)(m, k, a.ptr, a.rs as usize, b.ptr, c);
        } else {
            (kern.gemv_t)(k, m, a.ptr, a.cs as usize, b.ptr, c);
        }
        return;
    }
    if m == 1 {
        // C is a row: C^T = op(B)^T times the vector op(A).
        if b.cs == 1 {
            (kern.gemv_t)(k, n, b.ptr, b.rs as usize, a.ptr, c);
        } else {
            (kern.gemv_n)(n, k, b.ptr, b.cs as usize, a.ptr, c);
        }
        return;
    }
    if let Some(dot) = kern.dot_nt {
        if a.cs == 1 && b.rs == 1 && n <= DOT_MAX_N && k >= DOT_MIN_K {
            // Rows of A against columns of B, both contiguous: blocks of 4
            // rows per task.
            let blocks = m.div_ceil(4);
            let t = tasks.min(blocks).max(1);
            let c = SharedMut(c);
            run_tasks(t, |i| {
                let (i0, i1) = ((blocks * i / t) * 4, ((blocks * (i + 1) / t) * 4).min(m));
                #[allow(clippy::redundant_locals)]
                let (a, b, c) = (a, b, c);
                dot(
                    i1 - i0,
                    n,
                    k,
                    a.ptr.offset(i0 as isize * a.rs),
                    a.rs as usize,
                    b.ptr,
                    b.cs as usize,
                    c.0.add(i0 * n),
                    n,
                );
            });
            return;
        }
    }
    let plan = Plan::choose(kern, m, n, a, b, tasks);
    let panels = n.div_ceil(kern.nr);
    let tiles = m.div_ceil(kern.mr);
    let c = SharedMut(c);
    // Each task packs its own operands: split by columns and every task packs
    // all of A (if A is packed at all), split by rows and every task packs all
    // of B. Pick the split whose busiest task does less: its share of the
    // multiply-adds (whole panels or tiles, so an uneven split shows) plus
    // what it packs.
    let col_tasks = tasks.min(panels);
    let row_tasks = tasks.min(tiles);
    let pack = |on: bool, elems: usize| if on { PACK_COST * elems } else { 0 };
    let col_cost = panels.div_ceil(col_tasks) * kern.nr * (m * k + pack(plan.pack_b, k))
        + pack(plan.pack_a, m * k);
    let row_cost = tiles.div_ceil(row_tasks) * kern.mr * (n * k + pack(plan.pack_a, k))
        + pack(plan.pack_b, k * n);
    let by_cols = col_cost <= row_cost;
    if by_cols && col_tasks > 1 {
        let t = col_tasks;
        run_tasks(t, |i| {
            let (q0, q1) = (panels * i / t, panels * (i + 1) / t);
            let (j0, j1) = (q0 * kern.nr, (q1 * kern.nr).min(n));
            // Rebinding captures the whole Send wrapper, not its raw-pointer field.
            #[allow(clippy::redundant_locals)]
            let c = c;
            tiled::gemm_st(
                kern,
                plan,
                m,
                j1 - j0,
                k,
                a,
                b.offset(0, j0),
                c.0.add(j0),
                n,
            );
        });
    } else if !by_cols && row_tasks > 1 {
        let t = row_tasks;
        run_tasks(t, |i| {
            let (q0, q1) = (tiles * i / t, tiles * (i + 1) / t);
            let (i0, i1) = (q0 * kern.mr, (q1 * kern.mr).min(m));
            #[allow(clippy::redundant_locals)]
            let c = c;
            tiled::gemm_st(
                kern,
                plan,
                i1 - i0,
                n,
                k,
                a.offset(i0, 0),
                b,
                c.0.add(i0 * n),
                n,
            );
        });
    } else {
        tiled::gemm_st(kern, plan, m, n, k, a, b, c.0, n);
    }
}

/// A lone large f32 GEMM: one block of columns per thread, each block a
/// single-threaded matrixmultiply call (each packs all of A, a pass over
/// `m x k` against `m n k / threads` multiply-adds). Measured at 1024^3 on 2
/// threads: 139 GFLOP/s against 131 for matrixmultiply's own `threading` pool
/// in the same interleaved run (BENCHMARKS.md).
///
/// # Safety
/// `a` and `b` describe readable `m x k` and `k x n` matrices, `c` a writable
/// row-major `m x n` buffer (no overlap).
unsafe fn large_f32(m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32, threads: usize) {
    // Block edges on whole cache lines of C's rows.
    const ALIGN: usize = 16;
    let t = threads.min(n / ALIGN).max(1);
    let c = SharedMut(c);
    run_tasks(t, |i| {
        // Rebinding captures the whole Send/Sync wrappers, not their raw-pointer fields.
        #[allow(clippy::redundant_locals)]
        let (a, b, c) = (a, b, c);
        let edge = |i: usize| if i == t { n } else { n * i / t / ALIGN * ALIGN };
        let (j0, j1) = (edge(i), edge(i + 1));
        let bj = b.offset(0, j0);
        // SAFETY: columns j0..j1 of B and C lie inside the operands (caller's contract);
        // tasks write disjoint column blocks of C; beta = 0, so C is written, not read.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                j1 - j0,
                1.0,
                a.ptr,
                a.rs,
                a.cs,
                bj.ptr,
                bj.rs,
                bj.cs,
                0.0,
                c.0.add(j0),
                n as isize,
                1,
            )
        }
    });
}

/// The f32 batched GEMM on a given instruction set (the public `kernels::gemm_batch`).
///
/// # Safety
/// `a` and `b` hold every item's operands (per `cfg`); `c` is writable for
/// `batch * m * n` elements, which are all written (it may start uninitialised).
pub(crate) unsafe fn gemm_f32(isa: simd::Isa, cfg: &GemmConfig, a: &[f32], b: &[f32], c: *mut f32) {
    let GemmConfig {
        batch,
        m,
        n,
        k,
        trans_a,
        trans_b,
        stride_a,
        stride_b,
    } = *cfg;
    if batch == 0 || m * n == 0 {
        return;
    }
    let flops = 2 * m * n * k;
    let threads = rayon::current_num_threads();
    // Item i's operands as strided views.
    let views = |i: usize| {
        (
            View::new(&a[i * stride_a..], if trans_a { m } else { k }, trans_a),
            View::new(&b[i * stride_b..], if trans_b { k } else { n }, trans_b),
        )
    };
    if batch == 1 && flops >= LARGE_FLOPS && m.min(n).min(k) >= LARGE_DIM {
        let (av, bv) = views(0);
        // SAFETY: per this function's contract.
        unsafe { large_f32(m, n, k, av, bv, c, threads) };
        return;
    }
    let kern = Kernel::for_isa(isa);
    let c = SharedMut(c);
    let item = |i: usize, tasks: usize| {
        let (av, bv) = views(i);
        #[allow(clippy::redundant_locals)]
        let c = c;
        // SAFETY: item i's operands lie inside `a` and `b` and its output block is its own.
        unsafe { gemm_item(&kern, m, n, k, av, bv, c.0.add(i * m * n), tasks) }
    };
    let total = batch * flops;
    if threads <= 1 || total < 2 * TASK_FLOPS {
        (0..batch).for_each(|i| item(i, 1));
    } else if batch >= threads {
        // Whole items per task, several small items grouped so each task is worth the hand-off.
        let min_len = TASK_FLOPS.div_ceil(flops.max(1));
        (0..batch)
            .into_par_iter()
            .with_min_len(min_len)
            .for_each(|i| as_item(|| item(i, 1)));
    } else {
        let tasks = (threads / batch).max(1).min(flops / TASK_FLOPS).max(1);
        if batch == 1 {
            // A lone GEMM, split by `run_tasks`.
            item(0, tasks);
        } else {
            (0..batch)
                .into_par_iter()
                .for_each(|i| as_item(|| item(i, tasks)));
        }
    }
}
