//! Batch normalisation over `[n, c, ...]` (BatchNorm2d on NCHW, BatchNorm1d
//! on `[n, features]` or `[n, c, length]`), with PyTorch's semantics:
//!
//! - training: normalise with the batch mean and the *biased* batch variance,
//!   and return running statistics updated as
//!   `running = (1 - momentum) * running + momentum * batch`, where the batch
//!   variance in that update is the *unbiased* one (`* count / (count - 1)`);
//! - evaluation: normalise with the running statistics.
//!
//! Training mode is one fused backend op with its own backward (the closed
//! form needs the batch statistics, which an unfused graph would recompute);
//! evaluation mode is a per-channel affine map built from broadcasting ops,
//! so it runs (and differentiates) on every backend.

use crate::backend::{Backend, BatchNormGeometry};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Hyper-parameters of a batch-norm layer; the default is PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub momentum: f64,
    pub eps: f64,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// A layer's running statistics: buffers, never differentiated.
pub struct BatchNormStats<T: Element, B: Backend<T>> {
    pub mean: Tensor<T, B>,
    pub var: Tensor<T, B>,
}

impl<T: Element, B: Backend<T>> Clone for BatchNormStats<T, B> {
    fn clone(&self) -> Self {
        BatchNormStats {
            mean: self.mean.clone(),
            var: self.var.clone(),
        }
    }
}

impl<T: Element, B: Backend<T>> std::fmt::Debug for BatchNormStats<T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BatchNormStats(mean {:?}, var {:?})",
            self.mean, self.var
        )
    }
}

impl<T: Element, B: Backend<T>> BatchNormStats<T, B> {
    /// PyTorch's initial state for `channels` channels: mean 0, variance 1.
    pub fn new(backend: &B, channels: usize) -> Result<Self> {
        Ok(BatchNormStats {
            mean: Tensor::zeros(backend, [channels])?,
            var: Tensor::full(backend, T::one(), [channels])?,
        })
    }

    /// The running statistics after a training batch with per-channel
    /// `mean` and biased `var` over `count` values: `(1 - momentum) running
    /// + momentum batch`, the variance unbiased (`count / (count - 1)`).
    pub fn updated(
        &self,
        mean: &Tensor<T, B>,
        var: &Tensor<T, B>,
        count: f64,
        momentum: f64,
    ) -> Result<Self> {
        let m = momentum;
        Ok(BatchNormStats {
            mean: self.mean.scale(1.0 - m)?.add(&mean.scale(m)?)?,
            var: self
                .var
                .scale(1.0 - m)?
                .add(&var.scale(m * count / (count - 1.0))?)?,
        })
    }
}

/// Output of a training-mode forward pass.
pub struct BatchNormTrain<T: Element, B: Backend<T>> {
    pub out: Tensor<T, B>,
    /// Batch mean and biased batch variance, `[c]` (what the backward needs).
    pub mean: Tensor<T, B>,
    pub var: Tensor<T, B>,
    /// The running statistics after this batch.
    pub running: BatchNormStats<T, B>,
    pub geometry: BatchNormGeometry,
}

