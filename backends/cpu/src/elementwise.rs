//! Element-wise kernels. The op is matched once per call and the per-element
//! loop is monomorphised per op, so the simple ones (ReLU, add, mul...) vectorise.

use crate::alloc::uninit_vec;
use crate::{el, CpuFloat, PAR_CHUNK};
use mla_core::{BinaryOp, UnaryOp};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `out[i] = f(x[i])` over rayon chunks.
fn map1<T: CpuFloat>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    // SAFETY: every chunk of `out` is written element by element below.
    unsafe {
        uninit_vec(x.len(), |out| {
            out.par_chunks_mut(PAR_CHUNK)
                .zip(x.par_chunks(PAR_CHUNK))
                .for_each(|(o, x)| {
                    for (o, &x) in o.iter_mut().zip(x) {
                        o.write(f(x));
                    }
                })
        })
    }
}

/// `out[i] = f(a[i], b[i], c[i])` over rayon chunks.
fn map3<T: CpuFloat>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T + Sync) -> Vec<T> {
    let len = a.len().min(b.len()).min(c.len());
    // SAFETY: every chunk of `out` is written element by element below.
    unsafe {
        uninit_vec(len, |out| {
            out.par_chunks_mut(PAR_CHUNK)
                .enumerate()
                .for_each(|(ci, o)| {
                    let r = ci * PAR_CHUNK..ci * PAR_CHUNK + o.len();
                    for (((o, &a), &b), &c) in o
                        .iter_mut()
                        .zip(&a[r.clone()])
                        .zip(&b[r.clone()])
                        .zip(&c[r])
                    {
                        o.write(f(a, b, c));
                    }
                })
        })
    }
}

pub(crate) fn unary<T: CpuFloat>(op: UnaryOp, x: &[T]) -> Vec<T> {
    let (zero, one) = (T::zero(), T::one());
    match op {
        UnaryOp::Relu => map1(x, |x| if x > zero { x } else { zero }),
        UnaryOp::Sigmoid => map1(x, |x| one / (one + (-x).exp())),
        UnaryOp::Tanh => map1(x, |x| x.tanh()),
        UnaryOp::Exp => map1(x, |x| x.exp()),
        UnaryOp::Log => map1(x, |x| x.ln()),
        UnaryOp::Neg => map1(x, |x| -x),
        UnaryOp::Sqr => map1(x, |x| x * x),
        UnaryOp::Sqrt => map1(x, |x| x.sqrt()),
        UnaryOp::Affine { mul, add } => {
            let (m, a) = (el::<T>(mul), el::<T>(add));
            map1(x, move |x| x * m + a)
        }
    }
}

/// `grad * f'(x)`, with `f'` written in whichever of `x`, `y = f(x)` is cheaper.
pub(crate) fn unary_backward<T: CpuFloat>(op: UnaryOp, x: &[T], y: &[T], grad: &[T]) -> Vec<T> {
    let (zero, one, two) = (T::zero(), T::one(), el::<T>(2.0));
    match op {
        UnaryOp::Relu => map3(grad, x, y, |g, x, _| g * if x > zero { one } else { zero }),
        UnaryOp::Sigmoid => map3(grad, x, y, |g, _, y| g * (y * (one - y))),
        UnaryOp::Tanh => map3(grad, x, y, |g, _, y| g * (one - y * y)),
        UnaryOp::Exp => map3(grad, x, y, |g, _, y| g * y),
        UnaryOp::Log => map3(grad, x, y, |g, x, _| g * (one / x)),
        UnaryOp::Neg => map3(grad, x, y, |g, _, _| g * -one),
        UnaryOp::Sqr => map3(grad, x, y, |g, x, _| g * (two * x)),
        UnaryOp::Sqrt => map3(grad, x, y, |g, _, y| g * (one / (two * y))),
        UnaryOp::Affine { mul, .. } => {
            let m = el::<T>(mul);
            map3(grad, x, y, move |g, _, _| g * m)
        }
    }
}

/// Merges adjacent axes that both operands walk contiguously (stride of the
/// outer = stride of the inner * its size), so a bias broadcast over
/// `[n, c, h, w]` becomes `[n, c, h*w]` with long inner rows.
fn coalesce(dims: &[usize], ls: &[usize], rs: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut d, mut l, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for ax in 0..dims.len() {
        if dims[ax] == 1 {
            continue;
        }
        if let (Some(&ll), Some(&rl)) = (l.last(), r.last()) {
            if ll == ls[ax] * dims[ax] && rl == rs[ax] * dims[ax] {
                let last = d.len() - 1;
                d[last] *= dims[ax];
                l[last] = ls[ax];
                r[last] = rs[ax];
                continue;
            }
        }
        d.push(dims[ax]);
        l.push(ls[ax]);
        r.push(rs[ax]);
    }
    (d, l, r)
}

