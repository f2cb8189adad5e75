//! What can stop a run: every error names what and where.

use crate::checkpoint::CheckpointError;
use crate::data::{DataError, Split};
use crate::error::ModelError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Core(#[from] mla_core::Error),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Flags or a checkpoint that do not fit the dataset or each other.
    #[error("{0}")]
    Config(String),
    #[error("non-finite training loss ({value}) at epoch {epoch}, step {step} (modality {modality}); the run diverged: lower --lr or check the data")]
    NonFinite {
        epoch: usize,
        step: usize,
        modality: String,
        value: f32,
    },
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    RunDir(String),
    /// Data-parallel training: a collective failed, or ranks disagree.
    #[error("distributed training: {0}")]
    Distributed(String),
    /// An evaluation error with the epoch and split it happened in.
    #[error("epoch {epoch}, {split} split: {source}")]
    During {
        epoch: usize,
        split: Split,
        source: Box<TrainError>,
    },
}

impl TrainError {
    /// This error as raised while evaluating `split` after epoch `epoch`.
    pub fn during(self, epoch: usize, split: Split) -> Self {
        TrainError::During {
            epoch,
            split,
            source: Box::new(self),
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
