//! Ops: each module holds an op's forward (a `Tensor` method, usable without a
//! tape) next to its backward rule (written in terms of other tensor ops, so
//! every backend that implements the kernels gets autodiff).

pub mod batch_norm;
pub mod binary;
pub mod conv;
pub mod dropout;
pub mod gather;
pub mod layout;
pub mod matmul;
pub mod pool;
pub mod rank_sum;
pub mod reduce;
pub mod softmax;
pub mod unary;
