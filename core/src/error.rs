//! Errors are values: every failure says which op, which shapes, and why.

use std::fmt;

pub type Result<T> = std::result::Result<T, Error>;

/// Shapes printed as `[2, 3]` so messages read like the user's code.
#[derive(Clone, PartialEq, Eq)]
pub struct Dims(pub Vec<usize>);

impl fmt::Debug for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two operands whose shapes do not fit together.
    #[error("{op}: shape mismatch between lhs {lhs} and rhs {rhs}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Dims,
        rhs: Dims,
    },

    /// An argument that is wrong on its own (bad axis, bad reshape, bad index...).
    #[error("{op}: {msg} (shapes: {shapes:?})")]
    InvalidArgument {
        op: &'static str,
        msg: String,
        shapes: Vec<Dims>,
    },

    /// A failure inside a backend (device error, missing library, kernel compile...).
    #[error("{op}: {backend} backend error: {msg}")]
    Backend {
        op: &'static str,
        backend: &'static str,
        msg: String,
    },

    /// Misuse of the tape (backward on a non-scalar, on a no-grad tape...).
    #[error("autodiff: {0}")]
    Autodiff(String),
}

impl Error {
    pub fn shape_mismatch(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Self {
        Error::ShapeMismatch {
            op,
            lhs: Dims(lhs.to_vec()),
            rhs: Dims(rhs.to_vec()),
        }
    }

    pub fn invalid(op: &'static str, msg: impl Into<String>, shapes: &[&[usize]]) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
            shapes: shapes.iter().map(|s| Dims(s.to_vec())).collect(),
        }
    }

    pub fn backend(op: &'static str, backend: &'static str, msg: impl Into<String>) -> Self {
        Error::Backend {
            op,
            backend,
            msg: msg.into(),
        }
    }

    /// The op name carried by this error, if any (used by tests of error paths).
    pub fn op(&self) -> Option<&'static str> {
        match self {
            Error::ShapeMismatch { op, .. }
            | Error::InvalidArgument { op, .. }
            | Error::Backend { op, .. } => Some(op),
            Error::Autodiff(_) => None,
        }
    }
}
