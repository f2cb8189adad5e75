//! Max / average pooling (no padding) and their backward passes. The backward
//! kernels run one thread per input element and gather from the windows that
//! contain it: no atomics, no zero-fill, sums in the CPU backend's order.
//! When windows do not overlap (kernel <= stride, the usual 2x2 / stride 2),
//! max-pool backward instead runs one thread per stride x stride cell of the
//! input, which holds at most one window: it writes the cell (the gradient at
//! the argmax, zeros elsewhere) with a few index divisions per cell instead of
//! several per element.

use super::{need_len, u, BLOCK};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::{Pool2dGeometry, Result};
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 8,
    name: "pool",
    source: SOURCE,
    functions: &[
        "max_pool_u32",
        "max_pool_u64",
        "max_pool_backward_u32",
        "max_pool_backward_u64",
        "max_pool_backward_tiled_u32",
        "max_pool_backward_tiled_u64",
        "avg_pool_u32",
        "avg_pool_u64",
        "avg_pool_backward_u32",
        "avg_pool_backward_u64",
    ],
};

const SOURCE: &str = r#"
struct PoolGeo { u64 planes, h, w, kh, kw, stride, oh, ow; };

/* Range of window rows (or columns) containing input row i: [lo, hi]. */
template <typename I>
__device__ __forceinline__ void windows(I i, I k, I stride, I out, I& lo, I& hi) {
    lo = i >= k ? (i - k) / stride + 1 : 0;
    hi = i / stride;
    if (hi >= out) hi = out - 1;
}

/* Flags an argmax `a` (an index into a plane of width w) that lies outside
   the kh x kw window whose top-left input element is (y0, x0). */
template <typename I>
__device__ __forceinline__ void check_argmax(I a, I w, I y0, I x0, I kh, I kw, u32* err) {
    I ay = a / w, ax = a - ay * w;
    if (ay < y0 || ay >= y0 + kh || ax < x0 || ax >= x0 + kw) atomicOr(err, ERR_ARGMAX);
}

template <typename I>
__device__ void max_pool_impl(const T* __restrict__ x, T* __restrict__ y, u32* __restrict__ arg, const PoolGeo& g) {
    I ow = (I)g.ow, oh = (I)g.oh, w = (I)g.w, h = (I)g.h, s = (I)g.stride, kh = (I)g.kh, kw = (I)g.kw;
    I total = (I)g.planes * oh * ow;
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (I)blockDim.x * gridDim.x) {
        I ox = i % ow, t = i / ow;
        I oy = t % oh, p = t / oh;
        const T* src = x + p * h * w;
        I best = oy * s * w + ox * s;
        T bv = src[best];
        for (I ki = 0; ki < kh; ++ki)
            for (I kj = 0; kj < kw; ++kj) {
                I idx = (oy * s + ki) * w + ox * s + kj;
                T v = src[idx];
                /* Strict > keeps the first maximum; a NaN wins once seen (as on the CPU). */
                if (v > bv || (t_isnan(v) && !t_isnan(bv))) { best = idx; bv = v; }
            }
        y[i] = bv;
        arg[i] = (u32)best;
    }
}
template <typename I>
__device__ void max_pool_backward_impl(const T* __restrict__ grad, const u32* __restrict__ arg, T* __restrict__ dx,
                                       const PoolGeo& g, u32* err) {
    I ow = (I)g.ow, oh = (I)g.oh, w = (I)g.w, h = (I)g.h, s = (I)g.stride, kh = (I)g.kh, kw = (I)g.kw;
    I total = (I)g.planes * h * w;
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (I)blockDim.x * gridDim.x) {
        I ix = i % w, t = i / w;
        I iy = t % h, p = t / h;
        I me = iy * w + ix;
        I ylo, yhi, xlo, xhi;
        windows<I>(iy, kh, s, oh, ylo, yhi);
        windows<I>(ix, kw, s, ow, xlo, xhi);
        T acc = (T)0;
        for (I oy = ylo; oy <= yhi && oy < oh; ++oy)
            for (I ox = xlo; ox <= xhi && ox < ow; ++ox) {
                I o = (p * oh + oy) * ow + ox;
                I a = (I)arg[o];
                if (a == me) acc += grad[o];
                /* The window's top-left thread checks its argmax lies inside the window. */
                if (iy == oy * s && ix == ox * s) {
                    check_argmax<I>(a, w, iy, ix, kh, kw, err);
                }
            }
        dx[i] = acc;
    }
}
/* kh <= stride and kw <= stride: cell (cy, cx) is input rows [cy s, cy s + s) and
   columns [cx s, cx s + s), clipped to the input; its top-left kh x kw corner is
   window (cy, cx) when that window exists. Cells past the last window are zeros. */
