//! MLA: layers, encoders, HGM, fusion, optimizers, trainers, datasets, checkpoints.
//!
//! One MLA step of modality `m` with the model library:
//! ```text
//! let tape = Tape::new(&backend);
//! let p = model.track(&tape, Model::<B>::step_trainable(m));   // encoder.<m>.* and head.* tracked
//! let h = model.features(&p, m, &tape.constant(x))?;            // [b, s]
//! let loss = model.head_logits(&p, &h)?.cross_entropy(&labels)?;
//! let mut grads = p.gradients(tape.backward(&loss)?);           // only the tracked, used parameters
//! hgm.apply(m, h.value(), &mut grads)?;                         // rewrites head.weight's gradient, updates P
//! opt.step(model.params_mut(), &grads)?;                        // steps exactly those parameters
//! ```
//! Evaluation runs the same forward on `Tape::no_grad` and fuses the split's
//! per-modality logits on the host (`fusion`, `trainer::eval`).

pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod encoders;
pub mod error;
pub mod fusion;
pub mod hgm;
pub mod init;
pub mod layers;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod rng;
pub mod robustness;
pub mod shapley;
pub mod trainer;

pub use error::{ModelError, Result};
