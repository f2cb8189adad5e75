//! MLA: layers, encoders, HGM, fusion, optimizers, trainers, datasets, checkpoints.

pub mod checkpoint;
pub mod data;
pub mod metrics;
pub mod rng;
