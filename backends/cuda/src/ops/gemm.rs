//! GEMM through cuBLAS. cuBLAS is column-major; a row-major `C = op(A) op(B)`
//! is the column-major `C^T = op(B)^T op(A)^T`, so the operands are swapped
//! and each keeps its own transpose flag (the "operand-swap trick").

use super::need_len;
use crate::device::{Device, BACKEND};
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use cudarc::cublas::sys::cublasOperation_t;
use mla_core::{Error, GemmConfig, Result};
use std::sync::Arc;

fn to_i32(op: &'static str, what: &str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| {
        Error::invalid(
            op,
            format!("{what} = {x} exceeds cuBLAS's 32-bit sizes"),
            &[&[x]],
        )
    })
}

pub(crate) fn gemm<T: CudaFloat>(
    dev: &Arc<Device>,
    cfg: &GemmConfig,
    a: &DeviceBuffer<T>,
    b: &DeviceBuffer<T>,
) -> Result<DeviceBuffer<T>> {
    let op = "gemm";
    let GemmConfig {
        batch,
        m,
        n,
        k,
        trans_a,
        trans_b,
        stride_a,
        stride_b,
    } = *cfg;
    need_len(
        op,
        &format!("lhs of batch {batch} x {m}x{k}"),
        a.len(),
        cfg.lhs_len(),
    )?;
    need_len(
        op,
        &format!("rhs of batch {batch} x {k}x{n}"),
        b.len(),
        cfg.rhs_len(),
    )?;
    dev.enter(op)?;
    let c = dev.alloc::<T>(batch * m * n, op)?;
    if c.is_empty() {
        return Ok(c);
    }
    if k == 0 {
        dev.memset_zero(&c, op)?;
        return Ok(c);
    }
    let (mi, ni, ki, bi) = (
        to_i32(op, "m", m)?,
        to_i32(op, "n", n)?,
        to_i32(op, "k", k)?,
        to_i32(op, "batch", batch)?,
    );
    // Column-major view: C^T [n x m] = op(B)^T [n x k] * op(A)^T [k x m].
    // Row-major B [k, n] read column-major is B^T with leading dimension n (no
    // transpose needed); a transposed B is stored [n, k] and needs OP_T.
    let (op_b, ldb) = if trans_b {
        (cublasOperation_t::CUBLAS_OP_T, ki)
    } else {
        (cublasOperation_t::CUBLAS_OP_N, ni)
    };
    let (op_a, lda) = if trans_a {
        (cublasOperation_t::CUBLAS_OP_T, mi)
    } else {
        (cublasOperation_t::CUBLAS_OP_N, ki)
    };
    let blas = dev.blas.lock().unwrap_or_else(|p| p.into_inner());
    let label = if dev.profiling() {
        let t = |x: bool| if x { "^T" } else { "" };
        crate::profile::intern(format!(
            "gemm {batch}x[{m}x{k}]{}@[{k}x{n}]{}",
            t(trans_a),
            t(trans_b)
        ))
    } else {
        "gemm"
    };
    dev.profiled(label, || {
        // SAFETY: lengths checked above; the handle runs on the device stream.
        unsafe {
            T::cublas_gemm(
                *blas.handle(),
                op_b,
                op_a,
                [ni, mi, ki],
                (b.ptr(), ldb, stride_b as i64),
                (a.ptr(), lda, stride_a as i64),
                (c.ptr(), ni, (m * n) as i64),
                bi,
            )
        }
        .map_err(|e| {
            Error::backend(
                op,
                BACKEND,
                format!("cuBLAS gemm {batch}x[{m}x{k}]@[{k}x{n}] failed: {e:?}"),
            )
        })
    })?;
    Ok(c)
}
