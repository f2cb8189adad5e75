//! Named parameters. Every consumer (layers, optimizers, HGM, checkpoints,
//! the "update only the active modality" rule) addresses a parameter by its
//! stable name (`encoder.image.conv1.weight`, `head.bias`, ...); the store
//! keeps them in a `BTreeMap` so iteration order is the same everywhere.

use crate::error::{ModelError, Result};
use mla_core::{Backend, Element, Gradients, Tape, Tensor, Var};
use std::collections::BTreeMap;

/// Named parameter tensors on one backend. `T` defaults to f32 (training);
/// f64 stores serve the reference tests.
///
/// Cloning is cheap (storages are shared) and gives a snapshot: optimizer
/// steps on the original copy its storage first (copy-on-write), so the
/// clone keeps the old values (used for the best-validation model).
#[derive(Clone)]
pub struct ParamStore<B, T = f32>
where
    T: Element,
    B: Backend<T>,
{
    backend: B,
    params: BTreeMap<String, Tensor<T, B>>,
}

impl<T: Element, B: Backend<T>> std::fmt::Debug for ParamStore<B, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.params.iter().map(|(k, v)| (k, v.dims())))
            .finish()
    }
}

impl<T: Element, B: Backend<T>> ParamStore<B, T> {
    pub fn new(backend: &B) -> Self {
        ParamStore {
            backend: backend.clone(),
            params: BTreeMap::new(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Adds a new parameter; a name can be added only once.
    pub fn insert(&mut self, name: impl Into<String>, value: Tensor<T, B>) -> Result<()> {
        let name = name.into();
        if self.params.contains_key(&name) {
            return Err(ModelError::Config(format!(
                "parameter '{name}' defined twice"
            )));
        }
        self.params.insert(name, value);
        Ok(())
    }

    /// Replaces the value of an existing parameter; the shape must stay the same.
    pub fn set(&mut self, name: &str, value: Tensor<T, B>) -> Result<()> {
        let slot = self
            .params
            .get_mut(name)
            .ok_or_else(|| missing(name, "set"))?;
        if slot.dims() != value.dims() {
            return Err(ModelError::ShapeMismatch {
                what: "parameter",
                name: name.to_string(),
                expected: slot.dims().to_vec(),
                got: value.dims().to_vec(),
            });
        }
        *slot = value;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Tensor<T, B>> {
        self.params.get(name).ok_or_else(|| missing(name, "get"))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut Tensor<T, B>> {
        self.params
            .get_mut(name)
            .ok_or_else(|| missing(name, "get_mut"))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.keys().map(|k| k.as_str())
    }

    /// (name, tensor) in sorted order: what a checkpoint writes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<T, B>)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Names starting with `prefix` (e.g. `encoder.audio.`), sorted.
    pub fn names_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .keys()
            .filter(move |k| k.starts_with(prefix))
            .map(|k| k.as_str())
    }

    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.params.values().map(|t| t.elem_count()).sum()
    }

    /// Replaces every parameter from named tensors (a checkpoint): the names must
    /// be exactly this store's names and each shape must match.
    pub fn load_named(&mut self, named: Vec<(String, Tensor<T, B>)>) -> Result<()> {
        let mut incoming: BTreeMap<String, Tensor<T, B>> = BTreeMap::new();
        for (name, t) in named {
            if !self.params.contains_key(&name) {
                return Err(ModelError::state(
                    "parameter",
                    format!(
                        "'{name}' is not a parameter of this model (expected: {})",
                        self.name_list()
                    ),
                ));
            }
            if incoming.insert(name.clone(), t).is_some() {
                return Err(ModelError::state(
                    "parameter",
                    format!("'{name}' given twice"),
                ));
            }
        }
        if let Some(absent) = self.params.keys().find(|k| !incoming.contains_key(*k)) {
            return Err(ModelError::state(
                "parameter",
                format!("'{absent}' is missing"),
            ));
        }
        for (name, t) in &incoming {
            let have = &self.params[name];
            if have.dims() != t.dims() {
                return Err(ModelError::ShapeMismatch {
                    what: "parameter",
                    name: name.clone(),
                    expected: have.dims().to_vec(),
                    got: t.dims().to_vec(),
                });
            }
        }
        self.params = incoming;
        Ok(())
    }

    fn name_list(&self) -> String {
        self.params.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Puts every parameter on `tape`: those for which `trainable(name)` holds
    /// as tracked leaves (they get gradients), the rest as constants (no
    /// gradient and no graph). On a `Tape::no_grad` tape nothing is recorded, so
    /// the same forward code serves training and evaluation.
    ///
    /// Drop the returned value (or call [`TrackedParams::gradients`], which
    /// consumes it) before the optimizer step: while it lives it shares the
    /// parameters' storage, and an in-place update would have to copy it.
    pub fn track<'t>(
        &self,
        tape: &'t Tape<T, B>,
        trainable: impl Fn(&str) -> bool,
    ) -> TrackedParams<'t, B, T> {
        let vars = self
            .params
            .iter()
            .map(|(name, t)| {
                let v = if trainable(name) {
                    tape.var(t.clone())
                } else {
                    tape.constant(t.clone())
                };
                (name.clone(), v)
            })
            .collect();
        TrackedParams { vars }
    }
}

fn missing(name: &str, context: &str) -> ModelError {
    ModelError::MissingParam {
        name: name.to_string(),
        context: context.to_string(),
    }
}

/// The parameters of one step, as values on its tape.
pub struct TrackedParams<'t, B, T = f32>
where
    T: Element,
    B: Backend<T>,
{
    vars: BTreeMap<String, Var<'t, T, B>>,
}

impl<'t, T: Element, B: Backend<T>> TrackedParams<'t, B, T> {
    pub fn get(&self, name: &str) -> Result<&Var<'t, T, B>> {
        self.vars
            .get(name)
            .ok_or_else(|| missing(name, "forward pass"))
    }

    /// Whether `name` is a tracked leaf (it will get a gradient if the loss uses it).
    pub fn is_tracked(&self, name: &str) -> bool {
        self.vars.get(name).is_some_and(|v| v.is_tracked())
    }

    /// The gradients of the tracked parameters the loss depended on, by name in
    /// sorted order; parameters the loss did not use are absent (so the
    /// optimizer leaves them alone). Consumes `self` to release the
    /// parameters' storage before the optimizer writes to it.
    pub fn gradients(self, mut grads: Gradients<T, B>) -> Vec<(String, Tensor<T, B>)> {
        self.vars
            .into_iter()
            .filter_map(|(name, v)| grads.remove(&v).map(|g| (name, g)))
            .collect()
    }
}

/// Named tensors plus named scalars: the checkpointable state of an optimizer
/// or of HGM. Scalars are f64 so integer counters up to 2^53 stay exact.
pub struct StateDict<B, T = f32>
where
    T: Element,
    B: Backend<T>,
{
    pub tensors: Vec<(String, Tensor<T, B>)>,
    pub scalars: Vec<(String, f64)>,
}

impl<T: Element, B: Backend<T>> Clone for StateDict<B, T> {
    fn clone(&self) -> Self {
        StateDict {
            tensors: self.tensors.clone(),
            scalars: self.scalars.clone(),
        }
    }
}

impl<T: Element, B: Backend<T>> Default for StateDict<B, T> {
    fn default() -> Self {
        StateDict {
            tensors: Vec::new(),
            scalars: Vec::new(),
        }
    }
}

impl<T: Element, B: Backend<T>> StateDict<B, T> {
    pub fn scalar(&self, name: &str) -> Option<f64> {
        self.scalars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
    pub fn tensor(&self, name: &str) -> Option<&Tensor<T, B>> {
        self.tensors.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}
