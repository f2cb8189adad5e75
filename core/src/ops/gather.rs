use crate::backend::Backend;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::{Indices, Tensor};

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Selects rows (entries of axis 0): mini-batch selection.
    pub fn gather_rows(&self, idx: &Indices<T, B>) -> Result<Self> {
        let d = self.dims();
        if d.is_empty() {
            return Err(Error::invalid(
                "gather_rows",
                "cannot gather rows of a scalar",
                &[d],
            ));
        }
        idx.check_below("gather_rows", d[0], d)?;
        let row_len: usize = d[1..].iter().product();
        let mut dims = d.to_vec();
        dims[0] = idx.len();
        // An empty result needs no kernel; with empty rows a kernel cannot even
        // tell how many rows `x` has, so it would misjudge the indices.
        if idx.len() * row_len == 0 {
            return Tensor::zeros(self.backend(), dims);
        }
        let s = self
            .backend()
            .gather_rows(self.storage(), idx.storage(), row_len)?;
        Ok(Tensor::from_storage(self.backend(), s, dims))
    }
}

pub(crate) fn gather_rows_backward<T: Element, B: Backend<T>>(
    idx: &Indices<T, B>,
    rows: usize,
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let row_len: usize = grad.dims()[1..].iter().product();
    let mut dims = grad.dims().to_vec();
    dims[0] = rows;
    if rows * row_len == 0 {
        return Tensor::zeros(grad.backend(), dims);
    }
    let s = grad
        .backend()
        .scatter_add_rows(grad.storage(), idx.storage(), rows, row_len)?;
    Ok(Tensor::from_storage(grad.backend(), s, dims))
}