template <typename I>
__device__ void max_pool_backward_tiled_impl(const T* __restrict__ grad, const u32* __restrict__ arg, T* __restrict__ dx,
                                             const PoolGeo& g, u32* err) {
    I ow = (I)g.ow, oh = (I)g.oh, w = (I)g.w, h = (I)g.h, s = (I)g.stride, kh = (I)g.kh, kw = (I)g.kw;
    I cw = (w + s - 1) / s, chh = (h + s - 1) / s;
    I total = (I)g.planes * chh * cw;
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (I)blockDim.x * gridDim.x) {
        I cx = i % cw, t = i / cw;
        I cy = t % chh, p = t / chh;
        I y0 = cy * s, x0 = cx * s;
        I rows = h - y0 < s ? h - y0 : s, cols = w - x0 < s ? w - x0 : s;
        bool win = cy < oh && cx < ow;
        I a = (I)-1;
        T gv = (T)0;
        if (win) {
            I o = (p * oh + cy) * ow + cx;
            a = (I)arg[o];
            gv = grad[o];
            check_argmax<I>(a, w, y0, x0, kh, kw, err);
        }
        T* out = dx + p * h * w;
        for (I r = 0; r < rows; ++r)
            for (I c = 0; c < cols; ++c) {
                I me = (y0 + r) * w + x0 + c;
                out[me] = (win && me == a) ? gv : (T)0;
            }
    }
}
template <typename I>
__device__ void avg_pool_impl(const T* __restrict__ x, T* __restrict__ y, const PoolGeo& g, T inv) {
    I ow = (I)g.ow, oh = (I)g.oh, w = (I)g.w, h = (I)g.h, s = (I)g.stride, kh = (I)g.kh, kw = (I)g.kw;
    I total = (I)g.planes * oh * ow;
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (I)blockDim.x * gridDim.x) {
        I ox = i % ow, t = i / ow;
        I oy = t % oh, p = t / oh;
        const T* src = x + p * h * w;
        T acc = (T)0;
        for (I ki = 0; ki < kh; ++ki)
            for (I kj = 0; kj < kw; ++kj) acc += src[(oy * s + ki) * w + ox * s + kj];
        y[i] = acc * inv;
    }
}
template <typename I>
__device__ void avg_pool_backward_impl(const T* __restrict__ grad, T* __restrict__ dx, const PoolGeo& g, T inv) {
    I ow = (I)g.ow, oh = (I)g.oh, w = (I)g.w, h = (I)g.h, s = (I)g.stride, kh = (I)g.kh, kw = (I)g.kw;
    I total = (I)g.planes * h * w;
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (I)blockDim.x * gridDim.x) {
        I ix = i % w, t = i / w;
        I iy = t % h, p = t / h;
        I ylo, yhi, xlo, xhi;
        windows<I>(iy, kh, s, oh, ylo, yhi);
        windows<I>(ix, kw, s, ow, xlo, xhi);
        T acc = (T)0;
        for (I oy = ylo; oy <= yhi && oy < oh; ++oy)
            for (I ox = xlo; ox <= xhi && ox < ow; ++ox) acc += grad[(p * oh + oy) * ow + ox] * inv;
        dx[i] = acc;
    }
}
extern "C" __global__ void max_pool_u32(const T* x, T* y, u32* arg, PoolGeo g) { max_pool_impl<u32>(x, y, arg, g); }
extern "C" __global__ void max_pool_u64(const T* x, T* y, u32* arg, PoolGeo g) { max_pool_impl<u64>(x, y, arg, g); }
extern "C" __global__ void max_pool_backward_u32(const T* grad, const u32* arg, T* dx, PoolGeo g, u32* err) {
    max_pool_backward_impl<u32>(grad, arg, dx, g, err);
}
extern "C" __global__ void max_pool_backward_u64(const T* grad, const u32* arg, T* dx, PoolGeo g, u32* err) {
    max_pool_backward_impl<u64>(grad, arg, dx, g, err);
}
extern "C" __global__ void max_pool_backward_tiled_u32(const T* grad, const u32* arg, T* dx, PoolGeo g, u32* err) {
    max_pool_backward_tiled_impl<u32>(grad, arg, dx, g, err);
}
extern "C" __global__ void max_pool_backward_tiled_u64(const T* grad, const u32* arg, T* dx, PoolGeo g, u32* err) {
    max_pool_backward_tiled_impl<u64>(grad, arg, dx, g, err);
}
extern "C" __global__ void avg_pool_u32(const T* x, T* y, PoolGeo g, T inv) { avg_pool_impl<u32>(x, y, g, inv); }
extern "C" __global__ void avg_pool_u64(const T* x, T* y, PoolGeo g, T inv) { avg_pool_impl<u64>(x, y, g, inv); }
extern "C" __global__ void avg_pool_backward_u32(const T* grad, T* dx, PoolGeo g, T inv) { avg_pool_backward_impl<u32>(grad, dx, g, inv); }
extern "C" __global__ void avg_pool_backward_u64(const T* grad, T* dx, PoolGeo g, T inv) { avg_pool_backward_impl<u64>(grad, dx, g, inv); }
"#;

