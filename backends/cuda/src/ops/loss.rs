//! Fused log-softmax + cross-entropy. The mean loss is reduced on the device
//! (it stays there until someone reads it); up to a million logits a single
//! block does rows and mean in one launch, beyond that a warp-per-row pass
//! writes per-row losses and a second launch averages them.

use super::{need_len, u, BLOCK};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::Result;
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 5,
    name: "loss",
    source: SOURCE,
    functions: &[
        "cross_entropy_block",
        "cross_entropy_rows",
        "mean_of",
        "cross_entropy_backward",
    ],
};

const SOURCE: &str = r#"
/* One warp, one row: writes probabilities, returns -log p[label] (NaN and an
   error bit for a label out of range). Every lane returns the same value. */
__device__ double ce_row(const T* __restrict__ xr, T* __restrict__ pr, u32 label, u64 cols, u32* err) {
    int lane = threadIdx.x & 31;
    T m = T_NEG_INF;
    for (u64 j = lane; j < cols; j += 32) m = t_max(m, xr[j]);
    m = warp_max(m);
    double s = 0;
    for (u64 j = lane; j < cols; j += 32) s += (double)t_exp(xr[j] - m);
    s = warp_sum(s);
    T lse = t_log((T)s);
    for (u64 j = lane; j < cols; j += 32) pr[j] = t_exp(xr[j] - m - lse);
    if ((u64)label >= cols) {
        if (lane == 0) atomicOr(err, ERR_LABEL);
        return __longlong_as_double(0x7ff8000000000000ULL);
    }
    return -(double)(xr[label] - m - lse);
}
extern "C" __global__ void cross_entropy_block(const T* __restrict__ x, const u32* __restrict__ labels, T* __restrict__ loss,
                                               T* __restrict__ probs, u64 rows, u64 cols, u32* err) {
    __shared__ double scratch[32];
    int lane = threadIdx.x & 31;
    u64 nwarps = blockDim.x >> 5;
    double acc = 0;
    for (u64 r = threadIdx.x >> 5; r < rows; r += nwarps) {
        double l = ce_row(x + r * cols, probs + r * cols, labels[r], cols, err);
        if (lane == 0) acc += l;
    }
    double t = block_sum(acc, scratch);
    if (threadIdx.x == 0) loss[0] = (T)(t / (double)rows);
}
extern "C" __global__ void cross_entropy_rows(const T* __restrict__ x, const u32* __restrict__ labels, double* __restrict__ row_loss,
                                              T* __restrict__ probs, u64 rows, u64 cols, u32* err) {
    for (u64 r = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += (u64)gridDim.x * (blockDim.x >> 5)) {
        double l = ce_row(x + r * cols, probs + r * cols, labels[r], cols, err);
        if ((threadIdx.x & 31) == 0) row_loss[r] = l;
    }
}
/* One block: out[0] = mean of v[0..n]. */
extern "C" __global__ void mean_of(const double* __restrict__ v, T* __restrict__ out, u64 n) {
    __shared__ double scratch[32];
    double acc = 0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) acc += v[i];
    double t = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = (T)(t / (double)n);
}
/* grad_loss[0] * (probs - onehot(labels)) / rows */
extern "C" __global__ void cross_entropy_backward(const T* __restrict__ probs, const u32* __restrict__ labels,
                                                  const T* __restrict__ grad_loss, T* __restrict__ out, u64 rows, u64 cols, u32* err) {
    T scale = grad_loss[0] / (T)rows;
    GRID_STRIDE(i, rows * cols) {
        u64 r = i / cols, c = i - r * cols;
        u32 l = labels[r];
        T v = probs[i] * scale;
        if ((u64)l == c) v -= scale;
        if (c == 0 && (u64)l >= cols) atomicOr(err, ERR_LABEL);
        out[i] = v;
    }
}
"#;

/// Largest `rows * cols` the single-block kernel takes.
const ONE_BLOCK_MAX: usize = 1 << 20;

pub(crate) fn cross_entropy<T: CudaFloat>(
    dev: &Arc<Device>,
    logits: &DeviceBuffer<T>,
    labels: &DeviceBuffer<u32>,
    rows: usize,
    cols: usize,
) -> Result<(DeviceBuffer<T>, DeviceBuffer<T>)> {
    let op = "cross_entropy";
    need_len(op, "logits", logits.len(), rows * cols)?;
    need_len(op, "labels", labels.len(), rows)?;
    if rows == 0 || cols == 0 {
        return Err(mla_core::Error::invalid(
            op,
            "empty batch or no classes",
            &[&[rows, cols]],
        ));
    }
    dev.enter(op)?;
    let loss = dev.alloc::<T>(1, op)?;
    let probs = dev.alloc::<T>(rows * cols, op)?;
    let (xp, lp, lo, pp, r, c, err) = (
        logits.ptr(),
        labels.ptr(),
        loss.ptr(),
        probs.ptr(),
        u(rows),
        u(cols),
        dev.err_word(),
    );
    if rows * cols <= ONE_BLOCK_MAX {
        let f = dev.kernel::<T>(&MODULE, "cross_entropy_block", op)?;
        dev.launch(
            f,
            (1, 1, 1),
            (1024, 1, 1),
            0,
            &mut [
                arg(&xp),
                arg(&lp),
                arg(&lo),
                arg(&pp),
                arg(&r),
                arg(&c),
                arg(&err),
            ],
            op,
        )?;
    } else {
        let row_loss = dev.alloc::<f64>(rows, op)?;
        let rl = row_loss.ptr();
        let f = dev.kernel::<T>(&MODULE, "cross_entropy_rows", op)?;
        let grid = super::softmax::row_grid(dev, rows);
        dev.launch(
            f,
            (grid, 1, 1),
            (256, 1, 1),
            0,
            &mut [
                arg(&xp),
                arg(&lp),
                arg(&rl),
                arg(&pp),
                arg(&r),
                arg(&c),
                arg(&err),
            ],
            op,
        )?;
        let f = dev.kernel::<T>(&MODULE, "mean_of", op)?;
        dev.launch(
            f,
            (1, 1, 1),
            (1024, 1, 1),
            0,
            &mut [arg(&rl), arg(&lo), arg(&r)],
            op,
        )?;
    }
    Ok((loss, probs))
}

pub(crate) fn cross_entropy_backward<T: CudaFloat>(
    dev: &Arc<Device>,
    probs: &DeviceBuffer<T>,
    labels: &DeviceBuffer<u32>,
    grad_loss: &DeviceBuffer<T>,
    rows: usize,
    cols: usize,
) -> Result<DeviceBuffer<T>> {
    let op = "cross_entropy_backward";
    need_len(op, "probs", probs.len(), rows * cols)?;
    need_len(op, "labels", labels.len(), rows)?;
    need_len(op, "grad_loss", grad_loss.len(), 1)?;
    dev.enter(op)?;
    let out = dev.alloc::<T>(rows * cols, op)?;
    if out.is_empty() {
        return Ok(out);
    }
    let f = dev.kernel::<T>(&MODULE, "cross_entropy_backward", op)?;
    let (pp, lp, gp, o, r, c, err) = (
        probs.ptr(),
        labels.ptr(),
        grad_loss.ptr(),
        out.ptr(),
        u(rows),
        u(cols),
        dev.err_word(),
    );
    let grid = dev.grid_for(rows * cols, BLOCK);
    dev.launch(
        f,
        (grid, 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [
            arg(&pp),
            arg(&lp),
            arg(&gp),
            arg(&o),
            arg(&r),
            arg(&c),
            arg(&err),
        ],
        op,
    )?;
    Ok(out)
}
