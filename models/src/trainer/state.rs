//! The trainer as a checkpoint and back. Tensor names: the parameters under
//! their own names (`encoder.image.conv1.weight`, `head.weight`, ...), the
//! optimizer's buffers under `optim.`, the method's state under its prefix
//! (MLA: HGM's P matrices under `hgm.`; others `method.`).
//! Metadata (JSON): the config, the model layout, the trainer state, the
//! scalar parts of the optimizer and method state, and the fusion fit.

use super::layout::ModelLayout;
use super::records::TrainerState;
use super::{Result, TrainError, Trainer};
use crate::checkpoint::Checkpoint;
use crate::model::Model;
use crate::params::StateDict;
use mla_core::Backend;
use std::collections::BTreeMap;

pub(crate) const CONFIG_KEY: &str = "config";
pub(crate) const LAYOUT_KEY: &str = "layout";
pub(crate) const STATE_KEY: &str = "trainer_state";
/// The fusion parameters fitted on validation for these weights (MLA).
pub(crate) const FUSION_KEY: &str = "fusion_fit";
const OPTIM_SCALARS_KEY: &str = "optimizer_scalars";
const OPTIM_PREFIX: &str = "optim.";
/// Prefixes a method's state may use (see `Method::state_prefix`).
const METHOD_PREFIXES: [&str; 2] = ["hgm.", "method."];

pub(crate) fn save<B: Backend<f32>>(t: &Trainer<B>) -> Result<Checkpoint> {
    let mut c = Checkpoint::new();
    for (name, p) in t.model.params().iter() {
        c.insert_tensor(name, p)?;
    }
    let optim = t.optim.state();
    put_state(&mut c, OPTIM_PREFIX, OPTIM_SCALARS_KEY, &optim)?;
    let method = t.method.state()?;
    if !(method.tensors.is_empty() && method.scalars.is_empty()) {
        let prefix = t.method.state_prefix();
        put_state(&mut c, prefix, t.method.scalars_key(), &method)?;
    }
    c.set_json(CONFIG_KEY, &t.cfg)?;
    c.set_json(LAYOUT_KEY, &t.layout)?;
    c.set_json(STATE_KEY, &t.state)?;
    if let Some(fit) = &t.fit {
        c.set_json(FUSION_KEY, fit)?;
    }
    Ok(c)
}

fn put_state<B: Backend<f32>>(
    c: &mut Checkpoint,
    prefix: &str,
    key: &str,
    sd: &StateDict<B>,
) -> Result<()> {
    for (name, v) in &sd.tensors {
        if !name.starts_with(prefix) {
            return Err(TrainError::Config(format!(
                "state entry `{name}` does not start with `{prefix}`"
            )));
        }
        c.insert_tensor(name.clone(), v)?;
    }
    let scalars: BTreeMap<&str, f64> = sd.scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    c.set_json(key, &scalars)?;
    Ok(())
}

fn get_state<B: Backend<f32>>(
    c: &Checkpoint,
    backend: &B,
    prefix: &str,
    key: &str,
) -> Result<StateDict<B>> {
    let tensors = c
        .names()
        .filter(|n| n.starts_with(prefix))
        .map(|n| Ok((n.to_string(), c.get(n)?.to_tensor(backend)?)))
        .collect::<Result<Vec<_>>>()?;
    let scalars: BTreeMap<String, f64> = c.json(key)?;
    Ok(StateDict {
        tensors,
        scalars: scalars.into_iter().collect(),
    })
}

/// Loads the model weights of `ckpt` into `model`, checking every name and
/// shape; tensors that are neither weights nor optimizer/HGM state are an error.
pub(crate) fn load_params<B: Backend<f32>>(model: &mut Model<B>, ckpt: &Checkpoint) -> Result<()> {
    let backend = model.params().backend().clone();
    let wanted: Vec<(String, Vec<usize>)> = model
        .params()
        .iter()
        .map(|(n, t)| (n.to_string(), t.dims().to_vec()))
        .collect();
    let known: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
    let is_state =
        |n: &&str| n.starts_with(OPTIM_PREFIX) || METHOD_PREFIXES.iter().any(|p| n.starts_with(p));
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
    let optim = get_state(ckpt, &t.backend, OPTIM_PREFIX, OPTIM_SCALARS_KEY)?;
    t.optim.load_state(t.model.params(), &optim)?;
    let (prefix, key) = (t.method.state_prefix(), t.method.scalars_key());
    if let Some(other) = ckpt.names().find(|n| {
        METHOD_PREFIXES
            .iter()
            .any(|p| *p != prefix && n.starts_with(p))
    }) {
        return Err(TrainError::Config(format!(
            "{}: holds state `{other}` that method {} does not keep",
            ckpt.path().display(),
            t.cfg.method
        )));
    }
    let method = if ckpt.has_json(key) {
        get_state(ckpt, &t.backend, prefix, key)?
    } else if ckpt.names().any(|n| n.starts_with(prefix)) {
        return Err(TrainError::Config(format!(
            "{}: has `{prefix}` tensors but no `{key}` entry; the checkpoint is damaged",
            ckpt.path().display()
        )));
    } else {
        StateDict::default()
    };
    t.method
        .load_state(&method)
        .map_err(|e| TrainError::Config(format!("{}: {e}", ckpt.path().display())))?;
    let state = ckpt.json::<TrainerState>(STATE_KEY)?;
    let consistent = state.epochs_done == state.history.len()
        && state
            .best_epoch
            .is_some_and(|b| (1..=state.epochs_done).contains(&b))
        && state.best_val.is_some()
        && state.best_test.is_some();
    if !consistent {
        return Err(TrainError::Config(format!(
            "{}: trainer state is inconsistent ({} epochs done, {} epoch records, best epoch {:?}); the checkpoint is damaged",
            ckpt.path().display(),
            state.epochs_done,
            state.history.len(),
            state.best_epoch
        )));
    }
    t.state = state;
    t.fit = super::eval::load_fusion_fit(ckpt, &t.layout)?;
    Ok(())
}
