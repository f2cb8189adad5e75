use crate::backend::{Backend, UnaryOp};
use crate::element::Element;
use crate::error::Result;
use crate::tensor::Tensor;

impl<T: Element, B: Backend<T>> Tensor<T, B> {
    pub fn unary(&self, op: UnaryOp) -> Result<Self> {
        let s = self.backend().unary(op, self.storage())?;
        Ok(Tensor::from_storage(self.backend(), s, self.shape().clone()))
    }
    pub fn relu(&self) -> Result<Self> {
        self.unary(UnaryOp::Relu)
    }
    pub fn sigmoid(&self) -> Result<Self> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn tanh(&self) -> Result<Self> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn exp(&self) -> Result<Self> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Self> {
        self.unary(UnaryOp::Log)
    }
    pub fn neg(&self) -> Result<Self> {
        self.unary(UnaryOp::Neg)
    }
    pub fn sqr(&self) -> Result<Self> {
        self.unary(UnaryOp::Sqr)
    }
    pub fn sqrt(&self) -> Result<Self> {
        self.unary(UnaryOp::Sqrt)
    }
    /// `mul * x + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Self> {
        self.unary(UnaryOp::Affine { mul, add })
    }
    pub fn scale(&self, mul: f64) -> Result<Self> {
        self.affine(mul, 0.0)
    }
}

pub(crate) fn unary_backward<T: Element, B: Backend<T>>(
    op: UnaryOp,
    x: &Tensor<T, B>,
    y: &Tensor<T, B>,
    grad: &Tensor<T, B>,
) -> Result<Tensor<T, B>> {
    let s = x.backend().unary_backward(op, x.storage(), y.storage(), grad.storage())?;
    Ok(Tensor::from_storage(x.backend(), s, x.shape().clone()))
}
