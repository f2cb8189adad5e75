//! im2col / col2im, one sample per rayon task. For each kernel offset the
//! valid output columns form one contiguous range (computed once per row), so
//! the inner loops are plain copies / adds with the zero padding written
//! around them, not a bounds test per element.

use crate::alloc::uninit_vec;
use crate::CpuFloat;
use mla_core::Conv2dGeometry;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

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

pub(crate) fn im2col<T: CpuFloat>(x: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let (ckk, ohw) = (g.col_rows(), g.col_cols());
    let plane = g.h * g.w;
    let per_sample = ckk * ohw;
    if g.n * per_sample == 0 {
        return Vec::new();
    }
    let fill = |n: usize, out: &mut [MaybeUninit<T>]| {
        let img = &x[n * g.c * plane..(n + 1) * g.c * plane];
        for c in 0..g.c {
            for ki in 0..g.kh {
                let rows = valid_range(g.oh, ki, g.stride, g.pad, g.h);
                for kj in 0..g.kw {
                    let cols = valid_range(g.ow, kj, g.stride, g.pad, g.w);
                    let row = &mut out[((c * g.kh + ki) * g.kw + kj) * ohw..][..ohw];
                    write_zeros(&mut row[..rows.start * g.ow]);
                    write_zeros(&mut row[rows.end * g.ow..]);
                    for oy in rows.clone() {
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
            }
        }
    };
    // SAFETY: each sample's block is fully written by `fill` (zeros outside the valid ranges).
    unsafe {
        uninit_vec(g.n * per_sample, |cols| {
            cols.par_chunks_mut(per_sample)
                .enumerate()
                .for_each(|(n, out)| fill(n, out))
        })
    }
}

pub(crate) fn col2im<T: CpuFloat>(cols: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let (ckk, ohw) = (g.col_rows(), g.col_cols());
    let plane = g.h * g.w;
    let per_sample = g.c * plane;
    if g.n * per_sample == 0 {
        return Vec::new();
    }
    let fill = |n: usize, img: &mut [MaybeUninit<T>]| {
        let src_n = &cols[n * ckk * ohw..(n + 1) * ckk * ohw];
        for c in 0..g.c {
            // One plane at a time: zeroed and accumulated while it sits in L1.
            let dst_plane = &mut img[c * plane..(c + 1) * plane];
            write_zeros(dst_plane);
            // SAFETY: just initialised.
            let dst_plane = unsafe { &mut *(dst_plane as *mut [MaybeUninit<T>] as *mut [T]) };
            for ki in 0..g.kh {
                let rows = valid_range(g.oh, ki, g.stride, g.pad, g.h);
                for kj in 0..g.kw {
                    let cols_r = valid_range(g.ow, kj, g.stride, g.pad, g.w);
                    if cols_r.is_empty() {
                        continue;
                    }
                    let row = &src_n[((c * g.kh + ki) * g.kw + kj) * ohw..][..ohw];
                    for oy in rows.clone() {
                        let iy = oy * g.stride + ki - g.pad;
                        let dst = &mut dst_plane[iy * g.w..(iy + 1) * g.w];
                        let src = &row[oy * g.ow..(oy + 1) * g.ow][cols_r.clone()];
                        let ix0 = cols_r.start * g.stride + kj - g.pad;
                        if g.stride == 1 {
                            for (d, &s) in dst[ix0..].iter_mut().zip(src) {
                                *d = *d + s;
                            }
                        } else {
                            for (d, &s) in dst[ix0..].iter_mut().step_by(g.stride).zip(src) {
                                *d = *d + s;
                            }
                        }
                    }
                }
            }
        }
    };
    // SAFETY: each sample's block is fully written: every plane is zeroed, then accumulated.
    unsafe {
        uninit_vec(g.n * per_sample, |x| {
            x.par_chunks_mut(per_sample)
                .enumerate()
                .for_each(|(n, img)| fill(n, img))
        })
    }
}
