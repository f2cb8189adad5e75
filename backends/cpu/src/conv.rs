//! Convolution by im2col and GEMM, in chunks of samples.
//!
//! The batch is worked through a few samples at a time: their column
//! matrices (`[count, c kh kw, oh ow]`) in a scratch buffer of about
//! [`COLUMN_BUDGET`] elements that is reused from chunk to chunk, one
//! batched GEMM per chunk, no column matrix of the whole batch (which is
//! `c kh kw / stride^2` times the input, 470 MB for ResNet-18's stem at
//! batch 64) and none kept for the backward pass, which rebuilds the
//! columns of its chunk from the input. The chunks follow from the
//! geometry and the batch alone, so results do not depend on the thread
//! count; a batch split differently (data-parallel ranks) changes them at
//! float rounding only: the order of the weight-gradient sums and, side by
//! side, the shapes of the GEMMs.
//!
//! A chunk's columns are laid out one of two ways ([`Layout`]): sample
//! after sample (`[count, c kh kw, oh ow]`, one GEMM per sample, batched)
//! when a plane has many output positions, or side by side (`[c kh kw,
//! count, oh ow]`, one GEMM for the chunk) when it has few: a 7x7 or 4x4
//! plane makes per-sample GEMMs 49 or 16 columns wide, and per-sample
//! weight gradients `oc x c kh kw` each, written out and summed afterwards
//! (at ResNet-18's late stages more values than the activations). Side by
//! side, the weight gradient is one GEMM whose depth runs over the chunk's
//! samples, at the cost of copying the output (forward) or its gradient
//! (backward) between `[count, oc, oh ow]` and `[oc, count, oh ow]`.
//!
//! For each kernel offset the valid output columns form one contiguous
//! range (computed once per row), so the inner loops are plain copies / adds
//! with the zero padding written around them, not a bounds test per element.

use crate::alloc::uninit_vec;
use crate::CpuFloat;
use mla_core::{Conv2dGeometry, Error, GemmConfig, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Elements of a chunk's column matrix (4 MB in f32): the samples of a
/// chunk are as many as fit, at least one.
const COLUMN_BUDGET: usize = 1 << 20;

/// Samples per chunk.
fn chunk_len(g: &Conv2dGeometry) -> usize {
    (COLUMN_BUDGET / (g.col_rows() * g.col_cols()).max(1)).clamp(1, g.n.max(1))
}

/// Output planes with fewer positions than this are worked side by side.
const WIDE_BELOW: usize = 256;

/// How a chunk of `count` samples' column matrices (and the matching
/// output-gradient copy) is laid out; see the module documentation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// `[count, rows, oh ow]`: row `r` of sample `s` at `(s rows + r) oh ow`.
    PerSample,
    /// `[rows, count, oh ow]`: row `r` of sample `s` at `(r count + s) oh ow`.
    Wide,
}

impl Layout {
    fn of(g: &Conv2dGeometry, count: usize) -> Layout {
        if count > 1 && g.col_cols() < WIDE_BELOW {
            Layout::Wide
        } else {
            Layout::PerSample
        }
    }

    fn other(self) -> Layout {
        match self {
            Layout::PerSample => Layout::Wide,
            Layout::Wide => Layout::PerSample,
        }
    }

    /// Length of the runs that are contiguous in this layout: a sample's
    /// `rows` rows, or one row of the `count` samples.
    fn block(self, rows: usize, count: usize, cols: usize) -> usize {
        match self {
            Layout::PerSample => rows * cols,
            Layout::Wide => count * cols,
        }
    }

    /// (sample, row) of the `j`-th row of contiguous run `i` (see [`Layout::block`]).
    fn sample_row(self, i: usize, j: usize) -> (usize, usize) {
        match self {
            Layout::PerSample => (i, j),
            Layout::Wide => (j, i),
        }
    }

