//! The backend trait: storage plus the kernels every op is built from.
//!
//! Backends receive arguments that the tensor layer has already validated
//! (shapes agree, indices in range where it can check them); they return
//! `Err` only for failures of their own (device errors, out-of-range indices
//! discovered on the device side).

use crate::element::Element;
use crate::error::{Error, Result};
use std::fmt::Debug;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    /// Natural log.
    Log,
    Neg,
    Sqr,
    Sqrt,
    /// `mul * x + add`.
    Affine {
        mul: f64,
        add: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// `C[i] = op(A[i]) @ op(B[i])` for `i in 0..batch`; `C` is a new contiguous
/// `[batch, m, n]` buffer. `A[i]` is stored row-major as `[m, k]` (`[k, m]`
/// when `trans_a`) starting at `i * stride_a`; a stride of 0 broadcasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmConfig {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub stride_a: usize,
    pub stride_b: usize,
}

impl GemmConfig {
    /// Elements the lhs buffer must hold: the last item starts at
    /// `(batch - 1) * stride_a` and spans `m * k`.
    pub fn lhs_len(&self) -> usize {
        self.operand_len(self.stride_a, self.m * self.k)
    }

    /// Elements the rhs buffer must hold (see [`GemmConfig::lhs_len`]).
    pub fn rhs_len(&self) -> usize {
        self.operand_len(self.stride_b, self.k * self.n)
    }

    fn operand_len(&self, stride: usize, item: usize) -> usize {
        match self.batch {
            0 => 0,
            b => (b - 1) * stride + item,
        }
    }
}

/// Geometry of a 2-D convolution over an NCHW input with an `[oc, c, kh, kw]` weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Conv2dGeometry {
    /// Rows of one sample's column matrix: `c * kh * kw`.
    pub fn col_rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Columns of one sample's column matrix: `oh * ow`.
    pub fn col_cols(&self) -> usize {
        self.oh * self.ow
    }

    /// The convolution's three products over `count` samples, per sample
    /// with `oc` output channels, columns `[ckk, ohw]` and output (or its
    /// gradient) `[oc, ohw]` packed one sample after another.
    fn per_sample(
        count: usize,
        (m, n, k): (usize, usize, usize),
        trans: (bool, bool),
        strides: (usize, usize),
    ) -> GemmConfig {
        GemmConfig {
            batch: count,
            m,
            n,
            k,
            trans_a: trans.0,
            trans_b: trans.1,
            stride_a: strides.0,
            stride_b: strides.1,
        }
    }

    /// Forward: `W [oc, ckk] x cols [ckk, ohw]` per sample.
    pub fn forward_gemm(&self, oc: usize, count: usize) -> GemmConfig {
        let (ckk, ohw) = (self.col_rows(), self.col_cols());
        Self::per_sample(count, (oc, ohw, ckk), (false, false), (0, ckk * ohw))
    }

    /// Input gradient's columns: `W^T [ckk, oc] x dY [oc, ohw]` per sample.
    pub fn input_grad_gemm(&self, oc: usize, count: usize) -> GemmConfig {
        let (ckk, ohw) = (self.col_rows(), self.col_cols());
        Self::per_sample(count, (ckk, ohw, oc), (true, false), (0, oc * ohw))
    }

    /// Per-sample weight gradients: `dY [oc, ohw] x cols^T [ohw, ckk]`.
    pub fn weight_grad_gemm(&self, oc: usize, count: usize) -> GemmConfig {
        let (ckk, ohw) = (self.col_rows(), self.col_cols());
        Self::per_sample(count, (oc, ckk, ohw), (false, true), (oc * ohw, ckk * ohw))
    }
}

/// Geometry of a 2-D pooling over `planes = n * c` planes of `h x w`, output
/// sizes rounded down. Window `(oy, ox)` covers input rows
/// `oy * stride - pad ..` and columns `ox * stride - pad ..`; positions in the
/// padding never win a max (PyTorch's -inf padding) and `pad <= k / 2`, so every
/// window holds at least one input element. Average pooling has `pad == 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Batch normalisation of `x` viewed as `[n, c, inner]` (NCHW: `inner = h * w`;
/// `[n, features]`: `inner = 1`), statistics per channel over `n * inner` values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormGeometry {
    pub n: usize,
    pub c: usize,
    pub inner: usize,
    pub eps: f64,
}

impl BatchNormGeometry {
    /// Values each channel's statistics are taken over.
    pub fn count(&self) -> usize {
        self.n * self.inner
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.inner
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW (decoupled weight decay) when true, L2-in-gradient Adam when false.
    pub decoupled: bool,
}

/// Storage and kernels for one element type on one device.
pub trait Backend<T: Element>: Clone + Send + Sync + Debug + 'static {
    /// A flat buffer of elements living where the backend lives.
    type Storage: Send + Sync + 'static;
    /// A flat buffer of `u32` indices (labels, gathered rows, pooling argmax).
    type Index: Send + Sync + 'static;

