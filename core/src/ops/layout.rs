use crate::backend::Backend;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::shape::{broadcast_strides, Shape};
use crate::tensor::Tensor;

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Materialises a numpy-style broadcast of `self` to `shape`.
    pub fn broadcast_to(&self, shape: &Shape) -> Result<Self> {
        let (out, src_strides, _) = broadcast_strides("broadcast_to", self.shape(), shape)?;
        if out.as_slice() != shape.dims() {
            return Err(Error::shape_mismatch(
                "broadcast_to",
                self.dims(),
                shape.dims(),
            ));
        }
        let count = shape.checked_elem_count("broadcast_to").map_err(|_| {
            Error::invalid(
                "broadcast_to",
                "target element count overflows usize",
                &[self.dims(), shape.dims()],
            )
        })?;
        let mut dst = self.backend().zeros(count)?;
        if count > 0 {
            self.backend().copy_strided(
                &mut dst,
                0,
                &shape.strides(),
                self.storage(),
                0,
                &src_strides,
                &out,
            )?;
        }
        Ok(Tensor::from_storage(self.backend(), dst, shape.clone()))
    }

    /// Collapses every axis after the first: `[n, ...] -> [n, prod(...)]`.
    pub fn flatten(&self) -> Result<Self> {
        let d = self.dims();
        if d.is_empty() {
            return Err(Error::invalid("flatten", "cannot flatten a scalar", &[d]));
        }
        let rest: usize = d[1..].iter().product();
        self.reshape([d[0], rest])
    }

    /// `len` entries of `axis` starting at `start` (a copy).
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        let (outer, alen, inner) = self.shape().split_at_axis("narrow", axis)?;
        if start.checked_add(len).filter(|&end| end <= alen).is_none() {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "range {start}..{start}+{len} out of bounds for axis {axis} of size {alen}"
                ),
                &[self.dims()],
            ));
        }
        let mut dims = self.dims().to_vec();
        dims[axis] = len;
        let mut dst = self.backend().zeros(outer * len * inner)?;
        if outer * len * inner > 0 {
            self.backend().copy_strided(
                &mut dst,
                0,
                &[len * inner, inner, 1],
                self.storage(),
                start * inner,
                &[alen * inner, inner, 1],
                &[outer, len, inner],
            )?;
        }
        Ok(Tensor::from_storage(self.backend(), dst, dims))
    }

    /// Concatenation along `axis`; all other axes must agree.
    pub fn concat(parts: &[&Self], axis: usize) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("concat", "no tensors to concatenate", &[]))?;
        let rank = first.rank();
        if axis >= rank {
            return Err(Error::invalid(
                "concat",
                format!("axis {axis} out of range for rank {rank}"),
                &[first.dims()],
            ));
        }
        let mut total = 0;
        for p in parts {
            let same_rest =
                p.rank() == rank && (0..rank).all(|i| i == axis || p.dims()[i] == first.dims()[i]);
            if !same_rest {
                return Err(Error::shape_mismatch("concat", first.dims(), p.dims()));
            }
            total += p.dims()[axis];
        }
        let mut dims = first.dims().to_vec();
        dims[axis] = total;
        let outer: usize = dims[..axis].iter().product();
        let inner: usize = dims[axis + 1..].iter().product();
        let backend = first.backend();
        let mut dst = backend.zeros(outer * total * inner)?;
        let mut offset = 0;
        for p in parts {
            let len = p.dims()[axis];
            if outer * len * inner > 0 {
                backend.copy_strided(
                    &mut dst,
                    offset * inner,
                    &[total * inner, inner, 1],
                    p.storage(),
                    0,
                    &[len * inner, inner, 1],
                    &[outer, len, inner],
                )?;
            }
            offset += len;
        }
        Ok(Tensor::from_storage(backend, dst, dims))
    }
}

/// Gradient of `narrow`: the output gradient placed back in a zero tensor.
pub(crate) fn narrow_backward<T: Element, B: Backend<T>>(
    in_shape: &Shape,
    axis: usize,
    start: usize,
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let (outer, alen, inner) = in_shape.split_at_axis("narrow_backward", axis)?;
    let len = grad.dims()[axis];
    let backend = grad.backend();
    let mut dst = backend.zeros(in_shape.elem_count())?;
    if outer * len * inner > 0 {
        backend.copy_strided(
            &mut dst,
            start * inner,
            &[alen * inner, inner, 1],
            grad.storage(),
            0,
            &[len * inner, inner, 1],
            &[outer, len, inner],
        )?;
    }
    Ok(Tensor::from_storage(backend, dst, in_shape.clone()))
}

/// Gradient of `concat`: one slice of the output gradient per input.
pub(crate) fn concat_backward<T: Element, B: Backend<T>>(
    axis: usize,
    sizes: &[usize],
    grad: &Tensor<T, B>,
    needs: &[bool],
) -> Result<Vec<Option<Tensor<T, B>>>> {
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for (i, &len) in sizes.iter().enumerate() {
        out.push(if needs[i] {
            Some(grad.narrow(axis, start, len)?)
        } else {
            None
        });
        start += len;
    }
    Ok(out)
}
