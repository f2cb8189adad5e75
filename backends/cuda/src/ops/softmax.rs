//! Row-wise softmax / log-softmax and their backward: one warp per row, the
//! row's max and sum combined with shuffles (sums in double).

use super::{need_len, u};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::Result;
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 4,
    name: "softmax",
    source: SOURCE,
    functions: &["softmax_rows", "softmax_backward_rows"],
};

const SOURCE: &str = r#"
#define FOR_EACH_WARP_ROW(r, rows) \
    for (u64 r = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < (rows); r += (u64)gridDim.x * (blockDim.x >> 5))

extern "C" __global__ void softmax_rows(const T* __restrict__ x, T* __restrict__ y, u64 rows, u64 cols, int log_) {
    int lane = threadIdx.x & 31;
    FOR_EACH_WARP_ROW(r, rows) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        T m = T_NEG_INF;
        for (u64 j = lane; j < cols; j += 32) m = t_max(m, xr[j]);
        m = warp_max(m);
        double s = 0;
        for (u64 j = lane; j < cols; j += 32) s += (double)t_exp(xr[j] - m);
        s = warp_sum(s);
        if (log_) {
            T lse = t_log((T)s);
            for (u64 j = lane; j < cols; j += 32) yr[j] = xr[j] - m - lse;
        } else {
            T sum = (T)s;
            for (u64 j = lane; j < cols; j += 32) yr[j] = t_exp(xr[j] - m) / sum;
        }
    }
}
/* log: g - softmax * sum(g), with softmax = exp(y); else y * (g - sum(g * y)). */
extern "C" __global__ void softmax_backward_rows(const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ out,
                                                 u64 rows, u64 cols, int log_) {
    int lane = threadIdx.x & 31;
    FOR_EACH_WARP_ROW(r, rows) {
        const T* yr = y + r * cols;
        const T* gr = g + r * cols;
        T* o = out + r * cols;
        double s = 0;
        if (log_) {
            for (u64 j = lane; j < cols; j += 32) s += (double)gr[j];
        } else {
            for (u64 j = lane; j < cols; j += 32) s += (double)gr[j] * (double)yr[j];
        }
        T t = (T)warp_sum(s);
        if (log_) {
            for (u64 j = lane; j < cols; j += 32) o[j] = gr[j] - t_exp(yr[j]) * t;
        } else {
            for (u64 j = lane; j < cols; j += 32) o[j] = yr[j] * (gr[j] - t);
        }
    }
}
"#;

const WARPS_PER_BLOCK: u32 = 8;

pub(crate) fn row_grid(dev: &Device, rows: usize) -> u32 {
    rows.div_ceil(WARPS_PER_BLOCK as usize)
        .clamp(1, dev.sm_count as usize * 64) as u32
}

pub(crate) fn softmax<T: CudaFloat>(
    dev: &Arc<Device>,
    x: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    log: bool,
) -> Result<DeviceBuffer<T>> {
    let op = if log { "log_softmax" } else { "softmax" };
    need_len(op, "input", x.len(), rows * cols)?;
    dev.enter(op)?;
    let y = dev.alloc::<T>(rows * cols, op)?;
    if y.is_empty() {
        return Ok(y);
    }
    let f = dev.kernel::<T>(&MODULE, "softmax_rows", op)?;
    let (xp, yp, r, c, l) = (x.ptr(), y.ptr(), u(rows), u(cols), log as i32);
    dev.launch(
        f,
        (row_grid(dev, rows), 1, 1),
        (32 * WARPS_PER_BLOCK, 1, 1),
        0,
        &mut [arg(&xp), arg(&yp), arg(&r), arg(&c), arg(&l)],
        op,
    )?;
    Ok(y)
}

pub(crate) fn softmax_backward<T: CudaFloat>(
    dev: &Arc<Device>,
    y: &DeviceBuffer<T>,
    grad: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
    log: bool,
) -> Result<DeviceBuffer<T>> {
    let op = if log {
        "log_softmax_backward"
    } else {
        "softmax_backward"
    };
    need_len(op, "output", y.len(), rows * cols)?;
    need_len(op, "grad", grad.len(), rows * cols)?;
    dev.enter(op)?;
    let out = dev.alloc::<T>(rows * cols, op)?;
    if out.is_empty() {
        return Ok(out);
    }
    let f = dev.kernel::<T>(&MODULE, "softmax_backward_rows", op)?;
    let (yp, gp, o, r, c, l) = (y.ptr(), grad.ptr(), out.ptr(), u(rows), u(cols), log as i32);
    dev.launch(
        f,
        (row_grid(dev, rows), 1, 1),
        (32 * WARPS_PER_BLOCK, 1, 1),
        0,
        &mut [arg(&yp), arg(&gp), arg(&o), arg(&r), arg(&c), arg(&l)],
        op,
    )?;
    Ok(out)
}
