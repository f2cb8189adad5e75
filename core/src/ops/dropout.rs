//! Dropout as a multiplication by a mask drawn on the host from the caller's
//! seeded stream: each element is kept with probability `1 - p` and scaled
//! by `1 / (1 - p)` (PyTorch's inverted dropout), so evaluation is the
//! identity. The mask is one upload and the product a broadcasting `mul`, so
//! every backend runs it and its backward (the same mask) without a kernel of
//! its own, and the stream (not the backend) decides which elements drop:
//! the same seed drops the same elements on every backend and thread count.

use crate::backend::Backend;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Checks a drop probability.
pub(crate) fn check_p(p: f64, dims: &[usize]) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::invalid(
            "dropout",
            format!("drop probability must lie in [0, 1], got {p}"),
            &[dims],
        ))
    }
}

/// A dropout mask of `shape`: `1 / (1 - p)` where `uniform()` (a draw from
/// `[0, 1)`, one per element in row-major order) is at least `p`, 0 elsewhere.
pub fn dropout_mask<T: Element, B: Backend<T>>(
    backend: &B,
    shape: impl Into<Shape>,
    p: f64,
    uniform: &mut dyn FnMut() -> f64,
) -> Result<Tensor<T, B>> {
    let shape = shape.into();
    check_p(p, shape.dims())?;
    let n = shape.checked_elem_count("dropout")?;
    // p == 1 keeps nothing, so the infinite scale is never used.
    let keep = T::lit(1.0 / (1.0 - p));
    let mask: Vec<T> = (0..n)
        .map(|_| if uniform() >= p { keep } else { T::zero() })
        .collect();
    Tensor::from_slice(backend, &mask, shape)
}

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Dropout with drop probability `p` in training; the identity otherwise
    /// (and when `p == 0`, which draws nothing from the stream).
    pub fn dropout(
        &self,
        p: f64,
        training: bool,
        uniform: &mut dyn FnMut() -> f64,
    ) -> Result<Self> {
        check_p(p, self.dims())?;
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        self.mul(&dropout_mask(
            self.backend(),
            self.shape().clone(),
            p,
            uniform,
        )?)
    }
}
