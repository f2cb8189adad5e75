//! The multimodal model: one encoder per modality plus a linear head.
//!
//! - [`HeadKind::Shared`] (MLA): one head `head.weight [C, s]`, `head.bias [C]`
//!   applied to every modality's features.
//! - [`HeadKind::Concat`] (joint): `head.weight [C, M*s]` over the
//!   concatenated features of all modalities (in spec order).
//! - [`HeadKind::Single`] (unimodal): one modality, its encoder and its head.
//! - [`HeadKind::ConcatUnimodal`] (MMPareto): the concatenation head plus one
//!   head per modality (`heads.<modality>.weight [C, s]`, `.bias`), which
//!   gives that modality's own logits (not a slice of the fused head).
//! - [`HeadKind::Ensemble`] (ReconBoost): the shared head plus a learnable
//!   scalar `head.beta [1]` (the "boost rate", initialised to 1 as in the
//!   official code); a modality's logits are `beta * head(h_m)`, so the
//!   ensemble `beta * sum_m head(h_m)` is the sum of the modality logits.
//!
//! A training step puts the parameters on a tape ([`Model::track`]), runs
//! [`Model::features`] and a logits function, and calls backward; an
//! evaluation does the same on a `Tape::no_grad` tape.

use crate::encoders::{Encoder, EncoderKind};
use crate::error::{ModelError, Result};
use crate::init::{Activation, InitScheme};
use crate::layers::{apply_updates, BufferState, Linear, Mode};
use crate::params::{ParamStore, TrackedParams};
use mla_core::{Backend, Element, Indices, RankSum, Tape, Tensor, Var};
use std::sync::{Arc, Mutex};

/// Name of the head's weight (the one HGM projects).
pub const HEAD_WEIGHT: &str = "head.weight";
/// Name of the head's bias (never projected).
pub const HEAD_BIAS: &str = "head.bias";
/// Name of the [`HeadKind::Ensemble`] scale.
pub const HEAD_BETA: &str = "head.beta";
/// Prefix of every head parameter.
pub const HEAD_PREFIX: &str = "head.";
/// Prefix of the per-modality heads of [`HeadKind::ConcatUnimodal`].
pub const UNIMODAL_HEADS_PREFIX: &str = "heads.";
/// Feature size `s` of MLA.md's AV-MNIST recipe.
pub const DEFAULT_FEATURE_SIZE: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    Shared,
    Concat,
    Single,
    ConcatUnimodal,
    Ensemble,
}

impl HeadKind {
    /// Whether the fused prediction is a head on the concatenated features.
    pub fn is_concat(self) -> bool {
        matches!(self, HeadKind::Concat | HeadKind::ConcatUnimodal)
    }
}

/// Architecture of a model: modalities with their per-sample input shapes
/// (from the dataset), one encoder kind per modality (same order), the
/// feature size `s`, the number of classes and the head.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub modalities: Vec<(String, Vec<usize>)>,
    pub encoders: Vec<EncoderKind>,
    pub feature_size: usize,
    pub num_classes: usize,
    pub head: HeadKind,
    pub init: InitScheme,
    /// Width multiplier of ResNet encoders (1: torchvision's widths).
    pub width_mult: f64,
}

impl ModelSpec {
    /// A spec with the default feature size (128) and PyTorch-default initialisation.
    pub fn new(
        modalities: Vec<(String, Vec<usize>)>,
        encoders: Vec<EncoderKind>,
        num_classes: usize,
        head: HeadKind,
    ) -> Self {
        ModelSpec {
            modalities,
            encoders,
            feature_size: DEFAULT_FEATURE_SIZE,
            num_classes,
            head,
            init: InitScheme::default(),
            width_mult: 1.0,
        }
    }

    pub fn modality_names(&self) -> Vec<&str> {
        self.modalities.iter().map(|(m, _)| m.as_str()).collect()
    }