    fn name(&self) -> &'static str;
    fn storage_len(&self, s: &Self::Storage) -> usize;
    fn index_len(&self, s: &Self::Index) -> usize;

    fn zeros(&self, len: usize) -> Result<Self::Storage>;
    fn from_slice(&self, data: &[T]) -> Result<Self::Storage>;
    /// Explicit read back to the host (a synchronisation point on devices).
    fn to_vec(&self, s: &Self::Storage) -> Result<Vec<T>>;
    fn index_from_slice(&self, idx: &[u32]) -> Result<Self::Index>;
    fn index_to_vec(&self, idx: &Self::Index) -> Result<Vec<u32>>;
    /// Blocks until all queued work is done (benchmarks time with this).
    fn synchronize(&self) -> Result<()>;

    /// Strided copy of a `dims`-shaped block: element `(i0, i1, ...)` is read at
    /// `src_offset + sum ik * src_strides[k]` and written at
    /// `dst_offset + sum ik * dst_strides[k]`.
    #[allow(clippy::too_many_arguments)]
    fn copy_strided(
        &self,
        dst: &mut Self::Storage,
        dst_offset: usize,
        dst_strides: &[usize],
        src: &Self::Storage,
        src_offset: usize,
        src_strides: &[usize],
        dims: &[usize],
    ) -> Result<()>;

    fn gemm(&self, cfg: &GemmConfig, a: &Self::Storage, b: &Self::Storage)
        -> Result<Self::Storage>;

