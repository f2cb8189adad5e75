//! CPU backend: host `Vec` storage; our own AVX-512 / AVX2 / scalar kernels
//! for GEMV, rank-1 updates and small or skinny GEMMs, matrixmultiply for large
//! GEMMs; rayon for element-wise work and batch-parallel conv / pooling.
//!
//! Threads: all parallel work runs on rayon's global pool, so `RAYON_NUM_THREADS`
//! or [`set_num_threads`] (before any work) sets the thread count; see `gemm`
//! for how matrixmultiply's own pool is kept from running at the same time.

mod alloc;
mod batch_norm;
mod conv;
mod elementwise;
mod gemm;
mod handoff;
pub mod kernels;
mod optim;
mod pool;
mod reduce;
mod rls;
mod simd;
mod strided;
mod threads;

use mla_core::{
    AdamConfig, Backend, BatchNormGeometry, BinaryOp, Conv2dGeometry, Element, Error, GemmConfig,
    Pool2dGeometry, Result, SgdConfig, UnaryOp,
};

pub use alloc::{set_poison_uninit, tune_allocator};
pub use gemm::CpuFloat;
pub use simd::{
    active_isa, detected as detected_isa, isa_from_env, set_isa_override, Isa, ISA_ENV,
};
pub use threads::{num_threads, set_num_threads};

/// The CPU device. Cheap to clone.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Cpu {
    pub fn new() -> Self {
        Cpu
    }
}

/// Elements per rayon task for element-wise work: below this, threading costs more than it saves.
pub(crate) const PAR_CHUNK: usize = 1 << 15;

