use num_traits::{Float, FromPrimitive, NumCast, ToPrimitive};
use std::fmt::{Debug, Display};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
}

/// The floating-point element types a tensor can hold: f32 for training, f64 for gradient checks.
pub trait Element:
    Float + FromPrimitive + ToPrimitive + NumCast + Default + Debug + Display + Send + Sync + 'static
{
    const DTYPE: DType;
    fn lit(x: f64) -> Self;
    fn as_f64(self) -> f64;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn lit(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn lit(x: f64) -> Self {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
}
