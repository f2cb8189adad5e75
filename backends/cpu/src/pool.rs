use crate::CpuFloat;
use mla_core::Pool2dGeometry;
use rayon::prelude::*;

pub(crate) fn max_pool2d<T: CpuFloat>(x: &[T], g: &Pool2dGeometry) -> (Vec<T>, Vec<u32>) {
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    let mut y = vec![T::zero(); g.planes * oplane];
    let mut arg = vec![0u32; g.planes * oplane];
    y.par_chunks_mut(oplane).zip(arg.par_chunks_mut(oplane)).enumerate().for_each(|(p, (y, arg))| {
        let src = &x[p * plane..(p + 1) * plane];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut best = (oy * g.stride) * g.w + ox * g.stride;
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let i = (oy * g.stride + ki) * g.w + ox * g.stride + kj;
                        // Strict `>` keeps the first maximum; NaN propagates by winning once seen.
                        if src[i] > src[best] || (src[i].is_nan() && !src[best].is_nan()) {
                            best = i;
                        }
                    }
                }
                y[oy * g.ow + ox] = src[best];
                arg[oy * g.ow + ox] = best as u32;
            }
        }
    });
    (y, arg)
}

pub(crate) fn max_pool2d_backward<T: CpuFloat>(grad: &[T], arg: &[u32], g: &Pool2dGeometry) -> Vec<T> {
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    let mut dx = vec![T::zero(); g.planes * plane];
    dx.par_chunks_mut(plane).enumerate().for_each(|(p, dx)| {
        for o in 0..oplane {
            let i = arg[p * oplane + o] as usize;
            dx[i] = dx[i] + grad[p * oplane + o];
        }
    });
    dx
}

pub(crate) fn avg_pool2d<T: CpuFloat>(x: &[T], g: &Pool2dGeometry) -> Vec<T> {
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    let inv = T::one() / T::lit((g.kh * g.kw) as f64);
    let mut y = vec![T::zero(); g.planes * oplane];
    y.par_chunks_mut(oplane).enumerate().for_each(|(p, y)| {
        let src = &x[p * plane..(p + 1) * plane];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut s = T::zero();
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        s = s + src[(oy * g.stride + ki) * g.w + ox * g.stride + kj];
                    }
                }
                y[oy * g.ow + ox] = s * inv;
            }
        }
    });
    y
}

pub(crate) fn avg_pool2d_backward<T: CpuFloat>(grad: &[T], g: &Pool2dGeometry) -> Vec<T> {
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    let inv = T::one() / T::lit((g.kh * g.kw) as f64);
    let mut dx = vec![T::zero(); g.planes * plane];
    dx.par_chunks_mut(plane).enumerate().for_each(|(p, dx)| {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let v = grad[p * oplane + oy * g.ow + ox] * inv;
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let i = (oy * g.stride + ki) * g.w + ox * g.stride + kj;
                        dx[i] = dx[i] + v;
                    }
                }
            }
        }
    });
    dx
}