impl<T: CpuFloat> Backend<T> for Cpu {
    type Storage = Vec<T>;
    type Index = Vec<u32>;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn storage_len(&self, s: &Vec<T>) -> usize {
        s.len()
    }
    fn index_len(&self, s: &Vec<u32>) -> usize {
        s.len()
    }
    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        Ok(alloc::zeroed_vec(len))
    }
    fn from_slice(&self, data: &[T]) -> Result<Vec<T>> {
        Ok(data.to_vec())
    }
    fn to_vec(&self, s: &Vec<T>) -> Result<Vec<T>> {
        Ok(s.clone())
    }
    fn index_from_slice(&self, idx: &[u32]) -> Result<Vec<u32>> {
        Ok(idx.to_vec())
    }
    fn index_to_vec(&self, idx: &Vec<u32>) -> Result<Vec<u32>> {
        Ok(idx.clone())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn copy_strided(
        &self,
        dst: &mut Vec<T>,
        dst_offset: usize,
        dst_strides: &[usize],
        src: &Vec<T>,
        src_offset: usize,
        src_strides: &[usize],
        dims: &[usize],
    ) -> Result<()> {
        strided::copy(
            dst,
            dst_offset,
            dst_strides,
            src,
            src_offset,
            src_strides,
            dims,
        )
    }

    fn gemm(&self, cfg: &GemmConfig, a: &Vec<T>, b: &Vec<T>) -> Result<Vec<T>> {
        gemm::gemm(cfg, a, b)
    }

    fn unary(&self, op: UnaryOp, x: &Vec<T>) -> Result<Vec<T>> {
        Ok(elementwise::unary(op, x))
    }
    fn unary_backward(&self, op: UnaryOp, x: &Vec<T>, y: &Vec<T>, grad: &Vec<T>) -> Result<Vec<T>> {
        Ok(elementwise::unary_backward(op, x, y, grad))
    }
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &Vec<T>,
        lhs_strides: &[usize],
        rhs: &Vec<T>,
        rhs_strides: &[usize],
        out_dims: &[usize],
    ) -> Result<Vec<T>> {
        Ok(elementwise::binary(
            op,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            out_dims,
        ))
    }

    fn sum_axis(&self, x: &Vec<T>, outer: usize, len: usize, inner: usize) -> Result<Vec<T>> {
        Ok(reduce::sum_axis(x, outer, len, inner))
    }
    fn softmax(&self, x: &Vec<T>, rows: usize, cols: usize, log: bool) -> Result<Vec<T>> {
        Ok(reduce::softmax(x, rows, cols, log))
    }
    fn softmax_backward(
        &self,
        y: &Vec<T>,
        grad: &Vec<T>,
        rows: usize,
        cols: usize,
        log: bool,
    ) -> Result<Vec<T>> {
        Ok(reduce::softmax_backward(y, grad, rows, cols, log))
    }
    fn cross_entropy(
        &self,
        logits: &Vec<T>,
        labels: &Vec<u32>,
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<T>, Vec<T>)> {
        reduce::cross_entropy(logits, labels, rows, cols)
    }
    fn cross_entropy_backward(
        &self,
        probs: &Vec<T>,
        labels: &Vec<u32>,
        grad_loss: &Vec<T>,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<T>> {
        reduce::cross_entropy_backward(probs, labels, grad_loss, rows, cols)
    }

    fn gather_rows(&self, x: &Vec<T>, idx: &Vec<u32>, row_len: usize) -> Result<Vec<T>> {
        let rows = x.len().checked_div(row_len).unwrap_or(0);
        let mut out = Vec::with_capacity(idx.len() * row_len);
        for &i in idx {
            let i = i as usize;
            if i >= rows {
                return Err(Error::invalid(
                    "gather_rows",
                    format!("index {i} out of range for {rows} rows"),
                    &[],
                ));
            }
            out.extend_from_slice(&x[i * row_len..(i + 1) * row_len]);
        }
        Ok(out)
    }
    fn scatter_add_rows(
        &self,
        grad: &Vec<T>,
        idx: &Vec<u32>,
        rows_out: usize,
        row_len: usize,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::zero(); rows_out * row_len];
        for (k, &i) in idx.iter().enumerate() {
            let i = i as usize;
            if i >= rows_out {
                return Err(Error::invalid(
                    "scatter_add_rows",
                    format!("index {i} out of range for {rows_out} rows"),
                    &[],
                ));
            }
            let dst = &mut out[i * row_len..(i + 1) * row_len];
            for (d, &g) in dst.iter_mut().zip(&grad[k * row_len..(k + 1) * row_len]) {
                *d = *d + g;
            }
        }
        Ok(out)
    }

    fn im2col(&self, x: &Vec<T>, g: &Conv2dGeometry) -> Result<Vec<T>> {
        Ok(conv::im2col(x, g))
    }
    fn col2im(&self, cols: &Vec<T>, g: &Conv2dGeometry) -> Result<Vec<T>> {
        Ok(conv::col2im(cols, g))
    }
    fn conv2d(&self, x: &Vec<T>, w: &Vec<T>, g: &Conv2dGeometry, oc: usize) -> Result<Vec<T>> {
        conv::conv2d(x, w, g, oc)
    }
    fn conv2d_backward(
        &self,
        x: &Vec<T>,
        w: &Vec<T>,
        grad: &Vec<T>,
        g: &Conv2dGeometry,
        oc: usize,
        need_x: bool,
        need_w: bool,
    ) -> Result<(Option<Vec<T>>, Option<Vec<T>>)> {
        conv::conv2d_backward(x, w, grad, g, oc, need_x, need_w)
    }

    fn max_pool2d(&self, x: &Vec<T>, g: &Pool2dGeometry) -> Result<(Vec<T>, Vec<u32>)> {
        Ok(pool::max_pool2d(x, g))
    }
    fn max_pool2d_backward(
        &self,
        grad: &Vec<T>,
        argmax: &Vec<u32>,
        g: &Pool2dGeometry,
    ) -> Result<Vec<T>> {
        Ok(pool::max_pool2d_backward(grad, argmax, g))
    }
    fn avg_pool2d(&self, x: &Vec<T>, g: &Pool2dGeometry) -> Result<Vec<T>> {
        no_avg_padding("avg_pool2d", g)?;
        Ok(pool::avg_pool2d(x, g))
    }
    fn avg_pool2d_backward(&self, grad: &Vec<T>, g: &Pool2dGeometry) -> Result<Vec<T>> {
        no_avg_padding("avg_pool2d_backward", g)?;
        Ok(pool::avg_pool2d_backward(grad, g))
    }

    fn batch_norm(
        &self,
        x: &Vec<T>,
        weight: &Vec<T>,
        bias: &Vec<T>,
        g: &BatchNormGeometry,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        batch_norm::batch_norm(x, weight, bias, g)
    }
    fn batch_norm_backward(
        &self,
        x: &Vec<T>,
        grad: &Vec<T>,
        mean: &Vec<T>,
        var: &Vec<T>,
        weight: &Vec<T>,
        g: &BatchNormGeometry,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        batch_norm::batch_norm_backward(x, grad, mean, var, weight, g)
    }

    fn sgd_step(
        &self,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        velocity: Option<&mut Vec<T>>,
        cfg: &SgdConfig,
    ) -> Result<()> {
        optim::sgd_step(param, grad, velocity, cfg);
        Ok(())
    }
    fn adam_step(
        &self,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        cfg: &AdamConfig,
        step: u64,
    ) -> Result<()> {
        optim::adam_step(param, grad, m, v, cfg, step);
        Ok(())
    }

    fn rls_project(
        &self,
        p: &mut Vec<T>,
        r: &Vec<T>,
        grad_w: Option<&Vec<T>>,
        c: usize,
        s: usize,
        alpha: f64,
    ) -> Result<Option<Vec<T>>> {
        Ok(rls::rls_project(p, r, grad_w, c, s, alpha))
    }
}

/// Average pooling has no padded form (the divisor would be ambiguous); the
/// tensor layer never asks for one, this guards direct backend calls.
fn no_avg_padding(op: &'static str, g: &Pool2dGeometry) -> Result<()> {
    if g.pad == 0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("average pooling takes no padding, got pad {}", g.pad),
            &[&[g.planes, g.h, g.w]],
        ))
    }
}

/// Converts an f64 hyper-parameter to the element type.
#[inline]
pub(crate) fn el<T: Element>(x: f64) -> T {
    T::lit(x)
}
