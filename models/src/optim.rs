//! SGD (momentum, weight decay, Nesterov) and Adam/AdamW over named
//! parameters, stepping in place through the backend's fused kernels.
//!
//! A step touches exactly the parameters whose gradients it is given: in an
//! MLA step of modality m that is m's encoder and the head, so the other
//! encoders get no momentum or weight-decay "ghost" step and their state
//! (velocity, Adam moments and step count, which is per parameter) does not
//! advance. State is created on a parameter's first step.

use crate::error::{ModelError, Result};
use crate::params::{ParamStore, StateDict};
use mla_core::{AdamConfig, Backend, Element, SgdConfig, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// The optimizer: one enum for the optimizer itself, the trainer's config
/// (serde: `"sgd"`, `"adam"`, `"adamw"`) and the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OptimizerKind {
    #[serde(rename = "sgd")]
    Sgd,
    /// Adam with L2 weight decay added to the gradient.
    #[serde(rename = "adam")]
    Adam,
    /// Adam with decoupled weight decay.
    #[serde(rename = "adamw")]
    AdamW,
}

impl OptimizerKind {
    pub const NAMES: [&'static str; 3] = ["sgd", "adam", "adamw"];
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OptimizerKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            _ => Err(ModelError::unknown("optimizer", s.trim(), &Self::NAMES)),
        }
    }
}

/// Hyper-parameters. SGD reads `momentum`/`nesterov`, Adam reads `beta1`,
/// `beta2`, `eps`; both read `lr` and `weight_decay`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for OptimConfig {
    /// The spec's recipe: SGD, lr 0.01, momentum 0.9, weight decay 1e-4 (Adam betas 0.9/0.999, eps 1e-8).
    fn default() -> Self {
        OptimConfig {
            kind: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(format!("optimizer {}: {m}", self.kind)));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!(
                "learning rate must be positive and finite, got {}",
                self.lr
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        match self.kind {
            OptimizerKind::Sgd => {
                if !(0.0..1.0).contains(&self.momentum) {
                    return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
                }
                if self.nesterov && self.momentum == 0.0 {
                    return bad("Nesterov momentum needs momentum > 0".into());
                }
            }
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                for (n, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return bad(format!("{n} must be in [0, 1), got {b}"));
                    }
                }
                if !(self.eps.is_finite() && self.eps > 0.0) {
                    return bad(format!("eps must be positive, got {}", self.eps));
                }
            }
        }
        Ok(())
    }

    fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
        }
    }

    fn adam(&self) -> AdamConfig {
        AdamConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: self.kind == OptimizerKind::AdamW,
        }
    }
}

/// Per-parameter state.
enum Slot<T: Element, B: Backend<T>> {
    /// Velocity (SGD with momentum > 0).
    Sgd { velocity: Tensor<T, B> },
    /// First and second moments and the number of steps this parameter took.
    Adam {
        m: Tensor<T, B>,
        v: Tensor<T, B>,
        step: u64,
    },
}

const VELOCITY: &str = "optim.velocity.";
const ADAM_M: &str = "optim.m.";
const ADAM_V: &str = "optim.v.";
const ADAM_STEP: &str = "optim.step.";

pub struct Optimizer<B, T = f32>
where
    T: Element,
    B: Backend<T>,
{
    cfg: OptimConfig,
    slots: BTreeMap<String, Slot<T, B>>,
}

