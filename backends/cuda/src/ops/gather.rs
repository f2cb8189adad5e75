//! Row gather (mini-batch selection) and its adjoint, scatter-add.
//! Scatter-add uses atomics: with repeated indices the order of the sums, and
//! so the last bits, may vary run to run (unique indices are exact).

use super::{need_len, u, BLOCK};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::{Error, Result};
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 6,
    name: "gather",
    source: SOURCE,
    functions: &["gather_rows", "scatter_add_rows"],
};

const SOURCE: &str = r#"
extern "C" __global__ void gather_rows(const T* __restrict__ x, const u32* __restrict__ idx, T* __restrict__ out,
                                       u64 n_idx, u64 row_len, u64 x_rows, u32* err) {
    GRID_STRIDE(i, n_idx * row_len) {
        u64 r = i / row_len, c = i - r * row_len;
        u64 k = idx[r];
        if (k < x_rows) {
            out[i] = x[k * row_len + c];
        } else {
            out[i] = (T)0;
            if (c == 0) atomicOr(err, ERR_GATHER_INDEX);
        }
    }
}
extern "C" __global__ void scatter_add_rows(const T* __restrict__ grad, const u32* __restrict__ idx, T* __restrict__ out,
                                            u64 n_idx, u64 row_len, u64 rows_out, u32* err) {
    GRID_STRIDE(i, n_idx * row_len) {
        u64 r = i / row_len, c = i - r * row_len;
        u64 k = idx[r];
        if (k < rows_out) {
            atomicAdd(out + k * row_len + c, grad[i]);
        } else if (c == 0) {
            atomicOr(err, ERR_SCATTER_INDEX);
        }
    }
}
"#;

pub(crate) fn gather_rows<T: CudaFloat>(
    dev: &Arc<Device>,
    x: &DeviceBuffer<T>,
    idx: &DeviceBuffer<u32>,
    row_len: usize,
) -> Result<DeviceBuffer<T>> {
    let op = "gather_rows";
    let n = idx.len() * row_len;
    dev.enter(op)?;
    let out = dev.alloc::<T>(n, op)?;
    if n == 0 {
        return Ok(out);
    }
    let x_rows = x.len() / row_len;
    let f = dev.kernel::<T>(&MODULE, "gather_rows", op)?;
    let (xp, ip, o, ni, rl, xr, err) = (
        x.ptr(),
        idx.ptr(),
        out.ptr(),
        u(idx.len()),
        u(row_len),
        u(x_rows),
        dev.err_word(),
    );
    let grid = dev.grid_for(n, BLOCK);
    dev.launch(
        f,
        (grid, 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [
            arg(&xp),
            arg(&ip),
            arg(&o),
            arg(&ni),
            arg(&rl),
            arg(&xr),
            arg(&err),
        ],
        op,
    )?;
    Ok(out)
}

pub(crate) fn scatter_add_rows<T: CudaFloat>(
    dev: &Arc<Device>,
    grad: &DeviceBuffer<T>,
    idx: &DeviceBuffer<u32>,
    rows_out: usize,
    row_len: usize,
) -> Result<DeviceBuffer<T>> {
    let op = "scatter_add_rows";
    need_len(op, "grad", grad.len(), idx.len() * row_len)?;
    if rows_out == 0 && !idx.is_empty() && row_len > 0 {
        return Err(Error::invalid(
            op,
            "indices given for an output with no rows",
            &[&[idx.len()], &[rows_out, row_len]],
        ));
    }
    dev.enter(op)?;
    let out = dev.alloc_zeroed::<T>(rows_out * row_len, op)?;
    let n = idx.len() * row_len;
    if n == 0 {
        return Ok(out);
    }
    let f = dev.kernel::<T>(&MODULE, "scatter_add_rows", op)?;
    let (gp, ip, o, ni, rl, ro, err) = (
        grad.ptr(),
        idx.ptr(),
        out.ptr(),
        u(idx.len()),
        u(row_len),
        u(rows_out),
        dev.err_word(),
    );
    let grid = dev.grid_for(n, BLOCK);
    dev.launch(
        f,
        (grid, 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [
            arg(&gp),
            arg(&ip),
            arg(&o),
            arg(&ni),
            arg(&rl),
            arg(&ro),
            arg(&err),
        ],
        op,
    )?;
    Ok(out)
}
