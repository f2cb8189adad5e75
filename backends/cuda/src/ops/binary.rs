//! Broadcasting element-wise binary ops: each operand is read with its own
//! strides (0 on broadcast axes); same-shape contiguous operands take a
//! kernel without index arithmetic.

use super::{collapse, need_len, padded, u, BLOCK, MAX_RANK};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::{BinaryOp, Error, Result};
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 2,
    name: "binary",
    source: SOURCE,
    functions: &["binary_contig", "binary_u32", "binary_u64"],
};

const SOURCE: &str = r#"
#define MAX_RANK 8
struct BinLayout { i64 dims[MAX_RANK]; i64 ls[MAX_RANK]; i64 rs[MAX_RANK]; int rank; };

/* Codes: 0 add, 1 sub, 2 mul, 3 div. */
__device__ __forceinline__ T binary_one(int op, T a, T b) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        default: return a / b;
    }
}
extern "C" __global__ void binary_contig(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, u64 n, int op) {
    GRID_STRIDE(i, n) out[i] = binary_one(op, a[i], b[i]);
}
template <typename I>
__device__ void binary_impl(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, u64 n, int op, const BinLayout& l) {
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < (I)n; i += (I)blockDim.x * gridDim.x) {
        I rem = i;
        u64 ia = 0, ib = 0;
        for (int ax = l.rank - 1; ax >= 0; --ax) {
            I dim = (I)l.dims[ax];
            I q = rem / dim;
            I idx = rem - q * dim;
            rem = q;
            ia += (u64)idx * (u64)l.ls[ax];
            ib += (u64)idx * (u64)l.rs[ax];
        }
        out[i] = binary_one(op, a[ia], b[ib]);
    }
}
extern "C" __global__ void binary_u32(const T* a, const T* b, T* out, u64 n, int op, BinLayout l) {
    binary_impl<u32>(a, b, out, n, op, l);
}
extern "C" __global__ void binary_u64(const T* a, const T* b, T* out, u64 n, int op, BinLayout l) {
    binary_impl<u64>(a, b, out, n, op, l);
}
"#;

#[repr(C)]
struct BinLayout {
    dims: [i64; MAX_RANK],
    ls: [i64; MAX_RANK],
    rs: [i64; MAX_RANK],
    rank: i32,
}

fn code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
    }
}

pub(crate) fn binary<T: CudaFloat>(
    dev: &Arc<Device>,
    op: BinaryOp,
    lhs: &DeviceBuffer<T>,
    lhs_strides: &[usize],
    rhs: &DeviceBuffer<T>,
    rhs_strides: &[usize],
    out_dims: &[usize],
) -> Result<DeviceBuffer<T>> {
    let name = "binary";
    let rank = out_dims.len();
    if lhs_strides.len() != rank || rhs_strides.len() != rank {
        return Err(Error::invalid(
            name,
            "strides and dims differ in rank",
            &[out_dims, lhs_strides, rhs_strides],
        ));
    }
    let n: usize = out_dims.iter().product();
    dev.enter(name)?;
    let out = dev.alloc::<T>(n, name)?;
    if n == 0 {
        return Ok(out);
    }
    let last = |strides: &[usize]| {
        out_dims
            .iter()
            .zip(strides)
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>()
            + 1
    };
    need_len(name, "lhs", lhs.len(), last(lhs_strides))?;
    need_len(name, "rhs", rhs.len(), last(rhs_strides))?;
    let out_strides = mla_core::Shape::new(out_dims.to_vec()).strides();
    let (cd, cs) = collapse(out_dims, &[&out_strides, lhs_strides, rhs_strides]);
    let (a, b, o, nn, c) = (lhs.ptr(), rhs.ptr(), out.ptr(), u(n), code(op));
    let grid = dev.grid_for(n, BLOCK);
    if cd.len() == 1 && cs[1][0] == 1 && cs[2][0] == 1 {
        let f = dev.kernel::<T>(&MODULE, "binary_contig", name)?;
        dev.launch(
            f,
            (grid, 1, 1),
            (BLOCK, 1, 1),
            0,
            &mut [arg(&a), arg(&b), arg(&o), arg(&nn), arg(&c)],
            name,
        )?;
        return Ok(out);
    }
    if cd.len() > MAX_RANK {
        return Err(Error::backend(
            name,
            "cuda",
            format!(
                "broadcast of rank {} does not collapse to {MAX_RANK} axes",
                cd.len()
            ),
        ));
    }
    let layout = BinLayout {
        dims: padded(&cd),
        ls: padded(&cs[1]),
        rs: padded(&cs[2]),
        rank: cd.len() as i32,
    };
    let kname = if n < (1 << 31) {
        "binary_u32"
    } else {
        "binary_u64"
    };
    let f = dev.kernel::<T>(&MODULE, kname, name)?;
    dev.launch(
        f,
        (grid, 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [arg(&a), arg(&b), arg(&o), arg(&nn), arg(&c), arg(&layout)],
        name,
    )?;
    Ok(out)
}
