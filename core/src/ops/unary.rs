use crate::backend::{Backend, UnaryOp};
use crate::element::Element;
use crate::error::Result;
use crate::tensor::Tensor;

/// The named element-wise functions, for every type with a `unary(op)`:
/// [`Tensor`] here and `Var` on the tape.
macro_rules! unary_shorthands {
    () => {
        pub fn relu(&self) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Relu)
        }
        pub fn sigmoid(&self) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Sigmoid)
        }
        pub fn tanh(&self) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Tanh)
        }
        pub fn exp(&self) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Exp)
        }
        pub fn log(&self) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Log)
        }
        pub fn neg(&self) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Neg)
        }
        pub fn sqr(&self) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Sqr)
        }
        pub fn sqrt(&self) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Sqrt)
        }
        /// `mul * x + add`.
        pub fn affine(&self, mul: f64, add: f64) -> $crate::error::Result<Self> {
            self.unary($crate::backend::UnaryOp::Affine { mul, add })
        }
        pub fn scale(&self, mul: f64) -> $crate::error::Result<Self> {
            self.affine(mul, 0.0)
        }
    };
}
pub(crate) use unary_shorthands;

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    pub fn unary(&self, op: UnaryOp) -> Result<Self> {
        let s = self.backend().unary(op, self.storage())?;
        Ok(Tensor::from_storage(
            self.backend(),
            s,
            self.shape().clone(),
        ))
    }
    unary_shorthands!();
}

pub(crate) fn unary_backward<T: Element, B: Backend<T>>(
    op: UnaryOp,
    x: &Tensor<T, B>,
    y: &Tensor<T, B>,
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let s = x
        .backend()
        .unary_backward(op, x.storage(), y.storage(), grad.storage())?;
    Ok(Tensor::from_storage(x.backend(), s, x.shape().clone()))
}
