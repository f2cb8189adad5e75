//! Which dataset modalities a run's model uses, and the model its method
//! needs for them (the head kind comes from the method).

use super::config::{MethodKind, TrainConfig};
use super::{Result, TrainError};
use crate::data::Dataset;
use crate::encoders::parse_encoder_spec;
use crate::model::{Model, ModelSpec};
use mla_core::Backend;
use serde::{Deserialize, Serialize};

/// Which dataset modalities the model uses, in model order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelLayout {
    pub modalities: Vec<String>,
    /// Per-sample input shape of each modality.
    pub shapes: Vec<Vec<usize>>,
    /// Each modality's index in the dataset manifest.
    #[serde(skip)]
    pub data_index: Vec<usize>,
    pub num_classes: usize,
}

/// Builds the model `cfg` describes for `dataset` (initialised from the seed).
pub fn build_model<B: Backend<f32>>(
    backend: &B,
    dataset: &Dataset,
    cfg: &TrainConfig,
) -> Result<(Model<B>, ModelLayout)> {
    let all: Vec<&str> = dataset
        .modalities()
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    let kinds = parse_encoder_spec(&cfg.encoder, &all)?;
    let chosen: Vec<usize> = match (cfg.method, &cfg.modality) {
        (MethodKind::Unimodal, Some(m)) => vec![dataset.modality_index(m).ok_or_else(|| {
            TrainError::Config(format!(
                "unknown modality '{m}' for --method unimodal; {} has: {}",
                dataset.dir().display(),
                all.join(", ")
            ))
        })?],
        (MethodKind::Unimodal, None) => {
            return Err(TrainError::Config(
                "--method unimodal needs --modality NAME".into(),
            ))
        }
        _ => (0..all.len()).collect(),
    };
    let layout = ModelLayout {
        modalities: chosen.iter().map(|&i| all[i].to_string()).collect(),
        shapes: chosen
            .iter()
            .map(|&i| dataset.modalities()[i].shape.clone())
            .collect(),
        data_index: chosen.clone(),
        num_classes: dataset.num_classes(),
    };
    let head = cfg.method.head();
    let mut spec = ModelSpec::new(
        layout
            .modalities
            .iter()
            .cloned()
            .zip(layout.shapes.iter().cloned())
            .collect(),
        chosen.iter().map(|&i| kinds[i]).collect(),
        dataset.num_classes(),
        head,
    );
    spec.feature_size = cfg.feature_size;
    spec.width_mult = cfg.width_mult;
    Ok((Model::new(backend, spec, cfg.seed)?, layout))
}
