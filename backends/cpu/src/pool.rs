//! 2-D pooling over `planes` independent `h x w` planes, several planes per
//! rayon task. Windows are read row by row from slices (no per-element index
//! arithmetic or bounds test); the common 2x2 / stride 2 max pool has its own loop.
//! Max pooling with padding clips each window to the plane instead of reading
//! a padded copy: the padding is -inf, so it never wins and needs no storage.

use crate::alloc::uninit_vec;
use crate::{CpuFloat, PAR_CHUNK};
use mla_core::Pool2dGeometry;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Planes per rayon task, so each task touches about `PAR_CHUNK` inputs.
fn planes_per_task(g: &Pool2dGeometry) -> usize {
    (PAR_CHUNK / (g.h * g.w).max(1)).max(1)
}

/// `v` replaces the running maximum `best`: strictly greater (so the first
/// maximum wins ties), or the first NaN (NaN propagates).
#[inline(always)]
fn beats<T: CpuFloat>(v: T, best: T) -> bool {
    #[allow(clippy::eq_op)]
    let (v_nan, best_nan) = (v != v, best != best);
    v > best || (v_nan && !best_nan)
}

fn max_plane<T: CpuFloat>(
    src: &[T],
    y: &mut [MaybeUninit<T>],
    arg: &mut [MaybeUninit<u32>],
    g: &Pool2dGeometry,
) {
    let w = g.w;
    if g.kh == 2 && g.kw == 2 && g.stride == 2 && g.pad == 0 {
        for oy in 0..g.oh {
            let r0 = &src[2 * oy * w..][..2 * g.ow];
            let r1 = &src[(2 * oy + 1) * w..][..2 * g.ow];
            let (yr, ar) = (
                &mut y[oy * g.ow..(oy + 1) * g.ow],
                &mut arg[oy * g.ow..(oy + 1) * g.ow],
            );
            for (ox, ((yo, ao), (p0, p1))) in yr
                .iter_mut()
                .zip(ar)
                .zip(r0.chunks_exact(2).zip(r1.chunks_exact(2)))
                .enumerate()
            {
                let i0 = (2 * oy * w + 2 * ox) as u32;
                let (mut bv, mut bi) = (p0[0], i0);
                if beats(p0[1], bv) {
                    (bv, bi) = (p0[1], i0 + 1);
                }
                if beats(p1[0], bv) {
                    (bv, bi) = (p1[0], i0 + w as u32);
                }
                if beats(p1[1], bv) {
                    (bv, bi) = (p1[1], i0 + w as u32 + 1);
                }
                yo.write(bv);
                ao.write(bi);
            }
        }
        return;
    }
    for oy in 0..g.oh {
        let rows = clipped(oy, g.stride, g.pad, g.kh, g.h);
        for ox in 0..g.ow {
            let cols = clipped(ox, g.stride, g.pad, g.kw, w);
            // The geometry keeps pad <= k / 2, so the clipped window is never empty.
            let start = rows.start * w + cols.start;
            let (mut bv, mut bi) = (src[start], start);
            for iy in rows.clone() {
                let row = iy * w;
                for (ix, &v) in src[row + cols.start..row + cols.end].iter().enumerate() {
                    if beats(v, bv) {
                        (bv, bi) = (v, row + cols.start + ix);
                    }
                }
            }
            y[oy * g.ow + ox].write(bv);
            arg[oy * g.ow + ox].write(bi as u32);
        }
    }
}

/// Input rows (or columns) of window `o`: `o * stride - pad ..` for `k`, clipped to `0..size`.
#[inline]
fn clipped(o: usize, stride: usize, pad: usize, k: usize, size: usize) -> std::ops::Range<usize> {
    let start = o * stride;
    start.saturating_sub(pad)..(start + k).saturating_sub(pad).min(size)
}