    /// Writes every `cols`-long row of a block of `count` samples x `rows`
    /// rows in this layout with `f(sample, row, values)`: one task per run
    /// that is contiguous in the layout (a sample's rows, or one row of
    /// every sample).
    fn for_each_row<T: Send>(
        self,
        out: &mut [MaybeUninit<T>],
        rows: usize,
        count: usize,
        cols: usize,
        f: impl Fn(usize, usize, &mut [MaybeUninit<T>]) + Sync,
    ) {
        out[..count * rows * cols]
            .par_chunks_mut(self.block(rows, count, cols))
            .enumerate()
            .for_each(|(i, run)| {
                for (j, row) in run.chunks_mut(cols).enumerate() {
                    let (s, r) = self.sample_row(i, j);
                    f(s, r, row);
                }
            });
    }

    /// Offset of row `r` of sample `s` in a `[.., rows, ..]` block of `count`
    /// samples with `cols` values per row.
    #[inline]
    fn row(self, s: usize, r: usize, rows: usize, count: usize, cols: usize) -> usize {
        match self {
            Layout::PerSample => (s * rows + r) * cols,
            Layout::Wide => (r * count + s) * cols,
        }
    }
}

/// Output positions `o` whose input position `o * stride + k - pad` lies in `0..size`.
#[inline]
fn valid_range(out: usize, k: usize, stride: usize, pad: usize, size: usize) -> Range<usize> {
    // o * stride + k >= pad  <=>  o >= ceil((pad - k) / stride)
    let lo = if k >= pad {
        0
    } else {
        (pad - k).div_ceil(stride)
    };
    // o * stride + k - pad < size  <=>  o * stride < size + pad - k
    let hi = if size + pad <= k {
        0
    } else {
        (size + pad - k).div_ceil(stride)
    };
    lo.min(out)..hi.min(out).max(lo.min(out))
}

fn write_zeros<T: CpuFloat>(dst: &mut [MaybeUninit<T>]) {
    for d in dst {
        d.write(T::zero());
    }
}

/// # Safety
/// Every element of `s` is initialised.
unsafe fn assume_init<T>(s: &[MaybeUninit<T>]) -> &[T] {
    // SAFETY: MaybeUninit<T> has T's layout; the caller vouches for the values.
    unsafe { &*(s as *const [MaybeUninit<T>] as *const [T]) }
}

