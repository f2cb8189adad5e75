//! The trainer as a checkpoint and back. Tensor names: the parameters under
//! their own names (`encoder.image.conv1.weight`, `head.weight`, ...), the
//! optimizer's buffers under `optim.`, HGM's P matrices under `hgm.`.
//! Metadata (JSON): the config, the model layout, the trainer state, the
//! optimizer's step counters.

use super::eval::ModelLayout;
use super::records::TrainerState;
use super::{Result, TrainError, Trainer};
use crate::checkpoint::Checkpoint;
use crate::model::Model;
use mla_core::{Backend, Tensor};
use std::collections::BTreeMap;

pub(crate) const CONFIG_KEY: &str = "config";
pub(crate) const LAYOUT_KEY: &str = "layout";
pub(crate) const STATE_KEY: &str = "trainer_state";
const OPTIM_STEPS_KEY: &str = "optimizer_steps";
const OPTIM_PREFIX: &str = "optim.";
const HGM_PREFIX: &str = "hgm.";

pub(crate) fn save<B: Backend<f32>>(t: &Trainer<B>) -> Result<Checkpoint> {
    let mut c = Checkpoint::new();
    for (name, p) in t.model.params().iter() {
        c.insert_tensor(name, p)?;
    }
    let (optim, steps) = t.optim.export();
    for (name, v) in &optim {
        c.insert_tensor(name.clone(), v)?;
    }
    if let Some(h) = &t.hgm {
        for (name, p) in h.export() {
            c.insert_tensor(name, &p)?;
        }
    }
    c.set_json(CONFIG_KEY, &t.cfg)?;
    c.set_json(LAYOUT_KEY, &t.layout)?;
    c.set_json(STATE_KEY, &t.state)?;
    c.set_json(OPTIM_STEPS_KEY, &steps)?;
    Ok(c)
}

/// Loads the model weights of `ckpt` into `model`, checking every name and
/// shape; tensors that are neither weights nor optimizer/HGM state are an error.
pub(crate) fn load_params<B: Backend<f32>>(model: &mut Model<B>, ckpt: &Checkpoint) -> Result<()> {
    let backend = model.params().backend().clone();
    let wanted: Vec<(String, Vec<usize>)> =
        model.params().iter().map(|(n, t)| (n.to_string(), t.dims().to_vec())).collect();
    let known: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
    let is_state = |n: &&str| n.starts_with(OPTIM_PREFIX) || n.starts_with(HGM_PREFIX);
    ckpt.reject_unknown(known.iter().copied().chain(ckpt.names().filter(is_state)))?;
    for (name, shape) in &wanted {
        let t = ckpt.get_shaped(name, shape)?.to_tensor(&backend)?;
        model.params_mut().set(name, t)?;
    }
    Ok(())
}

pub(crate) fn restore<B: Backend<f32>>(t: &mut Trainer<B>, ckpt: &Checkpoint) -> Result<()> {
    let saved: ModelLayout = ckpt.json(LAYOUT_KEY)?;
    if saved.modalities != t.layout.modalities || saved.shapes != t.layout.shapes {
        return Err(TrainError::Config(format!(
            "{} was trained on modalities {:?} with shapes {:?}; this dataset gives {:?} with shapes {:?}",
            ckpt.path().display(),
            saved.modalities,
            saved.shapes,
            t.layout.modalities,
            t.layout.shapes
        )));
    }
    load_params(&mut t.model, ckpt)?;
    let upload = |prefix: &str| -> Result<Vec<(String, Tensor<f32, B>)>> {
        ckpt.names()
            .filter(|n| n.starts_with(prefix))
            .map(|n| Ok((n.to_string(), ckpt.get(n)?.to_tensor(&t.backend)?)))
            .collect()
    };
    let optim = upload(OPTIM_PREFIX)?;
    let hgm = upload(HGM_PREFIX)?;
    let steps: BTreeMap<String, u64> = ckpt.json(OPTIM_STEPS_KEY)?;
    t.optim.import(t.model.params(), optim, steps)?;
    match t.hgm.as_mut() {
        Some(h) => h.import(hgm)?,
        None if !hgm.is_empty() => {
            return Err(TrainError::Config(format!("{}: holds HGM state but the run has no HGM", ckpt.path().display())))
        }
        None => {}
    }
    t.state = ckpt.json::<TrainerState>(STATE_KEY)?;
    Ok(())
}
