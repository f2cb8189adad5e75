//! MLA: layers, encoders, HGM, fusion, optimizers, trainers, datasets, checkpoints.

pub mod checkpoint;
pub mod data;
pub mod encoders;
pub mod error;
pub mod fusion;
pub mod hgm;
pub mod init;
pub mod layers;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod rng;
pub mod trainer;

pub use error::{ModelError, Result};
