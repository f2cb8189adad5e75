//! Between backward and the parameters: HGM rewrites `grad(head.weight)`,
//! then the optimizer steps exactly the parameters that got gradients.
//! (DESIGN.md invariant 5: the optimizer does not know HGM exists.)

use super::config::{HgmMode, OptimizerKind, TrainConfig};
use super::TrainError;
use crate::params::ParamStore;
use mla_core::{AdamConfig, Backend, SgdConfig, Tensor};
use std::collections::BTreeMap;

type T32<B> = Tensor<f32, B>;

pub(crate) struct Optimizer<B: Backend<f32>> {
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    /// SGD: velocity; Adam: first moment.
    m: BTreeMap<String, T32<B>>,
    /// Adam: second moment.
    v: BTreeMap<String, T32<B>>,
    /// Adam: steps taken per parameter (bias correction counts only the
    /// steps a parameter really took, since MLA skips inactive encoders).
    steps: BTreeMap<String, u64>,
}

impl<B: Backend<f32>> Optimizer<B> {
    pub fn new(cfg: &TrainConfig) -> Self {
        Optimizer {
            kind: cfg.optimizer,
            lr: cfg.lr,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            steps: BTreeMap::new(),
        }
    }

    /// One step of every parameter in `grads`, and of no other.
    pub fn step(&mut self, params: &mut ParamStore<B>, grads: &[(String, T32<B>)]) -> Result<(), TrainError> {
        for (name, g) in grads {
            let p = params.get_mut(name)?;
            let backend = p.backend().clone();
            match self.kind {
                OptimizerKind::Sgd => {
                    let cfg = SgdConfig { lr: self.lr, momentum: self.momentum, weight_decay: self.weight_decay, nesterov: false };
                    if self.momentum > 0.0 {
                        let v = state_slot(&mut self.m, name, p)?;
                        backend.sgd_step(p.storage_mut()?, g.storage(), Some(v.storage_mut()?), &cfg)?;
                    } else {
                        backend.sgd_step(p.storage_mut()?, g.storage(), None, &cfg)?;
                    }
                }
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let cfg = AdamConfig {
                        lr: self.lr,
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                        weight_decay: self.weight_decay,
                        decoupled: self.kind == OptimizerKind::Adamw,
                    };
                    let t = self.steps.entry(name.clone()).or_insert(0);
                    *t += 1;
                    let t = *t;
                    let m = state_slot(&mut self.m, name, p)?;
                    let mut m_st = std::mem::replace(m, T32::<B>::zeros(&backend, [0])?);
                    let v = state_slot(&mut self.v, name, p)?;
                    let res = backend.adam_step(p.storage_mut()?, g.storage(), m_st.storage_mut()?, v.storage_mut()?, &cfg, t);
                    *self.m.get_mut(name).expect("inserted above") = m_st;
                    res?;
                }
            }
        }
        Ok(())
    }

    /// (name, tensor) of every state buffer, and the step counters.
    pub fn export(&self) -> (Vec<(String, T32<B>)>, BTreeMap<String, u64>) {
        let mut out = Vec::new();
        for (n, t) in &self.m {
            out.push((format!("optim.{n}.m"), t.clone()));
        }
        for (n, t) in &self.v {
            out.push((format!("optim.{n}.v"), t.clone()));
        }
        (out, self.steps.clone())
    }

    pub fn import(
        &mut self,
        params: &ParamStore<B>,
        tensors: Vec<(String, T32<B>)>,
        steps: BTreeMap<String, u64>,
    ) -> Result<(), TrainError> {
        for (key, t) in tensors {
            let (slot, name) = if let Some(n) = key.strip_prefix("optim.").and_then(|k| k.strip_suffix(".m")) {
                (&mut self.m, n)
            } else if let Some(n) = key.strip_prefix("optim.").and_then(|k| k.strip_suffix(".v")) {
                (&mut self.v, n)
            } else {
                return Err(TrainError::Config(format!("optimizer state: unknown entry `{key}`")));
            };
            let p = params.get(name)?;
            if p.dims() != t.dims() {
                return Err(TrainError::Config(format!(
                    "optimizer state `{key}` has shape {:?}, parameter `{name}` has {:?}",
                    t.dims(),
                    p.dims()
                )));
            }
            slot.insert(name.to_string(), t);
        }
        self.steps = steps;
        Ok(())
    }
}

fn state_slot<'a, B: Backend<f32>>(
    map: &'a mut BTreeMap<String, T32<B>>,
    name: &str,
    like: &T32<B>,
) -> Result<&'a mut T32<B>, TrainError> {
    if !map.contains_key(name) {
        map.insert(name.to_string(), T32::<B>::zeros(like.backend(), like.shape().clone())?);
    }
    Ok(map.get_mut(name).expect("inserted above"))
}

/// HGM: one P (owm) or one per modality (cross), `P_0 = I`.
pub(crate) struct Hgm<B: Backend<f32>> {
    mode: HgmMode,
    alpha: f64,
    s: usize,
    c: usize,
    p: Vec<T32<B>>,
}

impl<B: Backend<f32>> Hgm<B> {
    pub fn new(backend: &B, mode: HgmMode, alpha: f64, modalities: usize, s: usize, c: usize) -> Result<Option<Self>, TrainError> {
        let count = match mode {
            HgmMode::None => return Ok(None),
            HgmMode::Owm => 1,
            HgmMode::Cross => modalities,
        };
        let mut eye = vec![0f32; s * s];
        for i in 0..s {
            eye[i * s + i] = 1.0;
        }
        let p = (0..count).map(|_| T32::<B>::from_slice(backend, &eye, [s, s])).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Hgm { mode, alpha, s, c, p }))
    }

    /// Projects `grad_w` for a step of modality `m` with batch-mean feature `r`
    /// and updates P; returns the projected gradient.
    pub fn apply(&mut self, m: usize, grad_w: &T32<B>, r: &T32<B>) -> Result<T32<B>, TrainError> {
        let backend = grad_w.backend().clone();
        match self.mode {
            HgmMode::None => Ok(grad_w.clone()),
            HgmMode::Owm => {
                let out = backend.rls_project(self.p[0].storage_mut()?, r.storage(), Some(grad_w.storage()), self.c, self.s, self.alpha)?;
                Ok(T32::<B>::from_storage(&backend, out.expect("grad given"), [self.c, self.s]))
            }
            HgmMode::Cross => {
                let projected = grad_w.matmul(&self.p[m])?;
                for k in 0..self.p.len() {
                    if k != m {
                        backend.rls_project(self.p[k].storage_mut()?, r.storage(), None, self.c, self.s, self.alpha)?;
                    }
                }
                Ok(projected)
            }
        }
    }

    pub fn export(&self) -> Vec<(String, T32<B>)> {
        self.p.iter().enumerate().map(|(i, p)| (format!("hgm.p.{i}"), p.clone())).collect()
    }

    pub fn import(&mut self, tensors: Vec<(String, T32<B>)>) -> Result<(), TrainError> {
        for (key, t) in tensors {
            let i: usize = key
                .strip_prefix("hgm.p.")
                .and_then(|s| s.parse().ok())
                .filter(|&i| i < self.p.len())
                .ok_or_else(|| TrainError::Config(format!("HGM state: unknown entry `{key}`")))?;
            if t.dims() != [self.s, self.s] {
                return Err(TrainError::Config(format!("HGM state `{key}` has shape {:?}, expected [{s}, {s}]", t.dims(), s = self.s)));
            }
            self.p[i] = t;
        }
        Ok(())
    }
}
