//! A sum over the ranks of a data-parallel job inside the graph (synchronised
//! batch norm). Core knows no transport: the job brings a [`RankSum`].
//!
//! Forward: `y = sum_r x_r` (every rank gets the same `y`). Backward: each
//! rank's parameter gradients are later combined across ranks with weights
//! `c_r`; the job's objective is `sum_r c_r L_r`, so the adjoint reaching
//! `x_r` is `(sum_r' c_r' dL_r'/dy) / c_r`. With `c_r` proportional to the
//! op's `weight` (a mean over `n_r` rows combined with `c_r = n_r / N`:
//! `weight = n_r`), the rule `grad_x = sum_r(grad * weight) / weight` is
//! exact.

use crate::backend::Backend;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Element-wise sum of a tensor over every rank of a job. Every rank calls
/// it in the same order with tensors of the same shapes.
pub trait RankSum<T: Element, B: Backend<T>>: Send + Sync {
    fn sum(&self, x: &Tensor<T, B>) -> Result<Tensor<T, B>>;
}

/// `f.sum(x)`, checked to keep the shape.
pub(crate) fn rank_sum_forward<T: Element, B: Backend<T>>(
    f: &dyn RankSum<T, B>,
    x: &Tensor<T, B>,
    weight: f64,
) -> Result<Tensor<T, B>> {
    if !(weight > 0.0 && weight.is_finite()) {
        return Err(Error::invalid(
            "rank_sum",
            format!("the adjoint weight must be positive and finite, got {weight}"),
            &[x.dims()],
        ));
    }
    let y = f.sum(x)?;
    if y.dims() != x.dims() {
        return Err(Error::invalid(
            "rank_sum",
            "the sum over ranks changed the shape",
            &[x.dims(), y.dims()],
        ));
    }
    Ok(y)
}

/// `grad_x = f.sum(grad * weight) / weight`.
pub(crate) fn rank_sum_backward<T: Element, B: Backend<T>>(
    f: &dyn RankSum<T, B>,
    weight: f64,
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let g = rank_sum_forward(f, &grad.scale(weight)?, weight)?;
    g.scale(1.0 / weight)
}