#[repr(C)]
struct PoolGeo {
    planes: u64,
    h: u64,
    w: u64,
    kh: u64,
    kw: u64,
    stride: u64,
    oh: u64,
    ow: u64,
}

fn geo(g: &Pool2dGeometry) -> PoolGeo {
    PoolGeo {
        planes: u(g.planes),
        h: u(g.h),
        w: u(g.w),
        kh: u(g.kh),
        kw: u(g.kw),
        stride: u(g.stride),
        oh: u(g.oh),
        ow: u(g.ow),
    }
}

/// The kernels here read unpadded windows; padded pooling is part of the
/// CUDA work for the ResNet ops, not yet done.
fn no_padding(op: &'static str, g: &Pool2dGeometry) -> Result<()> {
    if g.pad == 0 {
        Ok(())
    } else {
        Err(mla_core::Error::backend(
            op,
            "cuda",
            format!(
                "pooling with padding (pad {}) is not implemented on the cuda backend yet",
                g.pad
            ),
        ))
    }
}

fn kernel_name(base: &'static str, g: &Pool2dGeometry) -> String {
    let small = g.planes * g.h * g.w < (1 << 31);
    format!("{base}_{}", if small { "u32" } else { "u64" })
}

fn averaging_factor<T: CudaFloat>(g: &Pool2dGeometry) -> T {
    T::one() / T::lit((g.kh * g.kw) as f64)
}

