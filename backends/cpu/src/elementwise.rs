use crate::{el, CpuFloat, PAR_CHUNK};
use mla_core::{BinaryOp, Shape, UnaryOp};
use rayon::prelude::*;

#[inline]
fn unary_one<T: CpuFloat>(op: UnaryOp, x: T) -> T {
    match op {
        UnaryOp::Relu => if x > T::zero() { x } else { T::zero() },
        UnaryOp::Sigmoid => T::one() / (T::one() + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Neg => -x,
        UnaryOp::Sqr => x * x,
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Affine { mul, add } => x * el::<T>(mul) + el::<T>(add),
    }
}

/// `f'(x)` expressed with whichever of `x`, `y = f(x)` is cheaper.
#[inline]
fn derivative<T: CpuFloat>(op: UnaryOp, x: T, y: T) -> T {
    let two = el::<T>(2.0);
    match op {
        UnaryOp::Relu => if x > T::zero() { T::one() } else { T::zero() },
        UnaryOp::Sigmoid => y * (T::one() - y),
        UnaryOp::Tanh => T::one() - y * y,
        UnaryOp::Exp => y,
        UnaryOp::Log => T::one() / x,
        UnaryOp::Neg => -T::one(),
        UnaryOp::Sqr => two * x,
        UnaryOp::Sqrt => T::one() / (two * y),
        UnaryOp::Affine { mul, .. } => el::<T>(mul),
    }
}

pub(crate) fn unary<T: CpuFloat>(op: UnaryOp, x: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = unary_one(op, x);
        }
    });
    out
}

pub(crate) fn unary_backward<T: CpuFloat>(op: UnaryOp, x: &[T], y: &[T], grad: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, o)| {
        let base = c * PAR_CHUNK;
        for (j, o) in o.iter_mut().enumerate() {
            let i = base + j;
            *o = grad[i] * derivative(op, x[i], y[i]);
        }
    });
    out
}

#[inline]
fn binary_one<T: CpuFloat>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }
}

/// Broadcasting element-wise op. Rows of the innermost axis are processed as a
/// unit so the common cases (same shape, bias row, scalar) stay tight loops.
pub(crate) fn binary<T: CpuFloat>(op: BinaryOp, lhs: &[T], ls: &[usize], rhs: &[T], rs: &[usize], dims: &[usize]) -> Vec<T> {
    let total: usize = dims.iter().product();
    let mut out = vec![T::zero(); total];
    if total == 0 {
        return out;
    }
    let rank = dims.len();
    if rank == 0 {
        out[0] = binary_one(op, lhs[0], rhs[0]);
        return out;
    }
    let inner = dims[rank - 1];
    let (lsi, rsi) = (ls[rank - 1], rs[rank - 1]);
    let outer_dims = &dims[..rank - 1];
    let outer_strides = Shape::new(outer_dims.to_vec()).strides();
    let row = |r: usize, o: &mut [T]| {
        // Decompose the row number into outer indices to find each operand's start.
        let (mut lo, mut ro, mut rem) = (0, 0, r);
        for ax in 0..rank - 1 {
            let i = rem / outer_strides[ax];
            rem %= outer_strides[ax];
            lo += i * ls[ax];
            ro += i * rs[ax];
        }
        match (lsi, rsi) {
            (1, 1) => {
                for ((o, &a), &b) in o.iter_mut().zip(&lhs[lo..lo + inner]).zip(&rhs[ro..ro + inner]) {
                    *o = binary_one(op, a, b);
                }
            }
            (1, 0) => {
                let b = rhs[ro];
                for (o, &a) in o.iter_mut().zip(&lhs[lo..lo + inner]) {
                    *o = binary_one(op, a, b);
                }
            }
            (0, 1) => {
                let a = lhs[lo];
                for (o, &b) in o.iter_mut().zip(&rhs[ro..ro + inner]) {
                    *o = binary_one(op, a, b);
                }
            }
            _ => {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = binary_one(op, lhs[lo + j * lsi], rhs[ro + j * rsi]);
                }
            }
        }
    };
    let rows_per_task = (PAR_CHUNK / inner.max(1)).max(1);
    out.par_chunks_mut(rows_per_task * inner).enumerate().for_each(|(c, block)| {
        for (k, o) in block.chunks_mut(inner).enumerate() {
            row(c * rows_per_task + k, o);
        }
    });
    out
}