/// A buffer of `len` not yet written elements.
fn scratch<T>(len: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// Row `r = (c, ki, kj)` of the column matrix of one sample `img` (its
/// `c * h * w` values): `oh * ow` elements, zeros where the kernel offset
/// falls into the padding.
fn fill_row<T: CpuFloat>(img: &[T], g: &Conv2dGeometry, r: usize, row: &mut [MaybeUninit<T>]) {
    let plane = g.h * g.w;
    let (c, ki, kj) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
    let rows = valid_range(g.oh, ki, g.stride, g.pad, g.h);
    let cols = valid_range(g.ow, kj, g.stride, g.pad, g.w);
    write_zeros(&mut row[..rows.start * g.ow]);
    write_zeros(&mut row[rows.end * g.ow..]);
    if g.stride == 1 && g.ow == g.w && !rows.is_empty() && !cols.is_empty() {
        // A "same" convolution: the valid rows are one contiguous block of
        // the plane shifted by `kj - pad` columns, so one copy of the block
        // (short rows cost more in per-row work than in bytes), then the
        // columns the shift brought in from neighbouring rows set to zero.
        let d = kj as isize - g.pad as isize;
        let len = rows.len() * g.w;
        let iy0 = rows.start + ki - g.pad;
        let src = &img[c * plane + iy0 * g.w..][..len];
        let dst = &mut row[rows.start * g.ow..rows.end * g.ow];
        let (j0, j1) = ((-d).max(0) as usize, (len as isize - d.max(0)) as usize);
        let from = (j0 as isize + d) as usize;
        for (o, &v) in dst[j0..j1].iter_mut().zip(&src[from..from + (j1 - j0)]) {
            o.write(v);
        }
        write_zeros(&mut dst[..j0]);
        write_zeros(&mut dst[j1..]);
        for r in dst.chunks_exact_mut(g.ow) {
            write_zeros(&mut r[..cols.start]);
            write_zeros(&mut r[cols.end..]);
        }
        return;
    }
    for oy in rows {
        let iy = oy * g.stride + ki - g.pad;
        let src = &img[c * plane + iy * g.w..][..g.w];
        let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
        write_zeros(&mut dst[..cols.start]);
        write_zeros(&mut dst[cols.end..]);
        if cols.is_empty() {
            continue;
        }
        let ix0 = cols.start * g.stride + kj - g.pad;
        if g.stride == 1 {
            for (d, &s) in dst[cols.clone()].iter_mut().zip(&src[ix0..]) {
                d.write(s);
            }
        } else {
            for (d, &s) in dst[cols.clone()]
                .iter_mut()
                .zip(src[ix0..].iter().step_by(g.stride))
            {
                d.write(s);
            }
        }
    }
}

/// Adds the column rows of channel `c` of one sample back into its plane
/// `dst` (`h * w` values, written: zeroed first). `row(r)` is row `r` of
/// the sample's column matrix.
fn add_plane<'a, T: CpuFloat>(
    g: &Conv2dGeometry,
    c: usize,
    dst: &mut [MaybeUninit<T>],
    row: impl Fn(usize) -> &'a [T],
) {
    // One plane at a time: zeroed and accumulated while it sits in L1.
    write_zeros(dst);
    // SAFETY: just initialised.
    let dst = unsafe { &mut *(dst as *mut [MaybeUninit<T>] as *mut [T]) };
    for ki in 0..g.kh {
        let rows = valid_range(g.oh, ki, g.stride, g.pad, g.h);
        for kj in 0..g.kw {
            let cols = valid_range(g.ow, kj, g.stride, g.pad, g.w);
            if cols.is_empty() {
                continue;
            }
            let src_row = row((c * g.kh + ki) * g.kw + kj);
            for oy in rows.clone() {
                let iy = oy * g.stride + ki - g.pad;
                let d = &mut dst[iy * g.w..(iy + 1) * g.w];
                let src = &src_row[oy * g.ow..(oy + 1) * g.ow][cols.clone()];
                let ix0 = cols.start * g.stride + kj - g.pad;
                if g.stride == 1 {
                    for (d, &s) in d[ix0..].iter_mut().zip(src) {
                        *d = *d + s;
                    }
                } else {
                    for (d, &s) in d[ix0..].iter_mut().step_by(g.stride).zip(src) {
                        *d = *d + s;
                    }
                }
            }
        }
    }
}

/// The whole batch's column matrices, `[n, c kh kw, oh ow]` (the backend's
/// `im2col`).
pub(crate) fn im2col<T: CpuFloat>(x: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let len = g.n * g.col_rows() * g.col_cols();
    if len == 0 {
        return Vec::new();
    }
    // SAFETY: `im2col_samples` writes every sample's rows in full.
    unsafe {
        uninit_vec(len, |cols| {
            im2col_samples(x, g, 0, g.n, Layout::PerSample, cols)
        })
    }
}

/// The adjoint of [`im2col`] (the backend's `col2im`).
pub(crate) fn col2im<T: CpuFloat>(cols: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let (ckk, ohw) = (g.col_rows(), g.col_cols());
    let plane = g.h * g.w;
    if g.n * g.c * plane == 0 {
        return Vec::new();
    }
    // SAFETY: every plane is written by `add_plane`.
    unsafe {
        uninit_vec(g.n * g.c * plane, |x| {
            x.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
                let (s, c) = (i / g.c, i % g.c);
                add_plane(g, c, dst, |r| &cols[(s * ckk + r) * ohw..][..ohw]);
            })
        })
    }
}

/// The column matrices of samples `s0 .. s0 + count` in `layout`.
fn im2col_samples<T: CpuFloat>(
    x: &[T],
    g: &Conv2dGeometry,
    s0: usize,
    count: usize,
    layout: Layout,
    out: &mut [MaybeUninit<T>],
) {
    let (ckk, ohw, chw) = (g.col_rows(), g.col_cols(), g.c * g.h * g.w);
    let img = |s: usize| &x[(s0 + s) * chw..][..chw];
    layout.for_each_row(out, ckk, count, ohw, |s, r, row| {
        fill_row(img(s), g, r, row)
    });
}

