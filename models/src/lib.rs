//! MLA: layers, encoders, HGM, fusion, optimizers, trainers, datasets, checkpoints.

pub mod data;
pub mod rng;