    /// Inputs of the head: `s`, or `M * s` for the concatenation head.
    pub fn head_inputs(&self) -> usize {
        match self.head {
            HeadKind::Concat | HeadKind::ConcatUnimodal => {
                self.feature_size * self.modalities.len()
            }
            HeadKind::Shared | HeadKind::Single | HeadKind::Ensemble => self.feature_size,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let cfg = |m: String| Err(ModelError::Config(m));
        if self.modalities.is_empty() {
            return cfg("a model needs at least one modality".into());
        }
        if self.encoders.len() != self.modalities.len() {
            return cfg(format!(
                "{} encoders given for {} modalities",
                self.encoders.len(),
                self.modalities.len()
            ));
        }
        if self.head == HeadKind::Single && self.modalities.len() != 1 {
            return cfg(format!(
                "a single-modality (unimodal) model takes exactly one modality, got {}",
                self.modalities.len()
            ));
        }
        if self.num_classes == 0 {
            return cfg("number of classes must be positive".into());
        }
        if self.feature_size == 0 {
            return cfg("feature size must be positive".into());
        }
        for (i, (name, _)) in self.modalities.iter().enumerate() {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return cfg(format!(
                    "modality name '{name}' must be non-empty letters, digits, '_' or '-'"
                ));
            }
            if self.modalities[..i].iter().any(|(n, _)| n == name) {
                return cfg(format!("modality '{name}' listed twice"));
            }
        }
        Ok(())
    }
}

/// Encoders and head of one model, with their parameters.
pub struct Model<B, T = f32>
where
    T: Element,
    B: Backend<T>,
{
    spec: ModelSpec,
    encoders: Vec<Encoder>,
    head: Linear,
    /// [`HeadKind::ConcatUnimodal`]: one head per modality, in spec order.
    unimodal_heads: Vec<Linear>,
    /// Parameters, and the batch-norm buffers of ResNet encoders (no
    /// gradient ever reaches a buffer, so no optimizer steps one).
    params: ParamStore<B, T>,
    /// Batch-norm buffer updates of the forward passes since the last
    /// [`Model::commit_buffers`], in order (later ones build on earlier ones).
    pending: Mutex<Vec<(String, Tensor<T, B>)>>,
    /// Synchronised batch norm: the sum over ranks training-mode batch-norm
    /// layers use (see [`Model::set_sync_bn`]).
    sync_bn: Option<Arc<dyn RankSum<T, B>>>,
}

