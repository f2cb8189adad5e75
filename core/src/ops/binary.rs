use crate::backend::{Backend, BinaryOp, UnaryOp};
use crate::element::Element;
use crate::error::Result;
use crate::shape::{broadcast_strides, Shape};
use crate::tensor::Tensor;

pub(crate) fn op_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
    }
}

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    /// Element-wise op with numpy broadcasting (bias rows, scalars, columns...).
    pub fn binary(&self, op: BinaryOp, rhs: &Self) -> Result<Self> {
        let (out, ls, rs) = broadcast_strides(op_name(op), self.shape(), rhs.shape())?;
        let s = self
            .backend()
            .binary(op, self.storage(), &ls, rhs.storage(), &rs, &out)?;
        Ok(Tensor::from_storage(self.backend(), s, out))
    }
    pub fn add(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Add, rhs)
    }
    pub fn sub(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Sub, rhs)
    }
    pub fn mul(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Mul, rhs)
    }
    pub fn div(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Div, rhs)
    }

    /// Sums a broadcast gradient back down to `target` (the shape of the operand).
    pub fn sum_to_shape(&self, target: &Shape) -> Result<Self> {
        if self.shape() == target {
            return Ok(self.clone());
        }
        let rank = self.rank();
        let mut padded = vec![1; rank.saturating_sub(target.rank())];
        padded.extend_from_slice(target.dims());
        let mut cur = self.clone();
        for axis in 0..rank {
            if padded[axis] == 1 && cur.dims()[axis] != 1 {
                cur = cur.sum_axis(axis, true)?;
            }
        }
        cur.reshape(target.clone())
    }
}

pub(crate) fn binary_backward<T: Element, B: Backend<T>>(
    op: BinaryOp,
    a: &Tensor<T, B>,
    b: &Tensor<T, B>,
    grad: &Tensor<T, B>,
    needs: &[bool],
) -> Result<Vec<Option<Tensor<T, B>>>> {
    let ga = if needs[0] {
        let g = match op {
            BinaryOp::Add | BinaryOp::Sub => grad.clone(),
            BinaryOp::Mul => grad.mul(b)?,
            BinaryOp::Div => grad.div(b)?,
        };
        Some(g.sum_to_shape(a.shape())?)
    } else {
        None
    };
    let gb = if needs[1] {
        let g = match op {
            BinaryOp::Add => grad.clone(),
            BinaryOp::Sub => grad.unary(UnaryOp::Neg)?,
            BinaryOp::Mul => grad.mul(a)?,
            // d(a/b)/db = -a / b^2
            BinaryOp::Div => grad
                .mul(a)?
                .div(&b.unary(UnaryOp::Sqr)?)?
                .unary(UnaryOp::Neg)?,
        };
        Some(g.sum_to_shape(b.shape())?)
    } else {
        None
    };
    Ok(vec![ga, gb])
}
