//! One concrete tensor type: shape + shared storage on a backend.

use crate::backend::Backend;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::shape::Shape;
use std::fmt;
use std::sync::Arc;

pub struct Tensor<T: Element, B: Backend<T>> {
    storage: Arc<B::Storage>,
    shape: Shape,
    backend: B,
}

impl<T: Element, B: Backend<T>> Clone for Tensor<T, B> {
    fn clone(&self) -> Self {
        Tensor {
            storage: self.storage.clone(),
            shape: self.shape.clone(),
            backend: self.backend.clone(),
        }
    }
}

impl<T: Element, B: Backend<T>> fmt::Debug for Tensor<T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor<{:?}, {}>{:?}",
            T::DTYPE,
            self.backend.name(),
            self.shape.dims()
        )
    }
}

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Wraps a storage produced by a backend kernel. The caller guarantees its length.
    pub fn from_storage(backend: &B, storage: B::Storage, shape: impl Into<Shape>) -> Self {
        Tensor {
            storage: Arc::new(storage),
            shape: shape.into(),
            backend: backend.clone(),
        }
    }

    pub fn from_slice(backend: &B, data: &[T], shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let count = shape.checked_elem_count("from_slice")?;
        if data.len() != count {
            return Err(Error::invalid(
                "from_slice",
                format!(
                    "{} values do not fill the shape ({count} elements)",
                    data.len()
                ),
                &[shape.dims()],
            ));
        }
        Ok(Self::from_storage(
            backend,
            backend.from_slice(data)?,
            shape,
        ))
    }

    pub fn zeros(backend: &B, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let count = shape.checked_elem_count("zeros")?;
        Ok(Self::from_storage(backend, backend.zeros(count)?, shape))
    }

    pub fn full(backend: &B, value: T, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let data = vec![value; shape.checked_elem_count("full")?];
        Self::from_slice(backend, &data, shape)
    }

    pub fn scalar(backend: &B, value: T) -> Result<Self> {
        Self::from_slice(backend, &[value], Shape::scalar())
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn storage(&self) -> &B::Storage {
        &self.storage
    }

    /// Mutable access for in-place updates (optimizers, HGM). Copies the
    /// storage first if another tensor still shares it.
    pub fn storage_mut(&mut self) -> Result<&mut B::Storage> {
        if Arc::get_mut(&mut self.storage).is_none() {
            let copy = self.contiguous_copy()?;
            self.storage = Arc::new(copy);
        }
        Ok(Arc::get_mut(&mut self.storage).expect("unique after copy"))
    }

    fn contiguous_copy(&self) -> Result<B::Storage> {
        let n = self.elem_count();
        let mut dst = self.backend.zeros(n)?;
        self.backend
            .copy_strided(&mut dst, 0, &[1], &self.storage, 0, &[1], &[n])?;
        Ok(dst)
    }

    /// Explicit read back to the host.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.backend.to_vec(&self.storage)
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::invalid(
                "to_scalar",
                format!("expected exactly one element, got {}", self.elem_count()),
                &[self.dims()],
            ));
        }
        Ok(self.to_vec()?[0])
    }

    /// Same data, new shape (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.checked_elem_count("reshape").ok() != Some(self.elem_count()) {
            return Err(Error::shape_mismatch("reshape", self.dims(), shape.dims()));
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            shape,
            backend: self.backend.clone(),
        })
    }

    /// Same elements as an independent buffer.
    pub fn deep_clone(&self) -> Result<Self> {
        Ok(Self::from_storage(
            &self.backend,
            self.contiguous_copy()?,
            self.shape.clone(),
        ))
    }
}

/// Integer indices on a backend (labels, selected rows). Keeps the largest
/// value seen on the host so ops can check ranges without reading the device.
pub struct Indices<T: Element, B: Backend<T>> {
    idx: Arc<B::Index>,
    len: usize,
    max: Option<u32>,
}

impl<T: Element, B: Backend<T>> Clone for Indices<T, B> {
    fn clone(&self) -> Self {
        Indices {
            idx: self.idx.clone(),
            len: self.len,
            max: self.max,
        }
    }
}

impl<T: Element, B: Backend<T>> Indices<T, B> {
    pub fn new(backend: &B, idx: &[u32]) -> Result<Self> {
        Ok(Indices {
            idx: Arc::new(backend.index_from_slice(idx)?),
            len: idx.len(),
            max: idx.iter().copied().max(),
        })
    }
    pub fn from_usize(backend: &B, idx: &[usize]) -> Result<Self> {
        let v: Vec<u32> = idx
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| {
                    Error::invalid("indices", format!("index {i} does not fit in u32"), &[])
                })
            })
            .collect::<Result<_>>()?;
        Self::new(backend, &v)
    }
    /// Wraps indices produced on the backend (e.g. pooling argmax); no host maximum is known.
    pub fn from_raw(idx: B::Index, len: usize) -> Self {
        Indices {
            idx: Arc::new(idx),
            len,
            max: None,
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn max(&self) -> Option<u32> {
        self.max
    }
    pub fn storage(&self) -> &B::Index {
        &self.idx
    }
    /// Checks every index is `< bound`.
    pub fn check_below(&self, op: &'static str, bound: usize, shape: &[usize]) -> Result<()> {
        match self.max {
            Some(m) if m as usize >= bound => Err(Error::invalid(
                op,
                format!("index {m} out of range for size {bound}"),
                &[shape, &[self.len]],
            )),
            _ => Ok(()),
        }
    }
}