    fn unary(&self, op: UnaryOp, x: &Self::Storage) -> Result<Self::Storage>;
    /// `grad * f'(x)`, where `y = f(x)` is passed too so rules can use whichever is cheaper.
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Self::Storage,
        y: &Self::Storage,
        grad: &Self::Storage,
    ) -> Result<Self::Storage>;

    /// Element-wise op over `out_dims`; each operand is read with its own strides
    /// (0 on broadcast axes). Output is contiguous.
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &Self::Storage,
        lhs_strides: &[usize],
        rhs: &Self::Storage,
        rhs_strides: &[usize],
        out_dims: &[usize],
    ) -> Result<Self::Storage>;

    /// Sums `[outer, len, inner]` along the middle axis into `[outer, inner]`.
    fn sum_axis(
        &self,
        x: &Self::Storage,
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<Self::Storage>;

    /// Row-wise softmax (or log-softmax when `log`) of a `[rows, cols]` matrix.
    fn softmax(
        &self,
        x: &Self::Storage,
        rows: usize,
        cols: usize,
        log: bool,
    ) -> Result<Self::Storage>;
    /// Backward of `softmax` given its output `y`.
    fn softmax_backward(
        &self,
        y: &Self::Storage,
        grad: &Self::Storage,
        rows: usize,
        cols: usize,
        log: bool,
    ) -> Result<Self::Storage>;

    /// Mean cross-entropy of `[rows, cols]` logits against integer labels.
    /// Returns (loss as a 1-element buffer, softmax probabilities saved for backward).
    fn cross_entropy(
        &self,
        logits: &Self::Storage,
        labels: &Self::Index,
        rows: usize,
        cols: usize,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// `grad_loss[0] * (probs - onehot(labels)) / rows`.
    fn cross_entropy_backward(
        &self,
        probs: &Self::Storage,
        labels: &Self::Index,
        grad_loss: &Self::Storage,
        rows: usize,
        cols: usize,
    ) -> Result<Self::Storage>;

    /// `out[i] = x[idx[i]]` for rows of `row_len` elements.
    fn gather_rows(
        &self,
        x: &Self::Storage,
        idx: &Self::Index,
        row_len: usize,
    ) -> Result<Self::Storage>;
    /// `out[idx[i]] += grad[i]` into a zeroed `[rows_out, row_len]`.
    fn scatter_add_rows(
        &self,
        grad: &Self::Storage,
        idx: &Self::Index,
        rows_out: usize,
        row_len: usize,
    ) -> Result<Self::Storage>;

    /// NCHW input to `[n, c*kh*kw, oh*ow]` columns (zero padding).
    fn im2col(&self, x: &Self::Storage, g: &Conv2dGeometry) -> Result<Self::Storage>;
    /// Adjoint of `im2col`: sums columns back into an NCHW buffer.
    fn col2im(&self, cols: &Self::Storage, g: &Conv2dGeometry) -> Result<Self::Storage>;

    /// Convolution forward: the `[n, oc, oh, ow]` cross-correlation of the
    /// NCHW input `x` with the `[oc, c, kh, kw]` weight `w` (no bias).
    ///
    /// The default is the whole batch's im2col and one batched GEMM (a
    /// column matrix `c kh kw / stride^2` times the input's size); a backend
    /// may work through the batch in chunks instead, as the CPU's does.
    fn conv2d(
        &self,
        x: &Self::Storage,
        w: &Self::Storage,
        g: &Conv2dGeometry,
        oc: usize,
    ) -> Result<Self::Storage> {
        let cols = self.im2col(x, g)?;
        self.gemm(&g.forward_gemm(oc, g.n), w, &cols)
    }

    /// Convolution backward from the output gradient `grad` (`[n, oc, oh,
    /// ow]`): the input gradient when `need_x`, the weight gradient when
    /// `need_w`. The input is taken again rather than its column matrix
    /// kept from the forward pass, which would hold `c kh kw` values per
    /// output position for as long as the tape lives.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn conv2d_backward(
        &self,
        x: &Self::Storage,
        w: &Self::Storage,
        grad: &Self::Storage,
        g: &Conv2dGeometry,
        oc: usize,
        need_x: bool,
        need_w: bool,
    ) -> Result<(Option<Self::Storage>, Option<Self::Storage>)> {
        let gx = if need_x {
            let dcols = self.gemm(&g.input_grad_gemm(oc, g.n), w, grad)?;
            Some(self.col2im(&dcols, g)?)
        } else {
            None
        };
        let gw = if need_w {
            let cols = self.im2col(x, g)?;
            let per_sample = self.gemm(&g.weight_grad_gemm(oc, g.n), grad, &cols)?;
            Some(self.sum_axis(&per_sample, 1, g.n, oc * g.col_rows())?)
        } else {
            None
        };
        Ok((gx, gw))
    }

    /// Max pooling; returns the output and, per output element, the flat index
    /// within its plane of the maximum (first one on ties).
    fn max_pool2d(
        &self,
        x: &Self::Storage,
        g: &Pool2dGeometry,
    ) -> Result<(Self::Storage, Self::Index)>;
    fn max_pool2d_backward(
        &self,
        grad: &Self::Storage,
        argmax: &Self::Index,
        g: &Pool2dGeometry,
    ) -> Result<Self::Storage>;
    fn avg_pool2d(&self, x: &Self::Storage, g: &Pool2dGeometry) -> Result<Self::Storage>;
    fn avg_pool2d_backward(
        &self,
        grad: &Self::Storage,
        g: &Pool2dGeometry,
    ) -> Result<Self::Storage>;

    /// In-place SGD: `g' = grad + wd * p; v = momentum * v + g'; p -= lr * (nesterov ? g' + momentum * v : v)`.
    /// `velocity` is `None` when momentum is 0.
    fn sgd_step(
        &self,
        param: &mut Self::Storage,
        grad: &Self::Storage,
        velocity: Option<&mut Self::Storage>,
        cfg: &SgdConfig,
    ) -> Result<()>;

    /// In-place Adam/AdamW step number `step` (1-based, for bias correction).
    fn adam_step(
        &self,
        param: &mut Self::Storage,
        grad: &Self::Storage,
        m: &mut Self::Storage,
        v: &mut Self::Storage,
        cfg: &AdamConfig,
        step: u64,
    ) -> Result<()>;

    /// Recursive-least-squares projection step of HGM, fused.
    /// `p` is `[s, s]` (symmetric), `r` is `[s]`, `grad_w` is `[c, s]`.
    /// Returns `grad_w @ P_old` (when `grad_w` is given) and updates `p` in place:
    /// `k = P r / (alpha + r^T P r)`, `P <- P - k (P r)^T`.
    fn rls_project(
        &self,
        p: &mut Self::Storage,
        r: &Self::Storage,
        grad_w: Option<&Self::Storage>,
        c: usize,
        s: usize,
        alpha: f64,
    ) -> Result<Option<Self::Storage>>;

    // ---- Ops with a default that reports them missing ----
    //
    // Newer ops start on the CPU backend; a backend without its own kernel
    // inherits these defaults and fails with an error naming the op and the
    // backend instead of failing to compile (the CUDA kernels are a separate
    // piece of work).

    /// Training-mode batch normalisation, affine: per channel `mean` and biased
    /// `var` over the batch, `y = (x - mean) / sqrt(var + eps) * weight + bias`.
    /// Returns `(y, mean, var)`, the statistics as `[c]` buffers.
    fn batch_norm(
        &self,
        x: &Self::Storage,
        weight: &Self::Storage,
        bias: &Self::Storage,
        g: &BatchNormGeometry,
    ) -> Result<(Self::Storage, Self::Storage, Self::Storage)> {
        let _ = (x, weight, bias, g);
        Err(not_implemented("batch_norm", self.name()))
    }

    /// Backward of [`Backend::batch_norm`] given its input, the output gradient
    /// and the saved batch statistics. Returns `(dx, dweight, dbias)`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        x: &Self::Storage,
        grad: &Self::Storage,
        mean: &Self::Storage,
        var: &Self::Storage,
        weight: &Self::Storage,
        g: &BatchNormGeometry,
    ) -> Result<(Self::Storage, Self::Storage, Self::Storage)> {
        let _ = (x, grad, mean, var, weight, g);
        Err(not_implemented("batch_norm_backward", self.name()))
    }
}

/// The error of an op a backend has no kernel for yet.
pub fn not_implemented(op: &'static str, backend: &'static str) -> Error {
    Error::backend(
        op,
        backend,
        format!("{op} is not implemented on the {backend} backend yet"),
    )
}
