//! Element-wise unary ops and their backward (`grad * f'(x)`), one kernel each,
//! the op chosen by a code (uniform across the launch, so the switch costs nothing).

use super::{need_len, u, BLOCK};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::{Result, UnaryOp};
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 1,
    name: "unary",
    source: SOURCE,
    functions: &["unary", "unary_backward"],
};

const SOURCE: &str = r#"
/* Codes: 0 relu, 1 sigmoid, 2 tanh, 3 exp, 4 log, 5 neg, 6 sqr, 7 sqrt, 8 affine. */
__device__ __forceinline__ T unary_one(int op, T x, T mul, T add) {
    switch (op) {
        case 0: return x > (T)0 ? x : (T)0;
        case 1: return (T)1 / ((T)1 + t_exp(-x));
        case 2: return t_tanh(x);
        case 3: return t_exp(x);
        case 4: return t_log(x);
        case 5: return -x;
        case 6: return x * x;
        case 7: return t_sqrt(x);
        default: return x * mul + add;
    }
}
/* f'(x) from whichever of x, y = f(x) is cheaper (same rules as the CPU backend). */
__device__ __forceinline__ T derivative(int op, T x, T y, T mul) {
    switch (op) {
        case 0: return x > (T)0 ? (T)1 : (T)0;
        case 1: return y * ((T)1 - y);
        case 2: return (T)1 - y * y;
        case 3: return y;
        case 4: return (T)1 / x;
        case 5: return (T)-1;
        case 6: return (T)2 * x;
        case 7: return (T)1 / ((T)2 * y);
        default: return mul;
    }
}
extern "C" __global__ void unary(const T* __restrict__ x, T* __restrict__ y, u64 n, int op, T mul, T add) {
    GRID_STRIDE(i, n) y[i] = unary_one(op, x[i], mul, add);
}
extern "C" __global__ void unary_backward(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ g,
                                          T* __restrict__ out, u64 n, int op, T mul) {
    GRID_STRIDE(i, n) out[i] = g[i] * derivative(op, x[i], y[i], mul);
}
"#;

fn code(op: UnaryOp) -> (i32, f64, f64) {
    match op {
        UnaryOp::Relu => (0, 0.0, 0.0),
        UnaryOp::Sigmoid => (1, 0.0, 0.0),
        UnaryOp::Tanh => (2, 0.0, 0.0),
        UnaryOp::Exp => (3, 0.0, 0.0),
        UnaryOp::Log => (4, 0.0, 0.0),
        UnaryOp::Neg => (5, 0.0, 0.0),
        UnaryOp::Sqr => (6, 0.0, 0.0),
        UnaryOp::Sqrt => (7, 0.0, 0.0),
        UnaryOp::Affine { mul, add } => (8, mul, add),
    }
}

pub(crate) fn unary<T: CudaFloat>(
    dev: &Arc<Device>,
    op: UnaryOp,
    x: &DeviceBuffer<T>,
) -> Result<DeviceBuffer<T>> {
    let name = "unary";
    dev.enter(name)?;
    let n = x.len();
    let y = dev.alloc::<T>(n, name)?;
    if n == 0 {
        return Ok(y);
    }
    let f = dev.kernel::<T>(&MODULE, "unary", name)?;
    let (c, mul, add) = code(op);
    let (mul, add) = (T::lit(mul), T::lit(add));
    let (xp, yp, nn) = (x.ptr(), y.ptr(), u(n));
    let grid = dev.grid_for(n, BLOCK);
    dev.launch(
        f,
        (grid, 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [arg(&xp), arg(&yp), arg(&nn), arg(&c), arg(&mul), arg(&add)],
        name,
    )?;
    Ok(y)
}

pub(crate) fn unary_backward<T: CudaFloat>(
    dev: &Arc<Device>,
    op: UnaryOp,
    x: &DeviceBuffer<T>,
    y: &DeviceBuffer<T>,
    grad: &DeviceBuffer<T>,
) -> Result<DeviceBuffer<T>> {
    let name = "unary_backward";
    let n = x.len();
    need_len(name, "y", y.len(), n)?;
    need_len(name, "grad", grad.len(), n)?;
    dev.enter(name)?;
    let out = dev.alloc::<T>(n, name)?;
    if n == 0 {
        return Ok(out);
    }
    let f = dev.kernel::<T>(&MODULE, "unary_backward", name)?;
    let (c, mul, _) = code(op);
    let mul = T::lit(mul);
    let (xp, yp, gp, op_, nn) = (x.ptr(), y.ptr(), grad.ptr(), out.ptr(), u(n));
    let grid = dev.grid_for(n, BLOCK);
    dev.launch(
        f,
        (grid, 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [
            arg(&xp),
            arg(&yp),
            arg(&gp),
            arg(&op_),
            arg(&nn),
            arg(&c),
            arg(&mul),
        ],
        name,
    )?;
    Ok(out)
}
