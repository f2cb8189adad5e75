//! `sum_axis` over `[outer, len, inner]`: a block per row when the axis is
//! innermost, a 32-column tile per block otherwise. Sums accumulate in double
//! in a fixed order, so results are deterministic run to run.

use super::{need_len, u};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::Result;
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 3,
    name: "reduce",
    source: SOURCE,
    functions: &["sum_rows", "sum_rows_partial", "sum_partials", "sum_cols"],
};

const SOURCE: &str = r#"
extern "C" __global__ void sum_rows(const T* __restrict__ x, T* __restrict__ out, u64 rows, u64 len) {
    __shared__ double scratch[32];
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + r * len;
        double acc = 0;
        for (u64 i = threadIdx.x; i < len; i += blockDim.x) acc += (double)row[i];
        double t = block_sum(acc, scratch);
        if (threadIdx.x == 0) out[r] = (T)t;
    }
}
/* Long rows: block (c, r) sums chunk c of row r into partial[r * gridDim.x + c]. */
extern "C" __global__ void sum_rows_partial(const T* __restrict__ x, double* __restrict__ partial, u64 len, u64 chunk) {
    __shared__ double scratch[32];
    u64 r = blockIdx.y, c = blockIdx.x;
    u64 start = c * chunk, end = min(len, start + chunk);
    const T* row = x + r * len;
    double acc = 0;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) acc += (double)row[i];
    double t = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[r * gridDim.x + c] = t;
}
extern "C" __global__ void sum_partials(const double* __restrict__ partial, T* __restrict__ out, u64 rows, u64 chunks) {
    __shared__ double scratch[32];
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        double acc = 0;
        for (u64 i = threadIdx.x; i < chunks; i += blockDim.x) acc += partial[r * chunks + i];
        double t = block_sum(acc, scratch);
        if (threadIdx.x == 0) out[r] = (T)t;
    }
}
/* Block (32, blockDim.y): 32 adjacent columns of one outer index, blockDim.y
   threads striding along the summed axis, combined through shared memory. */
extern "C" __global__ void sum_cols(const T* __restrict__ x, T* __restrict__ out, u64 outer, u64 len, u64 inner, u64 tiles) {
    __shared__ double part[32][33];
    for (u64 b = blockIdx.x; b < outer * tiles; b += gridDim.x) {
        u64 o = b / tiles, i = (b % tiles) * 32 + threadIdx.x;
        double acc = 0;
        if (i < inner)
            for (u64 l = threadIdx.y; l < len; l += blockDim.y) acc += (double)x[(o * len + l) * inner + i];
        part[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && i < inner) {
            double t = 0;
            for (unsigned k = 0; k < blockDim.y; ++k) t += part[k][threadIdx.x];
            out[o * inner + i] = (T)t;
        }
        __syncthreads();
    }
}
"#;

/// Rows longer than this are split over several blocks when there are few rows.
const SPLIT_LEN: usize = 1 << 14;
const ROW_BLOCK: u32 = 256;

pub(crate) fn sum_axis<T: CudaFloat>(
    dev: &Arc<Device>,
    x: &DeviceBuffer<T>,
    outer: usize,
    len: usize,
    inner: usize,
) -> Result<DeviceBuffer<T>> {
    let op = "sum_axis";
    need_len(op, "input", x.len(), outer * len * inner)?;
    dev.enter(op)?;
    let n_out = outer * inner;
    if n_out == 0 || len == 0 {
        return dev.alloc_zeroed(n_out, op);
    }
    let out = dev.alloc::<T>(n_out, op)?;
    let sms = dev.sm_count as usize;
    let (xp, op_) = (x.ptr(), out.ptr());
    if inner == 1 {
        let (rows, l) = (u(outer), u(len));
        if outer >= sms || len <= SPLIT_LEN {
            let f = dev.kernel::<T>(&MODULE, "sum_rows", op)?;
            let grid = outer.min(65535) as u32;
            dev.launch(
                f,
                (grid, 1, 1),
                (ROW_BLOCK, 1, 1),
                0,
                &mut [arg(&xp), arg(&op_), arg(&rows), arg(&l)],
                op,
            )?;
        } else {
            // Few long rows: enough chunks to cover the device about twice.
            let chunks = (2 * sms / outer)
                .max(1)
                .min(len.div_ceil(SPLIT_LEN / 4))
                .max(1);
            let chunk = u(len.div_ceil(chunks));
            let partial = dev.alloc::<f64>(outer * chunks, op)?;
            let pp = partial.ptr();
            let f = dev.kernel::<T>(&MODULE, "sum_rows_partial", op)?;
            dev.launch(
                f,
                (chunks as u32, outer as u32, 1),
                (ROW_BLOCK, 1, 1),
                0,
                &mut [arg(&xp), arg(&pp), arg(&l), arg(&chunk)],
                op,
            )?;
            let f = dev.kernel::<T>(&MODULE, "sum_partials", op)?;
            let nch = u(chunks);
            dev.launch(
                f,
                (outer as u32, 1, 1),
                (ROW_BLOCK, 1, 1),
                0,
                &mut [arg(&pp), arg(&op_), arg(&rows), arg(&nch)],
                op,
            )?;
        }
        return Ok(out);
    }
    let tiles = inner.div_ceil(32);
    let blocks = outer * tiles;
    // Few tiles: more threads along the summed axis so the device fills up.
    let ty: u32 = if blocks >= 2 * sms { 8 } else { 32 };
    let grid = blocks.min(sms * 64) as u32;
    let f = dev.kernel::<T>(&MODULE, "sum_cols", op)?;
    let (o, l, i, t) = (u(outer), u(len), u(inner), u(tiles));
    dev.launch(
        f,
        (grid, 1, 1),
        (32, ty, 1),
        0,
        &mut [arg(&xp), arg(&op_), arg(&o), arg(&l), arg(&i), arg(&t)],
        op,
    )?;
    Ok(out)
}