impl<T: Element, B: Backend<T>> Model<B, T> {
    /// Builds the model and initialises every parameter from `seed`.
    pub fn new(backend: &B, spec: ModelSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        let encoders = spec
            .modalities
            .iter()
            .zip(&spec.encoders)
            .map(|((m, shape), &kind)| {
                Encoder::new(m, kind, shape, spec.feature_size, spec.width_mult)
            })
            .collect::<Result<Vec<_>>>()?;
        let head = Linear::new("head", spec.head_inputs(), spec.num_classes);
        let unimodal_heads: Vec<Linear> = match spec.head {
            HeadKind::ConcatUnimodal => spec
                .modalities
                .iter()
                .map(|(m, _)| {
                    Linear::new(
                        format!("{UNIMODAL_HEADS_PREFIX}{m}"),
                        spec.feature_size,
                        spec.num_classes,
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut params = ParamStore::new(backend);
        for e in &encoders {
            e.init(&mut params, spec.init, seed)?;
        }
        head.init(&mut params, spec.init, Activation::Linear, seed)?;
        for h in &unimodal_heads {
            h.init(&mut params, spec.init, Activation::Linear, seed)?;
        }
        if spec.head == HeadKind::Ensemble {
            params.insert(HEAD_BETA, Tensor::from_slice(backend, &[T::one()], [1])?)?;
        }
        Ok(Model {
            spec,
            encoders,
            head,
            unimodal_heads,
            params,
            pending: Mutex::new(Vec::new()),
            sync_bn: None,
        })
    }

    /// Synchronised batch norm (`--sync-bn`): with a hook, every
    /// training-mode batch-norm layer normalises with the statistics of the
    /// whole job's batch, summed over ranks by it
    /// ([`crate::layers::sync_batch_norm_train`]); `None`: this process's
    /// batch. Evaluation mode is unchanged.
    pub fn set_sync_bn(&mut self, hook: Option<Arc<dyn RankSum<T, B>>>) {
        self.sync_bn = hook;
    }

    /// Whether [`Model::set_sync_bn`] installed a hook.
    pub fn sync_bn(&self) -> bool {
        self.sync_bn.is_some()
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    pub fn encoders(&self) -> &[Encoder] {
        &self.encoders
    }
    pub fn modality_names(&self) -> Vec<&str> {
        self.spec.modality_names()
    }
    pub fn modality_index(&self, modality: &str) -> Result<usize> {
        self.encoders
            .iter()
            .position(|e| e.modality() == modality)
            .ok_or_else(|| ModelError::unknown("modality", modality, &self.modality_names()))
    }
    pub fn encoder(&self, modality: &str) -> Result<&Encoder> {
        Ok(&self.encoders[self.modality_index(modality)?])
    }

    pub fn params(&self) -> &ParamStore<B, T> {
        &self.params
    }
    pub fn params_mut(&mut self) -> &mut ParamStore<B, T> {
        &mut self.params
    }
    /// Swaps in another set of parameters (a snapshot or a checkpoint) with the
    /// same names and shapes.
    pub fn set_params(&mut self, params: ParamStore<B, T>) -> Result<()> {
        self.pending
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let named = params
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        self.params.load_named(named)
    }

    /// Loads a torchvision-style ResNet-18 state dict (`conv1.weight`,
    /// `layer1.0.bn1.running_mean`, ...; `fc.*` ignored) into `modality`'s
    /// encoder: its parameters and batch-norm buffers. Every name and shape
    /// is checked before anything is written (see
    /// [`crate::encoders::ResNet::load_torchvision`]).
    pub fn init_encoder(
        &mut self,
        modality: &str,
        named: Vec<(String, Tensor<T, B>)>,
    ) -> Result<()> {
        let i = self.modality_index(modality)?;
        let enc = &self.encoders[i];
        let Some(resnet) = enc.resnet() else {
            return Err(ModelError::state(
                "encoder initialisation",
                format!(
                    "modality '{modality}' has a {} encoder; only resnet18 and resnet18-small load torchvision weights",
                    enc.kind()
                ),
            ));
        };
        // The model keeps the buffers among its parameters; the loader wants
        // them apart, and they go back once it has checked everything.
        let mut buffers = ParamStore::new(self.params.backend());
        for (name, _) in resnet.buffer_shapes() {
            buffers.insert(name.clone(), self.params.get(&name)?.clone())?;
        }
        resnet.load_torchvision(&mut self.params, &mut buffers, named)?;
        for (name, t) in buffers.iter() {
            self.params.set(name, t.clone())?;
        }
        Ok(())
    }

    /// Puts the parameters on a tape (see [`ParamStore::track`]).
    pub fn track<'t>(
        &self,
        tape: &'t Tape<T, B>,
        trainable: impl Fn(&str) -> bool,
    ) -> TrackedParams<'t, B, T> {
        self.params.track(tape, trainable)
    }

    /// `encoder.<modality>.`: the parameter group of one modality's encoder.
    pub fn encoder_prefix(modality: &str) -> String {
        Encoder::prefix_for(modality)
    }

    /// Trainable set of an MLA step of `modality`: its encoder and the head.
    pub fn step_trainable(modality: &str) -> impl Fn(&str) -> bool + 'static {
        let prefix = Encoder::prefix_for(modality);
        move |name: &str| name.starts_with(&prefix) || name.starts_with(HEAD_PREFIX)
    }

    /// `phi_m(x)`: `[batch, ...input_shape] -> [batch, s]`.
    ///
    /// Batch norm (ResNet encoders) runs in training mode on a gradient tape
    /// and in evaluation mode on a no-grad tape (`Tape::no_grad`: evaluation,
    /// probes, prototypes). Training-mode passes leave their new running
    /// statistics pending; they are read by later passes and written to the
    /// buffers by [`Model::commit_buffers`] (the trainer does it after each
    /// step), so only the encoders that ran change.
    pub fn features<'t>(
        &self,
        p: &TrackedParams<'t, B, T>,
        modality: &str,
        x: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        let enc = self.encoder(modality)?;
        if !enc.kind().has_buffers() {
            return enc.forward(p, &mut BufferState::new(Mode::Eval, &self.params), x);
        }
        let mode = if x.tape().grad_enabled() {
            Mode::Train
        } else {
            Mode::Eval
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let overlay;
        let store = if pending.is_empty() {
            &self.params
        } else {
            let mut s = self.params.clone();
            apply_updates(&mut s, pending.clone())?;
            overlay = s;
            &overlay
        };
        let mut state = BufferState::new(mode, store);
        if mode == Mode::Train {
            state.sync = self.sync_bn.clone();
        }
        let h = enc.forward(p, &mut state, x)?;
        pending.extend(state.into_updates());
        Ok(h)
    }

    /// Writes the pending batch-norm statistics into the buffers.
    pub fn commit_buffers(&mut self) -> Result<()> {
        let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
        apply_updates(&mut self.params, pending)
    }

    /// Names of the batch-norm buffers the model keeps among its parameters.
    pub fn buffer_names(&self) -> Vec<String> {
        self.encoders
            .iter()
            .filter_map(|e| e.resnet())
            .flat_map(|r| r.buffer_shapes())
            .map(|(n, _)| n)
            .collect()
    }

    /// Whether the model has batch-norm buffers.
    pub fn has_buffers(&self) -> bool {
        self.encoders.iter().any(|e| e.kind().has_buffers())
    }

    /// The head on its input: `[batch, s]` (shared, single) or `[batch, M*s]` (concat).
    pub fn head_logits<'t>(
        &self,
        p: &TrackedParams<'t, B, T>,
        h: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        self.head.forward(p, h)
    }

    /// Joint model: the head on the concatenation of every modality's
    /// `[batch, s]` features, in spec order. For samples missing a modality,
    /// pass zero features there (see [`scatter_rows`]).
    pub fn joint_logits<'t>(
        &self,
        p: &TrackedParams<'t, B, T>,
        feats: &[&Var<'t, T, B>],
    ) -> Result<Var<'t, T, B>> {
        if !self.spec.head.is_concat() {
            return Err(ModelError::Config(
                "joint_logits needs the concatenation head (joint model)".into(),
            ));
        }
        if feats.len() != self.encoders.len() {
            return Err(ModelError::Config(format!(
                "joint_logits: {} feature tensors for {} modalities",
                feats.len(),
                self.encoders.len()
            )));
        }
        let h = Var::concat(feats, 1)?;
        self.head.forward(p, &h)
    }