/// Copies `count` samples' `[oc, oh ow]` blocks of `src` in layout `from`
/// to `dst` in the other layout (`rows = oc`).
fn relayout<T: CpuFloat>(
    src: &[T],
    from: Layout,
    count: usize,
    oc: usize,
    ohw: usize,
    dst: &mut [MaybeUninit<T>],
) {
    let to = from.other();
    to.for_each_row(dst, oc, count, ohw, |s, o, row| {
        let at = from.row(s, o, oc, count, ohw);
        for (d, &v) in row.iter_mut().zip(&src[at..at + ohw]) {
            d.write(v);
        }
    });
}

/// The GEMMs `cfg` into `c` (every element written).
fn gemm_into<T: CpuFloat>(cfg: &GemmConfig, a: &[T], b: &[T], c: &mut [MaybeUninit<T>]) {
    debug_assert!(
        a.len() >= cfg.lhs_len()
            && b.len() >= cfg.rhs_len()
            && c.len() == cfg.batch * cfg.m * cfg.n
    );
    T::gemm_batch(cfg, a, b, c);
}

fn check_lengths(
    op: &'static str,
    g: &Conv2dGeometry,
    oc: usize,
    got: &[(&str, usize, usize)],
) -> Result<()> {
    for &(what, len, want) in got {
        if len != want {
            return Err(Error::invalid(
                op,
                format!(
                    "{what} holds {len} values, the geometry ({} x {} x {} x {} input, {oc} x {} x {} weight) needs {want}",
                    g.n, g.c, g.h, g.w, g.kh, g.kw
                ),
                &[&[len], &[want]],
            ));
        }
    }
    Ok(())
}

/// The forward convolution, `[n, oc, oh, ow]`.
pub(crate) fn conv2d<T: CpuFloat>(
    x: &[T],
    w: &[T],
    g: &Conv2dGeometry,
    oc: usize,
) -> Result<Vec<T>> {
    let (ckk, ohw, chw) = (g.col_rows(), g.col_cols(), g.c * g.h * g.w);
    check_lengths(
        "conv2d",
        g,
        oc,
        &[("input", x.len(), g.n * chw), ("weight", w.len(), oc * ckk)],
    )?;
    let per_out = oc * ohw;
    if g.n * per_out == 0 {
        return Ok(Vec::new());
    }
    let s_max = chunk_len(g);
    let mut cols = scratch::<T>(ckk * s_max * ohw);
    // The side-by-side output of a chunk, copied into the batch's layout.
    let mut y = scratch::<T>(match Layout::of(g, s_max) {
        Layout::Wide => s_max * per_out,
        Layout::PerSample => 0,
    });
    // SAFETY: every chunk's output block is written by its GEMM or copy.
    Ok(unsafe {
        uninit_vec(g.n * per_out, |out| {
            for s0 in (0..g.n).step_by(s_max) {
                let count = s_max.min(g.n - s0);
                let layout = Layout::of(g, count);
                im2col_samples(x, g, s0, count, layout, &mut cols);
                // SAFETY: the chunk's columns were just written.
                let c = assume_init(&cols[..count * ckk * ohw]);
                let dst = &mut out[s0 * per_out..(s0 + count) * per_out];
                match layout {
                    Layout::PerSample => gemm_into(&g.forward_gemm(oc, count), w, c, dst),
                    Layout::Wide => {
                        let y = &mut y[..count * per_out];
                        gemm_into(&one_gemm((oc, count * ohw, ckk), (false, false)), w, c, y);
                        // SAFETY: written in full by the GEMM.
                        relayout(assume_init(y), Layout::Wide, count, oc, ohw, dst);
                    }
                }
            }
        })
    })
}

/// One (unbatched) GEMM `[m, k] x [k, n]`, operands stored transposed where asked.
fn one_gemm((m, n, k): (usize, usize, usize), (trans_a, trans_b): (bool, bool)) -> GemmConfig {
    GemmConfig {
        batch: 1,
        m,
        n,
        k,
        trans_a,
        trans_b,
        stride_a: 0,
        stride_b: 0,
    }
}