/// Validates `x` `[n, c, ...]` against `[c]` weight, bias and running
/// statistics, and the hyper-parameters. Training needs more than one value
/// per channel (the unbiased variance divides by `count - 1`), as in PyTorch.
pub fn batch_norm_geometry(
    x: &[usize],
    params: &[&[usize]; 4],
    cfg: &BatchNormConfig,
    training: bool,
) -> Result<BatchNormGeometry> {
    let op = "batch_norm";
    let shapes = |extra: &[usize]| -> Vec<Vec<usize>> {
        let mut v = vec![x.to_vec()];
        v.extend(params.iter().map(|p| p.to_vec()));
        if !extra.is_empty() {
            v.push(extra.to_vec());
        }
        v
    };
    let fail = |msg: String| {
        let all = shapes(&[]);
        let refs: Vec<&[usize]> = all.iter().map(|s| s.as_slice()).collect();
        Error::invalid(op, msg, &refs)
    };
    if x.len() < 2 {
        return Err(fail(
            "expected input [n, c, ...] (rank 2 or more); weight, bias, running mean and variance [c]"
                .into(),
        ));
    }
    let (n, c) = (x[0], x[1]);
    let names = ["weight", "bias", "running mean", "running variance"];
    for (name, p) in names.iter().zip(params) {
        if *p != [c] {
            return Err(fail(format!(
                "{name} has shape {p:?}, expected [{c}] (one value per channel)"
            )));
        }
    }
    if !(cfg.eps > 0.0 && cfg.eps.is_finite()) {
        return Err(fail(format!("eps must be positive, got {}", cfg.eps)));
    }
    if !(0.0..=1.0).contains(&cfg.momentum) {
        return Err(fail(format!(
            "momentum must lie in [0, 1], got {}",
            cfg.momentum
        )));
    }
    let inner = x[2..]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|inner| n.checked_mul(c)?.checked_mul(inner).map(|_| inner))
        .ok_or_else(|| fail("element count overflows usize".into()))?;
    let g = BatchNormGeometry {
        n,
        c,
        inner,
        eps: cfg.eps,
    };
    if training && g.count() <= 1 {
        return Err(fail(format!(
            "training needs more than 1 value per channel, got {}",
            g.count()
        )));
    }
    Ok(g)
}

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Training-mode batch normalisation: normalises with the batch statistics
    /// and returns the updated running statistics alongside.
    pub fn batch_norm_train(
        &self,
        weight: &Self,
        bias: &Self,
        running: &BatchNormStats<T, B>,
        cfg: &BatchNormConfig,
    ) -> Result<BatchNormTrain<T, B>> {
        let params = [
            weight.dims(),
            bias.dims(),
            running.mean.dims(),
            running.var.dims(),
        ];
        let g = batch_norm_geometry(self.dims(), &params, cfg, true)?;
        let backend = self.backend();
        let (y, mean, var) =
            backend.batch_norm(self.storage(), weight.storage(), bias.storage(), &g)?;
        let out = Tensor::from_storage(backend, y, self.shape().clone());
        let mean = Tensor::from_storage(backend, mean, [g.c]);
        let var = Tensor::from_storage(backend, var, [g.c]);
        let running = running.updated(&mean, &var, g.count() as f64, cfg.momentum)?;
        Ok(BatchNormTrain {
            out,
            mean,
            var,
            running,
            geometry: g,
        })
    }

    /// Evaluation-mode batch normalisation with the running statistics.
    pub fn batch_norm_eval(
        &self,
        weight: &Self,
        bias: &Self,
        running: &BatchNormStats<T, B>,
        cfg: &BatchNormConfig,
    ) -> Result<Self> {
        let (scale, shift) = eval_affine(self.dims(), weight, bias, running, cfg)?;
        self.mul(&scale)?.add(&shift)
    }
}

/// The per-channel affine map of evaluation mode, as `[c, 1, ..]` tensors that
/// broadcast over `x`: `scale = weight / sqrt(running_var + eps)`,
/// `shift = bias - running_mean * scale`. The tape's version (`Var::batch_norm_eval`)
/// runs the same ops in the same order, so both give the same values bit for bit.
pub(crate) fn eval_affine<T: Element, B: Backend<T>>(
    x: &[usize],
    weight: &Tensor<T, B>,
    bias: &Tensor<T, B>,
    running: &BatchNormStats<T, B>,
    cfg: &BatchNormConfig,
) -> Result<(Tensor<T, B>, Tensor<T, B>)> {
    let params = [
        weight.dims(),
        bias.dims(),
        running.mean.dims(),
        running.var.dims(),
    ];
    let g = batch_norm_geometry(x, &params, cfg, false)?;
    let sd = running.var.affine(1.0, cfg.eps)?.sqrt()?;
    let scale = weight.div(&sd)?;
    let shift = bias.sub(&running.mean.mul(&scale)?)?;
    let dims = channel_dims(x.len(), g.c);
    Ok((scale.reshape(dims.clone())?, shift.reshape(dims)?))
}

/// `[c, 1, 1, ...]`: a per-channel vector that broadcasts over `[n, c, ...]`.
pub(crate) fn channel_dims(rank: usize, c: usize) -> Vec<usize> {
    let mut d = vec![1; rank - 1];
    d[0] = c;
    d
}

/// Gradients of training-mode batch norm for the input, the weight and the bias.
pub(crate) fn batch_norm_backward<T: Element, B: Backend<T>>(
    x: &Tensor<T, B>,
    weight: &Tensor<T, B>,
    mean: &Tensor<T, B>,
    var: &Tensor<T, B>,
    g: &BatchNormGeometry,
    grad: &Tensor<T, B>,
    needs: &[bool],
) -> Result<Vec<Option<Tensor<T, B>>>> {
    let backend = grad.backend();
    let (dx, dw, db) = backend.batch_norm_backward(
        x.storage(),
        grad.storage(),
        mean.storage(),
        var.storage(),
        weight.storage(),
        g,
    )?;
    let wrap =
        |need: bool, s, dims: Vec<usize>| need.then(|| Tensor::from_storage(backend, s, dims));
    Ok(vec![
        wrap(needs[0], dx, x.dims().to_vec()),
        wrap(needs[1], dw, vec![g.c]),
        wrap(needs[2], db, vec![g.c]),
    ])
}