impl<T: Element, B: Backend<T>> Optimizer<B, T> {
    pub fn new(cfg: OptimConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Optimizer {
            cfg,
            slots: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Changes the learning rate (schedules).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let cfg = OptimConfig { lr, ..self.cfg };
        cfg.validate()?;
        self.cfg = cfg;
        Ok(())
    }

    /// Forgets every parameter's state (momentum, Adam moments and step
    /// counts): the optimizer is as freshly created (ReconBoost's per-phase
    /// optimizer).
    pub fn reset(&mut self) {
        self.slots.clear();
    }

    /// Whether any parameter has optimizer state.
    pub fn has_state(&self) -> bool {
        !self.slots.is_empty()
    }

    /// Number of steps `name` has taken under Adam (0 if never stepped or under SGD).
    pub fn param_steps(&self, name: &str) -> u64 {
        match self.slots.get(name) {
            Some(Slot::Adam { step, .. }) => *step,
            _ => 0,
        }
    }

    /// One step on the parameters named in `grads` (and only those). Checks
    /// every name and shape before touching anything, so an error leaves
    /// parameters and state as they were.
    pub fn step(
        &mut self,
        params: &mut ParamStore<B, T>,
        grads: &[(String, Tensor<T, B>)],
    ) -> Result<()> {
        let mut seen = BTreeSet::new();
        for (name, g) in grads {
            let p = params.get(name).map_err(|_| ModelError::MissingParam {
                name: name.clone(),
                context: "optimizer step: gradient given for a parameter the model does not have"
                    .into(),
            })?;
            if p.dims() != g.dims() {
                return Err(ModelError::ShapeMismatch {
                    what: "gradient of parameter",
                    name: name.clone(),
                    expected: p.dims().to_vec(),
                    got: g.dims().to_vec(),
                });
            }
            if !seen.insert(name.as_str()) {
                return Err(ModelError::Config(format!(
                    "optimizer step: two gradients for parameter '{name}'"
                )));
            }
        }
        for (name, g) in grads {
            let p = params.get_mut(name)?;
            let backend = p.backend().clone();
            let dims = p.dims().to_vec();
            match self.cfg.kind {
                OptimizerKind::Sgd => {
                    let cfg = self.cfg.sgd();
                    if cfg.momentum == 0.0 {
                        backend.sgd_step(p.storage_mut()?, g.storage(), None, &cfg)?;
                    } else {
                        let slot = match self.slots.entry(name.clone()) {
                            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::btree_map::Entry::Vacant(e) => e.insert(Slot::Sgd {
                                velocity: Tensor::zeros(&backend, dims)?,
                            }),
                        };
                        let Slot::Sgd { velocity } = slot else {
                            unreachable!("SGD optimizer holds SGD state")
                        };
                        backend.sgd_step(
                            p.storage_mut()?,
                            g.storage(),
                            Some(velocity.storage_mut()?),
                            &cfg,
                        )?;
                    }
                }
                OptimizerKind::Adam | OptimizerKind::AdamW => {
                    let cfg = self.cfg.adam();
                    let slot = match self.slots.entry(name.clone()) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => e.insert(Slot::Adam {
                            m: Tensor::zeros(&backend, dims.clone())?,
                            v: Tensor::zeros(&backend, dims)?,
                            step: 0,
                        }),
                    };
                    let Slot::Adam { m, v, step } = slot else {
                        unreachable!("Adam optimizer holds Adam state")
                    };
                    *step += 1;
                    backend.adam_step(
                        p.storage_mut()?,
                        g.storage(),
                        m.storage_mut()?,
                        v.storage_mut()?,
                        &cfg,
                        *step,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`optim.velocity.<param>`, `optim.m.<param>`,
    /// `optim.v.<param>`) and scalars (`optim.step.<param>`), for checkpoints.
    /// Only parameters that have stepped appear.
    pub fn state(&self) -> StateDict<B, T> {
        let mut sd = StateDict::default();
        for (name, slot) in &self.slots {
            match slot {
                Slot::Sgd { velocity } => sd
                    .tensors
                    .push((format!("{VELOCITY}{name}"), velocity.clone())),
                Slot::Adam { m, v, step } => {
                    sd.tensors.push((format!("{ADAM_M}{name}"), m.clone()));
                    sd.tensors.push((format!("{ADAM_V}{name}"), v.clone()));
                    sd.scalars
                        .push((format!("{ADAM_STEP}{name}"), *step as f64));
                }
            }
        }
        sd
    }

    /// Restores state written by [`Optimizer::state`] for the same kind of
    /// optimizer and the same parameters. Replaces all current state; on error
    /// nothing changes.
    pub fn load_state(&mut self, params: &ParamStore<B, T>, state: &StateDict<B, T>) -> Result<()> {
        const WHAT: &str = "optimizer";
        let check_shape = |entry: &str, param: &str, t: &Tensor<T, B>| -> Result<()> {
            let p = params.get(param).map_err(|_| {
                ModelError::state(
                    WHAT,
                    format!("'{entry}' refers to an unknown parameter '{param}'"),
                )
            })?;
            if p.dims() != t.dims() {
                return Err(ModelError::ShapeMismatch {
                    what: "optimizer state",
                    name: entry.to_string(),
                    expected: p.dims().to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            Ok(())
        };
        let mut slots = BTreeMap::new();
        match self.cfg.kind {
            OptimizerKind::Sgd => {
                if let Some((k, _)) = state.scalars.first() {
                    return Err(ModelError::state(
                        WHAT,
                        format!("'{k}' is Adam state but the optimizer is SGD"),
                    ));
                }
                for (k, t) in &state.tensors {
                    let Some(param) = k.strip_prefix(VELOCITY) else {
                        return Err(ModelError::state(
                            WHAT,
                            format!("'{k}' is not SGD state (expected {VELOCITY}<param>)"),
                        ));
                    };
                    if self.cfg.momentum == 0.0 {
                        return Err(ModelError::state(
                            WHAT,
                            format!("'{k}' is a velocity but momentum is 0"),
                        ));
                    }
                    check_shape(k, param, t)?;
                    slots.insert(
                        param.to_string(),
                        Slot::Sgd {
                            velocity: t.clone(),
                        },
                    );
                }
            }
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                let mut ms = BTreeMap::new();
                let mut vs = BTreeMap::new();
                for (k, t) in &state.tensors {
                    let (map, param) = if let Some(p) = k.strip_prefix(ADAM_M) {
                        (&mut ms, p)
                    } else if let Some(p) = k.strip_prefix(ADAM_V) {
                        (&mut vs, p)
                    } else {
                        return Err(ModelError::state(
                            WHAT,
                            format!("'{k}' is not {} state", self.cfg.kind),
                        ));
                    };
                    check_shape(k, param, t)?;
                    map.insert(param.to_string(), t.clone());
                }
                let mut steps = BTreeMap::new();
                for (k, s) in &state.scalars {
                    let s = *s;
                    let Some(param) = k.strip_prefix(ADAM_STEP) else {
                        return Err(ModelError::state(WHAT, format!("unexpected scalar '{k}'")));
                    };
                    if !(s.is_finite() && s >= 1.0 && s.fract() == 0.0 && s <= (1u64 << 53) as f64)
                    {
                        return Err(ModelError::state(
                            WHAT,
                            format!("'{k}' = {s} is not a step count"),
                        ));
                    }
                    steps.insert(param.to_string(), s as u64);
                }
                for (param, m) in ms {
                    let v = vs.remove(&param).ok_or_else(|| {
                        ModelError::state(
                            WHAT,
                            format!("'{ADAM_M}{param}' has no matching '{ADAM_V}{param}'"),
                        )
                    })?;
                    let step = steps.remove(&param).ok_or_else(|| {
                        ModelError::state(
                            WHAT,
                            format!("'{ADAM_M}{param}' has no step count '{ADAM_STEP}{param}'"),
                        )
                    })?;
                    slots.insert(param, Slot::Adam { m, v, step });
                }
                if let Some(p) = vs.keys().next().or(steps.keys().next()) {
                    return Err(ModelError::state(
                        WHAT,
                        format!("state of '{p}' is incomplete (needs m, v and step)"),
                    ));
                }
            }
        }
        self.slots = slots;
        Ok(())
    }
}

/// The learning rate over the epochs, set at the start of each epoch:
/// `constant`; `cosine` (`lr * (1 + cos(pi (e - 1) / E)) / 2` in epoch e of
/// E, PyTorch's CosineAnnealingLR to 0 stepped per epoch); `step:N:G`
/// (`lr * G^floor((e - 1) / N)`, StepLR as the OGM-GE and BalanceBenchmark
/// recipes use it). A function of the epoch alone, so resuming is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum LrSchedule {
    #[default]
    Constant,
    Cosine,
    Step {
        every: usize,
        gamma: f64,
    },
}

impl LrSchedule {
    /// The learning rate of 1-based `epoch` of `epochs`, from `lr`.
    pub fn at(self, lr: f64, epoch: usize, epochs: usize) -> f64 {
        let e = epoch.saturating_sub(1) as f64;
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                lr * (1.0 + (std::f64::consts::PI * e / epochs.max(1) as f64).cos()) / 2.0
            }
            LrSchedule::Step { every, gamma } => {
                lr * gamma.powi((epoch.saturating_sub(1) / every.max(1)) as i32)
            }
        }
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LrSchedule::Constant => f.write_str("constant"),
            LrSchedule::Cosine => f.write_str("cosine"),
            LrSchedule::Step { every, gamma } => write!(f, "step:{every}:{gamma}"),
        }
    }
}

impl FromStr for LrSchedule {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = |why: &str| {
            ModelError::bad_spec(
                "learning-rate schedule",
                s.trim(),
                format!("{why}; expected constant, cosine or step:N:GAMMA (N >= 1 epochs, 0 < GAMMA <= 1)"),
            )
        };
        match t.split(':').collect::<Vec<_>>().as_slice() {
            ["constant"] => Ok(LrSchedule::Constant),
            ["cosine"] => Ok(LrSchedule::Cosine),
            ["step", n, g] => {
                let every: usize = n
                    .parse()
                    .map_err(|_| bad(&format!("'{n}' is not a whole number of epochs")))?;
                let gamma: f64 = g
                    .parse()
                    .map_err(|_| bad(&format!("'{g}' is not a number")))?;
                if every == 0 {
                    return Err(bad("N must be at least 1"));
                }
                if !(gamma > 0.0 && gamma <= 1.0) {
                    return Err(bad(&format!("GAMMA {gamma} is outside (0, 1]")));
                }
                Ok(LrSchedule::Step { every, gamma })
            }
            _ => Err(bad("unknown form")),
        }
    }
}

impl serde::Serialize for LrSchedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for LrSchedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