pub(crate) fn max_pool2d<T: CpuFloat>(x: &[T], g: &Pool2dGeometry) -> (Vec<T>, Vec<u32>) {
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    let len = g.planes * oplane;
    if len == 0 {
        return (Vec::new(), Vec::new());
    }
    let per = planes_per_task(g);
    let mut arg_out = Vec::with_capacity(len);
    // SAFETY: `max_plane` writes every output and index of each plane.
    let y = unsafe {
        uninit_vec(len, |y| {
            let arg = &mut arg_out.spare_capacity_mut()[..len];
            y.par_chunks_mut(per * oplane)
                .zip(arg.par_chunks_mut(per * oplane))
                .enumerate()
                .for_each(|(t, (y, arg))| {
                    for (k, (yp, ap)) in
                        y.chunks_mut(oplane).zip(arg.chunks_mut(oplane)).enumerate()
                    {
                        let p = t * per + k;
                        max_plane(&x[p * plane..(p + 1) * plane], yp, ap, g);
                    }
                })
        })
    };
    // SAFETY: filled above, alongside `y`.
    unsafe { arg_out.set_len(len) };
    (y, arg_out)
}

pub(crate) fn max_pool2d_backward<T: CpuFloat>(
    grad: &[T],
    arg: &[u32],
    g: &Pool2dGeometry,
) -> Vec<T> {
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    if g.planes * plane == 0 {
        return Vec::new();
    }
    let per = planes_per_task(g);
    zeroed_planes(g.planes * plane, per * plane, plane, |p, dxp| {
        for (&i, &gv) in arg[p * oplane..(p + 1) * oplane]
            .iter()
            .zip(&grad[p * oplane..(p + 1) * oplane])
        {
            let d = &mut dxp[i as usize];
            *d = *d + gv;
        }
    })
}

/// A `len`-element gradient built plane by plane: tasks of `chunk` elements,
/// each `plane` zeroed and then handed to `add(plane index, plane)` while it
/// is still in cache, instead of a separate zeroing pass over the whole
/// buffer first (the zeros are the same; so is every sum). `chunk` is a
/// multiple of `plane`.
fn zeroed_planes<T: CpuFloat>(
    len: usize,
    chunk: usize,
    plane: usize,
    add: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let per = chunk / plane;
    // SAFETY: every plane of every chunk is written with zeros before `add`
    // reads it, so all `len` elements are initialised.
    unsafe {
        uninit_vec(len, |dx| {
            dx.par_chunks_mut(chunk).enumerate().for_each(|(t, dx)| {
                for (k, dxp) in dx.chunks_mut(plane).enumerate() {
                    for d in dxp.iter_mut() {
                        d.write(T::zero());
                    }
                    // SAFETY: just initialised.
                    let dxp = &mut *(dxp as *mut [MaybeUninit<T>] as *mut [T]);
                    add(t * per + k, dxp);
                }
            })
        })
    }
}

pub(crate) fn avg_pool2d<T: CpuFloat>(x: &[T], g: &Pool2dGeometry) -> Vec<T> {
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    let len = g.planes * oplane;
    if len == 0 {
        return Vec::new();
    }
    let inv = T::one() / T::lit((g.kh * g.kw) as f64);
    let per = planes_per_task(g);
    let fill = |p: usize, y: &mut [MaybeUninit<T>]| {
        let src = &x[p * plane..(p + 1) * plane];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let start = oy * g.stride * g.w + ox * g.stride;
                let mut s = T::zero();
                for ki in 0..g.kh {
                    for &v in &src[start + ki * g.w..][..g.kw] {
                        s = s + v;
                    }
                }
                y[oy * g.ow + ox].write(s * inv);
            }
        }
    };
    // SAFETY: every output of every plane is written by `fill`.
    unsafe {
        uninit_vec(len, |y| {
            y.par_chunks_mut(per * oplane)
                .enumerate()
                .for_each(|(t, y)| {
                    for (k, yp) in y.chunks_mut(oplane).enumerate() {
                        fill(t * per + k, yp);
                    }
                })
        })
    }
}

pub(crate) fn avg_pool2d_backward<T: CpuFloat>(grad: &[T], g: &Pool2dGeometry) -> Vec<T> {
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    let inv = T::one() / T::lit((g.kh * g.kw) as f64);
    if g.planes * plane == 0 {
        return Vec::new();
    }
    let per = planes_per_task(g);
    zeroed_planes(g.planes * plane, per * plane, plane, |p, dxp| {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let v = grad[p * oplane + oy * g.ow + ox] * inv;
                let start = oy * g.stride * g.w + ox * g.stride;
                for ki in 0..g.kh {
                    for d in &mut dxp[start + ki * g.w..][..g.kw] {
                        *d = *d + v;
                    }
                }
            }
        }
    })
}