pub(crate) fn max_pool2d<T: CudaFloat>(
    dev: &Arc<Device>,
    x: &DeviceBuffer<T>,
    g: &Pool2dGeometry,
) -> Result<(DeviceBuffer<T>, DeviceBuffer<u32>)> {
    let op = "max_pool2d";
    no_padding(op, g)?;
    need_len(op, "input", x.len(), g.planes * g.h * g.w)?;
    dev.enter(op)?;
    let n = g.planes * g.oh * g.ow;
    let y = dev.alloc::<T>(n, op)?;
    let am = dev.alloc::<u32>(n, op)?;
    if n == 0 {
        return Ok((y, am));
    }
    let f = dev.kernel::<T>(&MODULE, &kernel_name("max_pool", g), op)?;
    let (xp, yp, ap, geo) = (x.ptr(), y.ptr(), am.ptr(), geo(g));
    dev.launch(
        f,
        (dev.grid_for(n, BLOCK), 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [arg(&xp), arg(&yp), arg(&ap), arg(&geo)],
        op,
    )?;
    Ok((y, am))
}

pub(crate) fn max_pool2d_backward<T: CudaFloat>(
    dev: &Arc<Device>,
    grad: &DeviceBuffer<T>,
    argmax: &DeviceBuffer<u32>,
    g: &Pool2dGeometry,
) -> Result<DeviceBuffer<T>> {
    let op = "max_pool2d_backward";
    no_padding(op, g)?;
    let n_out = g.planes * g.oh * g.ow;
    need_len(op, "grad", grad.len(), n_out)?;
    need_len(op, "argmax", argmax.len(), n_out)?;
    dev.enter(op)?;
    let n = g.planes * g.h * g.w;
    let dx = dev.alloc::<T>(n, op)?;
    if n == 0 {
        return Ok(dx);
    }
    // Windows that do not overlap: one thread per stride x stride cell.
    let tiled = g.kh <= g.stride && g.kw <= g.stride;
    let (base, threads) = if tiled {
        let cells = g.planes * g.h.div_ceil(g.stride) * g.w.div_ceil(g.stride);
        ("max_pool_backward_tiled", cells)
    } else {
        ("max_pool_backward", n)
    };
    let f = dev.kernel::<T>(&MODULE, &kernel_name(base, g), op)?;
    let (gp, ap, dp, geo, err) = (grad.ptr(), argmax.ptr(), dx.ptr(), geo(g), dev.err_word());
    dev.launch(
        f,
        (dev.grid_for(threads, BLOCK), 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [arg(&gp), arg(&ap), arg(&dp), arg(&geo), arg(&err)],
        op,
    )?;
    Ok(dx)
}

pub(crate) fn avg_pool2d<T: CudaFloat>(
    dev: &Arc<Device>,
    x: &DeviceBuffer<T>,
    g: &Pool2dGeometry,
) -> Result<DeviceBuffer<T>> {
    let op = "avg_pool2d";
    no_padding(op, g)?;
    need_len(op, "input", x.len(), g.planes * g.h * g.w)?;
    dev.enter(op)?;
    let n = g.planes * g.oh * g.ow;
    let y = dev.alloc::<T>(n, op)?;
    if n == 0 {
        return Ok(y);
    }
    let f = dev.kernel::<T>(&MODULE, &kernel_name("avg_pool", g), op)?;
    let (xp, yp, geo, inv) = (x.ptr(), y.ptr(), geo(g), averaging_factor::<T>(g));
    dev.launch(
        f,
        (dev.grid_for(n, BLOCK), 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [arg(&xp), arg(&yp), arg(&geo), arg(&inv)],
        op,
    )?;
    Ok(y)
}

pub(crate) fn avg_pool2d_backward<T: CudaFloat>(
    dev: &Arc<Device>,
    grad: &DeviceBuffer<T>,
    g: &Pool2dGeometry,
) -> Result<DeviceBuffer<T>> {
    let op = "avg_pool2d_backward";
    no_padding(op, g)?;
    need_len(op, "grad", grad.len(), g.planes * g.oh * g.ow)?;
    dev.enter(op)?;
    let n = g.planes * g.h * g.w;
    let dx = dev.alloc::<T>(n, op)?;
    if n == 0 {
        return Ok(dx);
    }
    let f = dev.kernel::<T>(&MODULE, &kernel_name("avg_pool_backward", g), op)?;
    let (gp, dp, geo, inv) = (grad.ptr(), dx.ptr(), geo(g), averaging_factor::<T>(g));
    dev.launch(
        f,
        (dev.grid_for(n, BLOCK), 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [arg(&gp), arg(&dp), arg(&geo), arg(&inv)],
        op,
    )?;
    Ok(dx)
}
