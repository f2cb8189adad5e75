use crate::backend::Backend;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::{Indices, Tensor};

fn rows_cols(op: &'static str, d: &[usize]) -> Result<(usize, usize)> {
    match d.split_last() {
        Some((&cols, lead)) if cols > 0 => Ok((lead.iter().product(), cols)),
        _ => Err(Error::invalid(
            op,
            "expected at least one axis of positive size",
            &[d],
        )),
    }
}

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Self> {
        self.softmax_impl("softmax", false)
    }

    /// Log-softmax over the last axis (numerically stable).
    pub fn log_softmax(&self) -> Result<Self> {
        self.softmax_impl("log_softmax", true)
    }

    fn softmax_impl(&self, op: &'static str, log: bool) -> Result<Self> {
        let (rows, cols) = rows_cols(op, self.dims())?;
        let s = self.backend().softmax(self.storage(), rows, cols, log)?;
        Ok(Tensor::from_storage(
            self.backend(),
            s,
            self.shape().clone(),
        ))
    }

    /// Mean cross-entropy of `[batch, classes]` logits against labels, fused and
    /// stable. Returns the scalar loss and the probabilities its backward needs.
    pub fn cross_entropy_full(&self, labels: &Indices<T, B>) -> Result<(Self, Self)> {
        let op = "cross_entropy";
        let (rows, cols) = self.shape().as_matrix(op)?;
        if labels.len() != rows {
            return Err(Error::shape_mismatch(op, self.dims(), &[labels.len()]));
        }
        if rows == 0 || cols == 0 {
            return Err(Error::invalid(
                op,
                "empty batch or no classes",
                &[self.dims()],
            ));
        }
        labels.check_below(op, cols, self.dims())?;
        let (loss, probs) =
            self.backend()
                .cross_entropy(self.storage(), labels.storage(), rows, cols)?;
        Ok((
            Tensor::from_storage(self.backend(), loss, Shape::scalar()),
            Tensor::from_storage(self.backend(), probs, self.shape().clone()),
        ))
    }

    pub fn cross_entropy(&self, labels: &Indices<T, B>) -> Result<Self> {
        Ok(self.cross_entropy_full(labels)?.0)
    }
}

pub(crate) fn softmax_backward<T: Element, B: Backend<T>>(
    y: &Tensor<T, B>,
    log: bool,
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let (rows, cols) = rows_cols("softmax_backward", y.dims())?;
    let s = y
        .backend()
        .softmax_backward(y.storage(), grad.storage(), rows, cols, log)?;
    Ok(Tensor::from_storage(y.backend(), s, y.shape().clone()))
}

pub(crate) fn cross_entropy_backward<T: Element, B: Backend<T>>(
    probs: &Tensor<T, B>,
    labels: &Indices<T, B>,
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let (rows, cols) = probs.shape().as_matrix("cross_entropy_backward")?;
    let s = probs.backend().cross_entropy_backward(
        probs.storage(),
        labels.storage(),
        grad.storage(),
        rows,
        cols,
    )?;
    Ok(Tensor::from_storage(
        probs.backend(),
        s,
        probs.shape().clone(),
    ))
}
