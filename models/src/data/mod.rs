//! Datasets: the mla-dataset/1 reader, AV-MNIST preparation, the mini-batch loader.

pub mod augment;
pub mod avmnist;
pub mod corrupt;
pub mod dataset;
pub mod error;
pub mod files;
pub mod loader;
pub mod missing;
pub mod npy;
pub mod output;
pub mod synthetic;

pub use augment::{AugmentSpec, Augmentation, Augmenter};
pub use avmnist::{prepare_avmnist, AvmnistOptions, PrepareReport};
pub use corrupt::{Corruption, CorruptionKind, Corruptor, ModalityStats};
pub use dataset::{Dataset, ModalityInfo, Row, Split};
pub use error::DataError;
pub use loader::{seeded_subset, Batch, Loader, ModalityBatch};
pub use missing::{MissingMask, MissingPolicy, MissingRates};
pub use npy::{write_npy, write_npy_f32, write_npy_i64, write_npy_u8, DType, NpyArray, NpyHeader};
pub use synthetic::{prepare_synthetic, SyntheticOptions, SyntheticReport};
