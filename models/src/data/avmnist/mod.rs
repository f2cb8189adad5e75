//! AV-MNIST built from the raw sources (MNIST IDX files and FSDD WAV recordings) by the
//! recipe in MLA.md, written in the mla-dataset/1 format.

pub mod audio;
pub mod idx;
pub mod pca;
pub mod prepare;
pub mod wav;

pub use prepare::{prepare_avmnist, AvmnistOptions, PrepareReport};
