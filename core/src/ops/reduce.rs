use crate::backend::Backend;
use crate::element::Element;
use crate::error::Result;
use crate::shape::Shape;
use crate::tensor::Tensor;

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Sum of every element, as a scalar (shape `[]`).
    pub fn sum_all(&self) -> Result<Self> {
        let s = self
            .backend()
            .sum_axis(self.storage(), 1, self.elem_count(), 1)?;
        Ok(Tensor::from_storage(self.backend(), s, Shape::scalar()))
    }

    pub fn mean_all(&self) -> Result<Self> {
        let n = self.elem_count().max(1);
        self.sum_all()?.scale(1.0 / n as f64)
    }

    /// Sum along `axis`; `keepdim` leaves a 1 in its place.
    pub fn sum_axis(&self, axis: usize, keepdim: bool) -> Result<Self> {
        let (outer, len, inner) = self.shape().split_at_axis("sum_axis", axis)?;
        let mut dims = self.dims().to_vec();
        if keepdim {
            dims[axis] = 1;
        } else {
            dims.remove(axis);
        }
        // An empty result needs no kernel (and kernels may assume rows of positive length).
        if outer * inner == 0 {
            return Tensor::zeros(self.backend(), dims);
        }
        let s = self.backend().sum_axis(self.storage(), outer, len, inner)?;
        Ok(Tensor::from_storage(self.backend(), s, dims))
    }

    pub fn mean_axis(&self, axis: usize, keepdim: bool) -> Result<Self> {
        let len = self.shape().dim("mean_axis", axis)?;
        self.sum_axis(axis, keepdim)?.scale(1.0 / len.max(1) as f64)
    }
}

/// Gradient of a sum: the output gradient spread over the summed axis.
pub(crate) fn sum_axis_backward<T: Element, B: Backend<T>>(
    in_shape: &Shape,
    axis: Option<usize>,
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let kept = match axis {
        None => grad.reshape(vec![1; in_shape.rank()])?,
        Some(a) => {
            let mut d = in_shape.dims().to_vec();
            d[a] = 1;
            grad.reshape(d)?
        }
    };
    kept.broadcast_to(in_shape)
}