    /// Logits of one modality alone, from its `[batch, s]` features: the
    /// shared (or single) head, or for a concatenation head that modality's
    /// slice plus `b / M` (the "slice logits" of OGM, PMR and
    /// BalanceBenchmark: they sum to the fused logits, up to rounding).
    pub fn modality_logits<'t>(
        &self,
        p: &TrackedParams<'t, B, T>,
        modality: &str,
        h: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        let m = self.modality_index(modality)?;
        match self.spec.head {
            HeadKind::Shared | HeadKind::Single => self.head.forward(p, h),
            HeadKind::Ensemble => Ok(self.head.forward(p, h)?.mul(p.get(HEAD_BETA)?)?),
            HeadKind::ConcatUnimodal => self.unimodal_heads[m].forward(p, h),
            HeadKind::Concat => self.slice_logits(p, modality, h),
        }
    }

    /// A concatenation head's slice of one modality: `W_m h + b / M`, so the
    /// slices of all modalities sum to the fused logits (up to rounding).
    pub fn slice_logits<'t>(
        &self,
        p: &TrackedParams<'t, B, T>,
        modality: &str,
        h: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        let m = self.modality_index(modality)?;
        if !self.spec.head.is_concat() {
            return Err(ModelError::Config(format!(
                "slice logits of modality '{modality}' need a concatenation head"
            )));
        }
        let s = self.spec.feature_size;
        if h.dims().len() != 2 || h.dims()[1] != s {
            return Err(ModelError::BadInput {
                what: format!("slice logits of modality '{modality}'"),
                why: format!("expected features [batch, {s}]"),
                shape: h.dims().to_vec(),
            });
        }
        let w = p.get(HEAD_WEIGHT)?.narrow(1, m * s, s)?;
        let b = p.get(HEAD_BIAS)?.scale(1.0 / self.encoders.len() as f64)?;
        Ok(h.matmul_t(&w, false, true)?.add(&b)?)
    }
}

/// Places the rows of `h` (`[n, ...]`, the samples where a modality is present)
/// at `positions` in a `[batch, ...]` result whose other rows are zero
/// (differentiable: the gradient flows back to the present rows only).
pub fn scatter_rows<'t, T: Element, B: Backend<T>>(
    h: &Var<'t, T, B>,
    positions: &[usize],
    batch: usize,
) -> Result<Var<'t, T, B>> {
    let d = h.dims();
    if d.is_empty() || d[0] != positions.len() {
        return Err(ModelError::BadInput {
            what: "scatter_rows".into(),
            why: format!("expected {} rows, one per position", positions.len()),
            shape: d.to_vec(),
        });
    }
    let n = positions.len();
    let mut src = vec![n; batch];
    for (k, &pos) in positions.iter().enumerate() {
        if pos >= batch || src[pos] != n {
            return Err(ModelError::Config(format!(
                "scatter_rows: position {pos} out of range or repeated (batch {batch})"
            )));
        }
        src[pos] = k;
    }
    let backend = h.value().backend();
    let mut zero_dims = d.to_vec();
    zero_dims[0] = 1;
    let zero = h.tape().constant(Tensor::zeros(backend, zero_dims)?);
    let with_zero = Var::concat(&[h, &zero], 0)?;
    Ok(with_zero.gather_rows(&Indices::from_usize(backend, &src)?)?)
}
