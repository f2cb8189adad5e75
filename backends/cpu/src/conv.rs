use crate::CpuFloat;
use mla_core::Conv2dGeometry;
use rayon::prelude::*;

/// Input row/column for output position `o` and kernel offset `k`, if inside the image.
#[inline]
fn src_pos(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let p = (o * stride + k).checked_sub(pad)?;
    (p < size).then_some(p)
}

pub(crate) fn im2col<T: CpuFloat>(x: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let (ckk, ohw) = (g.col_rows(), g.col_cols());
    let mut cols = vec![T::zero(); g.n * ckk * ohw];
    let plane = g.h * g.w;
    cols.par_chunks_mut(ckk * ohw).enumerate().for_each(|(n, out)| {
        let img = &x[n * g.c * plane..(n + 1) * g.c * plane];
        for c in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let row = &mut out[((c * g.kh + ki) * g.kw + kj) * ohw..][..ohw];
                    for oy in 0..g.oh {
                        let Some(iy) = src_pos(oy, ki, g.stride, g.pad, g.h) else { continue };
                        let src = &img[c * plane + iy * g.w..][..g.w];
                        let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                        for (ox, d) in dst.iter_mut().enumerate() {
                            if let Some(ix) = src_pos(ox, kj, g.stride, g.pad, g.w) {
                                *d = src[ix];
                            }
                        }
                    }
                }
            }
        }
    });
    cols
}

pub(crate) fn col2im<T: CpuFloat>(cols: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let (ckk, ohw) = (g.col_rows(), g.col_cols());
    let plane = g.h * g.w;
    let mut x = vec![T::zero(); g.n * g.c * plane];
    x.par_chunks_mut(g.c * plane).enumerate().for_each(|(n, img)| {
        let src_n = &cols[n * ckk * ohw..(n + 1) * ckk * ohw];
        for c in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let row = &src_n[((c * g.kh + ki) * g.kw + kj) * ohw..][..ohw];
                    for oy in 0..g.oh {
                        let Some(iy) = src_pos(oy, ki, g.stride, g.pad, g.h) else { continue };
                        let dst = &mut img[c * plane + iy * g.w..][..g.w];
                        for (ox, &v) in row[oy * g.ow..(oy + 1) * g.ow].iter().enumerate() {
                            if let Some(ix) = src_pos(ox, kj, g.stride, g.pad, g.w) {
                                dst[ix] = dst[ix] + v;
                            }
                        }
                    }
                }
            }
        }
    });
    x
}