/// Input and weight gradients of [`conv2d`] from the output gradient.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn conv2d_backward<T: CpuFloat>(
    x: &[T],
    w: &[T],
    grad: &[T],
    g: &Conv2dGeometry,
    oc: usize,
    need_x: bool,
    need_w: bool,
) -> Result<(Option<Vec<T>>, Option<Vec<T>>)> {
    let (ckk, ohw, chw) = (g.col_rows(), g.col_cols(), g.c * g.h * g.w);
    check_lengths(
        "conv2d backward",
        g,
        oc,
        &[
            ("input", x.len(), g.n * chw),
            ("weight", w.len(), oc * ckk),
            ("output gradient", grad.len(), g.n * oc * ohw),
        ],
    )?;
    let s_max = chunk_len(g);
    let wide = Layout::of(g, s_max) == Layout::Wide;
    let buf = |need: bool, len: usize| scratch::<T>(if need { len } else { 0 });
    let mut cols = buf(need_w, s_max * ckk * ohw);
    // The chunk's weight-gradient terms (one per sample, or one for the
    // chunk side by side), summed into `dw` in chunk and sample order.
    let mut part = buf(need_w, if wide { 1 } else { s_max } * oc * ckk);
    // The chunk's output gradient side by side.
    let mut dyw = buf(wide, s_max * oc * ohw);
    let mut dcols = buf(need_x, s_max * ckk * ohw);
    let mut dx = buf(need_x, g.n * chw);
    let mut dw = buf(need_w, oc * ckk);
    write_zeros(&mut dw);
    for s0 in (0..g.n).step_by(s_max) {
        let count = s_max.min(g.n - s0);
        let layout = Layout::of(g, count);
        let ld = count * ohw;
        let mut dy = &grad[s0 * oc * ohw..(s0 + count) * oc * ohw];
        if layout == Layout::Wide {
            relayout(dy, Layout::PerSample, count, oc, ohw, &mut dyw);
            // SAFETY: just written in full.
            dy = unsafe { assume_init(&dyw[..count * oc * ohw]) };
        }
        if need_w {
            im2col_samples(x, g, s0, count, layout, &mut cols);
            // SAFETY: the chunk's columns were just written.
            let c = unsafe { assume_init(&cols[..ckk * ld]) };
            let len = oc * ckk;
            let (cfg, terms) = match layout {
                Layout::PerSample => (g.weight_grad_gemm(oc, count), count),
                // dY [oc, count oh ow] x cols^T [count oh ow, ckk].
                Layout::Wide => (one_gemm((oc, ckk, ld), (false, true)), 1),
            };
            gemm_into(&cfg, dy, c, &mut part[..terms * len]);
            // SAFETY: written in full by the GEMM.
            let p = unsafe { assume_init(&part[..terms * len]) };
            dw.par_chunks_mut(4096).enumerate().for_each(|(j, d)| {
                for (i, d) in d.iter_mut().enumerate() {
                    let at = j * 4096 + i;
                    // SAFETY: zeroed before the loop, then only added to.
                    let mut acc = unsafe { d.assume_init() };
                    for s in 0..terms {
                        acc = acc + p[s * len + at];
                    }
                    d.write(acc);
                }
            });
        }
        if need_x {
            let cfg = match layout {
                Layout::PerSample => g.input_grad_gemm(oc, count),
                // W^T [ckk, oc] x dY [oc, count oh ow].
                Layout::Wide => one_gemm((ckk, ld, oc), (true, false)),
            };
            gemm_into(&cfg, w, dy, &mut dcols[..ckk * ld]);
            // SAFETY: written in full by the GEMM.
            let dc = unsafe { assume_init(&dcols[..ckk * ld]) };
            dx[s0 * chw..(s0 + count) * chw]
                .par_chunks_mut(g.h * g.w)
                .enumerate()
                .for_each(|(j, dst)| {
                    let (s, c) = (j / g.c, j % g.c);
                    add_plane(g, c, dst, |r| {
                        &dc[layout.row(s, r, ckk, count, ohw)..][..ohw]
                    });
                });
        }
    }
    // SAFETY: dx's planes and dw were written in full above.
    let done = |v: Vec<MaybeUninit<T>>| unsafe {
        let mut v = std::mem::ManuallyDrop::new(v);
        Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity())
    };
    Ok((need_x.then(|| done(dx)), need_w.then(|| done(dw))))
}
