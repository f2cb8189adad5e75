use crate::error::{Error, Result};

/// A runtime shape; tensors are dense and row-major.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    pub fn scalar() -> Self {
        Shape(vec![])
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// The element count of a shape not yet backed by storage, or an error
    /// naming `op` when it does not fit in `usize` (a wrapped count would
    /// describe a buffer far smaller than the shape).
    pub fn checked_elem_count(&self, op: &'static str) -> Result<usize> {
        self.0
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| Error::invalid(op, "element count overflows usize", &[&self.0]))
    }
    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.0[i + 1];
        }
        s
    }
    pub fn dim(&self, op: &'static str, axis: usize) -> Result<usize> {
        self.0.get(axis).copied().ok_or_else(|| {
            Error::invalid(
                op,
                format!("axis {axis} out of range for rank {}", self.rank()),
                &[&self.0],
            )
        })
    }
    /// Splits the shape around `axis` into (outer, axis_len, inner).
    pub fn split_at_axis(&self, op: &'static str, axis: usize) -> Result<(usize, usize, usize)> {
        let len = self.dim(op, axis)?;
        let outer = self.0[..axis].iter().product();
        let inner = self.0[axis + 1..].iter().product();
        Ok((outer, len, inner))
    }
    /// Interprets the shape as a matrix `[rows, cols]` (rank 2 only).
    pub fn as_matrix(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.0.as_slice() {
            [r, c] => Ok((*r, *c)),
            _ => Err(Error::invalid(
                op,
                format!("expected a rank-2 tensor, got rank {}", self.rank()),
                &[&self.0],
            )),
        }
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}

/// numpy-style broadcast of two shapes; returns the output dims and, for each
/// operand, its strides over the output (0 where it is broadcast).
pub fn broadcast_strides(
    op: &'static str,
    lhs: &Shape,
    rhs: &Shape,
) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let rank = lhs.rank().max(rhs.rank());
    let pad = |s: &Shape| -> Vec<usize> {
        let mut d = vec![1; rank - s.rank()];
        d.extend_from_slice(s.dims());
        d
    };
    let (l, r) = (pad(lhs), pad(rhs));
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        if l[i] == r[i] || r[i] == 1 {
            out.push(l[i]);
        } else if l[i] == 1 {
            out.push(r[i]);
        } else {
            return Err(Error::shape_mismatch(op, lhs.dims(), rhs.dims()));
        }
    }
    let strides_for = |d: &[usize]| -> Vec<usize> {
        let base = Shape::new(d.to_vec()).strides();
        (0..rank)
            .map(|i| if d[i] == 1 && out[i] != 1 { 0 } else { base[i] })
            .collect()
    };
    let ls = strides_for(&l);
    let rs = strides_for(&r);
    Ok((out, ls, rs))
}