/// Fills `out` (rows `row0..` of length `dims[last]`) with `f(lhs, rhs)`; each
/// operand is read with its own strides. Rows are walked with an odometer, so
/// there is no division per row.
#[allow(clippy::too_many_arguments)]
fn binary_rows<T: CpuFloat>(
    f: &(impl Fn(T, T) -> T + Sync),
    out: &mut [MaybeUninit<T>],
    row0: usize,
    lhs: &[T],
    ls: &[usize],
    rhs: &[T],
    rs: &[usize],
    dims: &[usize],
) {
    let rank = dims.len();
    let inner = dims[rank - 1];
    let (lsi, rsi) = (ls[rank - 1], rs[rank - 1]);
    let outer = &dims[..rank - 1];
    // Outer index of the first row.
    let mut idx = vec![0usize; rank - 1];
    let mut rem = row0;
    for ax in (0..rank - 1).rev() {
        idx[ax] = rem % outer[ax];
        rem /= outer[ax];
    }
    let (mut lo, mut ro) = (0usize, 0usize);
    for ax in 0..rank - 1 {
        lo += idx[ax] * ls[ax];
        ro += idx[ax] * rs[ax];
    }
    for o in out.chunks_mut(inner) {
        match (lsi, rsi) {
            (1, 1) => {
                for ((o, &a), &b) in o
                    .iter_mut()
                    .zip(&lhs[lo..lo + inner])
                    .zip(&rhs[ro..ro + inner])
                {
                    o.write(f(a, b));
                }
            }
            (1, 0) => {
                let b = rhs[ro];
                for (o, &a) in o.iter_mut().zip(&lhs[lo..lo + inner]) {
                    o.write(f(a, b));
                }
            }
            (0, 1) => {
                let a = lhs[lo];
                for (o, &b) in o.iter_mut().zip(&rhs[ro..ro + inner]) {
                    o.write(f(a, b));
                }
            }
            _ => {
                for (j, o) in o.iter_mut().enumerate() {
                    o.write(f(lhs[lo + j * lsi], rhs[ro + j * rsi]));
                }
            }
        }
        // Odometer step to the next row.
        let mut ax = rank - 1;
        while ax > 0 {
            ax -= 1;
            idx[ax] += 1;
            lo += ls[ax];
            ro += rs[ax];
            if idx[ax] < outer[ax] {
                break;
            }
            lo -= idx[ax] * ls[ax];
            ro -= idx[ax] * rs[ax];
            idx[ax] = 0;
        }
    }
}

fn binary_with<T: CpuFloat>(
    f: impl Fn(T, T) -> T + Sync,
    lhs: &[T],
    ls: &[usize],
    rhs: &[T],
    rs: &[usize],
    dims: &[usize],
) -> Vec<T> {
    let total: usize = dims.iter().product();
    let (dims, ls, rs) = coalesce(dims, ls, rs);
    if total == 0 {
        return Vec::new();
    }
    if dims.is_empty() {
        // Every axis has size 1: a single element.
        return vec![f(lhs[0], rhs[0])];
    }
    let inner = dims[dims.len() - 1];
    let rows_per_task = (PAR_CHUNK / inner).max(1);
    // SAFETY: the chunks cover `out` and `binary_rows` writes every element of its chunk.
    unsafe {
        uninit_vec(total, |out| {
            out.par_chunks_mut(rows_per_task * inner)
                .enumerate()
                .for_each(|(c, block)| {
                    binary_rows(&f, block, c * rows_per_task, lhs, &ls, rhs, &rs, &dims);
                })
        })
    }
}

/// Broadcasting element-wise op: each operand is read with its own strides (0 on broadcast axes).
pub(crate) fn binary<T: CpuFloat>(
    op: BinaryOp,
    lhs: &[T],
    ls: &[usize],
    rhs: &[T],
    rs: &[usize],
    dims: &[usize],
) -> Vec<T> {
    match op {
        BinaryOp::Add => binary_with(|a, b| a + b, lhs, ls, rhs, rs, dims),
        BinaryOp::Sub => binary_with(|a, b| a - b, lhs, ls, rhs, rs, dims),
        BinaryOp::Mul => binary_with(|a, b| a * b, lhs, ls, rhs, rs, dims),
        BinaryOp::Div => binary_with(|a, b| a / b, lhs, ls, rhs, rs, dims),
    }
}
