//! mla-core: dense tensors, a backend trait, and tape-based reverse-mode autodiff.
//!
//! ```text
//! let tape = Tape::new(&backend);
//! let w = tape.var(weight);               // tracked leaf
//! let x = tape.constant(batch);           // data
//! let loss = x.matmul(&w)?.cross_entropy(&labels)?;
//! let grads = tape.backward(&loss)?;      // walks the tape once, then drops it
//! grads.get(&w)
//! ```

pub mod backend;
pub mod element;
pub mod error;
pub mod flops;
pub mod ops;
pub mod shape;
pub mod tape;
pub mod tensor;

pub use backend::{
    not_implemented, AdamConfig, Backend, BatchNormGeometry, BinaryOp, Conv2dGeometry, GemmConfig,
    Pool2dGeometry, SgdConfig, UnaryOp,
};
pub use element::{DType, Element};
pub use error::{Dims, Error, Result};
pub use ops::batch_norm::{batch_norm_geometry, BatchNormConfig, BatchNormStats, BatchNormTrain};
pub use ops::conv::conv2d_geometry;
pub use ops::dropout::dropout_mask;
pub use ops::pool::pool2d_geometry;
pub use ops::rank_sum::RankSum;
pub use shape::Shape;
pub use tape::{Gradients, Tape, Var};
pub use tensor::{Indices, Tensor};
