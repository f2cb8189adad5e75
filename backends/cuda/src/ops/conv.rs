//! im2col / col2im for convolution by GEMM. col2im is written as a gather
//! (each input pixel sums the column entries that read it) so it needs no
//! atomics and adds in the same order as the CPU backend.

use super::{need_len, u, BLOCK};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::{Conv2dGeometry, Result};
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 7,
    name: "conv",
    source: SOURCE,
    functions: &["im2col_u32", "im2col_u64", "col2im_u32", "col2im_u64"],
};

const SOURCE: &str = r#"
struct ConvGeo { u64 n, c, h, w, kh, kw, stride, pad, oh, ow; };

template <typename I>
__device__ void im2col_impl(const T* __restrict__ x, T* __restrict__ cols, const ConvGeo& g) {
    I total = (I)(g.n * g.c * g.kh * g.kw * g.oh * g.ow);
    I ow = (I)g.ow, oh = (I)g.oh, kw = (I)g.kw, kh = (I)g.kh, C = (I)g.c, h = (I)g.h, w = (I)g.w;
    I stride = (I)g.stride, pad = (I)g.pad;
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (I)blockDim.x * gridDim.x) {
        I t = i;
        I ox = t % ow; t /= ow;
        I oy = t % oh; t /= oh;
        I kj = t % kw; t /= kw;
        I ki = t % kh; t /= kh;
        I c = t % C;
        I n = t / C;
        I iy = oy * stride + ki, ix = ox * stride + kj;   /* padded coordinates */
        T v = (T)0;
        if (iy >= pad && ix >= pad && iy - pad < h && ix - pad < w)
            v = x[((n * C + c) * h + (iy - pad)) * w + (ix - pad)];
        cols[i] = v;
    }
}
template <typename I>
__device__ void col2im_impl(const T* __restrict__ cols, T* __restrict__ x, const ConvGeo& g) {
    I total = (I)(g.n * g.c * g.h * g.w);
    I ow = (I)g.ow, oh = (I)g.oh, kw = (I)g.kw, kh = (I)g.kh, C = (I)g.c, h = (I)g.h, w = (I)g.w;
    I stride = (I)g.stride, pad = (I)g.pad;
    I ohw = oh * ow, ckk = C * kh * kw;
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (I)blockDim.x * gridDim.x) {
        I t = i;
        I ix = t % w; t /= w;
        I iy = t % h; t /= h;
        I c = t % C;
        I n = t / C;
        const T* base = cols + (n * ckk + c * kh * kw) * ohw;
        T acc = (T)0;
        for (I ki = 0; ki < kh; ++ki) {
            I ty = iy + pad;
            if (ty < ki) break;
            ty -= ki;
            if (ty % stride != 0) continue;
            I oy = ty / stride;
            if (oy >= oh) continue;
            for (I kj = 0; kj < kw; ++kj) {
                I tx = ix + pad;
                if (tx < kj) break;
                tx -= kj;
                if (tx % stride != 0) continue;
                I ox = tx / stride;
                if (ox >= ow) continue;
                acc += base[(ki * kw + kj) * ohw + oy * ow + ox];
            }
        }
        x[i] = acc;
    }
}
extern "C" __global__ void im2col_u32(const T* x, T* cols, ConvGeo g) { im2col_impl<u32>(x, cols, g); }
extern "C" __global__ void im2col_u64(const T* x, T* cols, ConvGeo g) { im2col_impl<u64>(x, cols, g); }
extern "C" __global__ void col2im_u32(const T* cols, T* x, ConvGeo g) { col2im_impl<u32>(cols, x, g); }
extern "C" __global__ void col2im_u64(const T* cols, T* x, ConvGeo g) { col2im_impl<u64>(cols, x, g); }
"#;

#[repr(C)]
struct ConvGeo {
    n: u64,
    c: u64,
    h: u64,
    w: u64,
    kh: u64,
    kw: u64,
    stride: u64,
    pad: u64,
    oh: u64,
    ow: u64,
}

fn geo(g: &Conv2dGeometry) -> ConvGeo {
    ConvGeo {
        n: u(g.n),
        c: u(g.c),
        h: u(g.h),
        w: u(g.w),
        kh: u(g.kh),
        kw: u(g.kw),
        stride: u(g.stride),
        pad: u(g.pad),
        oh: u(g.oh),
        ow: u(g.ow),
    }
}

/// 32-bit index arithmetic when every index (plus a grid stride) fits.
fn small(g: &Conv2dGeometry) -> bool {
    let cols = g.n * g.col_rows() * g.col_cols();
    let input = g.n * g.c * (g.h + 2 * g.pad) * (g.w + 2 * g.pad);
    cols.max(input) < (1 << 31)
}

pub(crate) fn im2col<T: CudaFloat>(
    dev: &Arc<Device>,
    x: &DeviceBuffer<T>,
    g: &Conv2dGeometry,
) -> Result<DeviceBuffer<T>> {
    let op = "im2col";
    need_len(op, "input", x.len(), g.n * g.c * g.h * g.w)?;
    dev.enter(op)?;
    let total = g.n * g.col_rows() * g.col_cols();
    let cols = dev.alloc::<T>(total, op)?;
    if total == 0 {
        return Ok(cols);
    }
    let f = dev.kernel::<T>(
        &MODULE,
        if small(g) { "im2col_u32" } else { "im2col_u64" },
        op,
    )?;
    let (xp, cp, geo) = (x.ptr(), cols.ptr(), geo(g));
    dev.launch(
        f,
        (dev.grid_for(total, BLOCK), 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [arg(&xp), arg(&cp), arg(&geo)],
        op,
    )?;
    Ok(cols)
}

pub(crate) fn col2im<T: CudaFloat>(
    dev: &Arc<Device>,
    cols: &DeviceBuffer<T>,
    g: &Conv2dGeometry,
) -> Result<DeviceBuffer<T>> {
    let op = "col2im";
    need_len(op, "columns", cols.len(), g.n * g.col_rows() * g.col_cols())?;
    dev.enter(op)?;
    let total = g.n * g.c * g.h * g.w;
    let x = dev.alloc::<T>(total, op)?;
    if total == 0 {
        return Ok(x);
    }
    let f = dev.kernel::<T>(
        &MODULE,
        if small(g) { "col2im_u32" } else { "col2im_u64" },
        op,
    )?;
    let (cp, xp, geo) = (cols.ptr(), x.ptr(), geo(g));
    dev.launch(
        f,
        (dev.grid_for(total, BLOCK), 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [arg(&cp), arg(&xp), arg(&geo)],
        op,
    )?;
    Ok(x)
}
