//! Layers as forward functions over named parameters. A layer owns no
//! tensors: it knows its parameter names and shapes, creates them in a
//! [`ParamStore`], and reads them from a step's [`TrackedParams`].

use crate::error::{ModelError, Result};
use crate::init::{self, Activation, InitScheme};
use crate::params::{ParamStore, TrackedParams};
use mla_core::{Backend, BatchNormConfig, BatchNormStats, Element, RankSum, Tensor, Var};
use std::sync::Arc;

/// `y = x W^T + b` over `[batch, in]` inputs; `W` is `[out, in]`, `b` is `[out]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Parameter prefix: the weight is `<name>.weight`, the bias `<name>.bias`.
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    pub fn new(name: impl Into<String>, in_features: usize, out_features: usize) -> Self {
        Linear {
            name: name.into(),
            in_features,
            out_features,
        }
    }
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.name)
    }
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        vec![
            (
                self.weight_name(),
                vec![self.out_features, self.in_features],
            ),
            (self.bias_name(), vec![self.out_features]),
        ]
    }

    pub fn init<T: Element, B: Backend<T>>(
        &self,
        store: &mut ParamStore<B, T>,
        scheme: InitScheme,
        act: Activation,
        seed: u64,
    ) -> Result<()> {
        let (wn, bn) = (self.weight_name(), self.bias_name());
        let w = init::weight(
            store.backend(),
            scheme,
            act,
            &[self.out_features, self.in_features],
            seed,
            &wn,
        )?;
        let b = init::bias(
            store.backend(),
            scheme,
            self.out_features,
            self.in_features,
            seed,
            &bn,
        )?;
        store.insert(wn, w)?;
        store.insert(bn, b)
    }

    pub fn forward<'t, T: Element, B: Backend<T>>(
        &self,
        p: &TrackedParams<'t, B, T>,
        x: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        if x.dims().len() != 2 || x.dims()[1] != self.in_features {
            return Err(ModelError::BadInput {
                what: format!("linear layer '{}'", self.name),
                why: format!("expected input [batch, {}]", self.in_features),
                shape: x.dims().to_vec(),
            });
        }
        let w = p.get(&self.weight_name())?;
        let b = p.get(&self.bias_name())?;
        Ok(x.matmul_t(w, false, true)?.add(b)?)
    }
}

/// 2-D convolution over NCHW inputs, square kernel, zero padding, plus a
/// per-channel bias (broadcast as `[oc, 1, 1]`) unless built [`Conv2d::without_bias`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    /// Whether the layer has a `<name>.bias` parameter.
    pub bias: bool,
}

impl Conv2d {
    pub fn new(
        name: impl Into<String>,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        Conv2d {
            name: name.into(),
            in_channels,
            out_channels,
            kernel,
            stride,
            pad,
            bias: true,
        }
    }
    /// A convolution without bias (followed by batch norm, whose shift replaces it).
    pub fn without_bias(
        name: impl Into<String>,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        Conv2d {
            bias: false,
            ..Self::new(name, in_channels, out_channels, kernel, stride, pad)
        }
    }
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.name)
    }
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ]
    }
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![(self.weight_name(), self.weight_shape())];
        if self.bias {
            v.push((self.bias_name(), vec![self.out_channels]));
        }
        v
    }

    /// Output plane size for an `h x w` input (None if the kernel does not fit).
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (hp, wp) = (h + 2 * self.pad, w + 2 * self.pad);
        if self.kernel == 0 || self.stride == 0 || hp < self.kernel || wp < self.kernel {
            return None;
        }
        Some((
            (hp - self.kernel) / self.stride + 1,
            (wp - self.kernel) / self.stride + 1,
        ))
    }

    pub fn init<T: Element, B: Backend<T>>(
        &self,
        store: &mut ParamStore<B, T>,
        scheme: InitScheme,
        act: Activation,
        seed: u64,
    ) -> Result<()> {
        let (wn, bn) = (self.weight_name(), self.bias_name());
        let shape = self.weight_shape();
        let fan_in = init::fans(&shape).0;
        let w = init::weight(store.backend(), scheme, act, &shape, seed, &wn)?;
        store.insert(wn, w)?;
        if !self.bias {
            return Ok(());
        }
        let b = init::bias(
            store.backend(),
            scheme,
            self.out_channels,
            fan_in,
            seed,
            &bn,
        )?;
        store.insert(bn, b)
    }

    /// Kaiming-normal weight (fan_out, ReLU gain) and a zero bias if any:
    /// torchvision's ResNet initialisation.
    pub fn init_kaiming_fan_out<T: Element, B: Backend<T>>(
        &self,
        store: &mut ParamStore<B, T>,
        seed: u64,
    ) -> Result<()> {
        let wn = self.weight_name();
        let w = init::kaiming_normal_fan_out(store.backend(), &self.weight_shape(), seed, &wn)?;
        store.insert(wn, w)?;
        if self.bias {
            let b = Tensor::zeros(store.backend(), [self.out_channels])?;
            store.insert(self.bias_name(), b)?;
        }
        Ok(())
    }

    pub fn forward<'t, T: Element, B: Backend<T>>(
        &self,
        p: &TrackedParams<'t, B, T>,
        x: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        let d = x.dims();
        if d.len() != 4 || d[1] != self.in_channels {
            return Err(ModelError::BadInput {
                what: format!("conv layer '{}'", self.name),
                why: format!(
                    "expected input [batch, {}, height, width]",
                    self.in_channels
                ),
                shape: d.to_vec(),
            });
        }
        let w = p.get(&self.weight_name())?;
        let b = if self.bias {
            Some(p.get(&self.bias_name())?)
        } else {
            None
        };
        Ok(x.conv2d_bias(w, b, self.stride, self.pad)?)
    }
}

/// Whether batch norm normalises with the batch's statistics and updates its
/// running ones (training) or normalises with the running ones (evaluation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// What a forward pass through batch-norm layers needs besides the parameters:
/// the mode, the running-statistics buffers to read, and (in training) the
/// buffers' new values. New values are collected rather than written, so the
/// caller decides when they land (after a successful step, and only for the
/// encoder that ran), and a failed step leaves the buffers as they were.
pub struct BufferState<'a, B, T = f32>
where
    T: Element,
    B: Backend<T>,
{
    pub mode: Mode,
    pub buffers: &'a ParamStore<B, T>,
    /// `(buffer name, new value)` in the order the layers ran.
    pub updates: Vec<(String, Tensor<T, B>)>,
    /// Synchronised batch norm (`--sync-bn`): training-mode layers normalise
    /// with the statistics of the whole job's batch, summed over ranks by
    /// this hook ([`sync_batch_norm_train`]); `None`: this rank's batch.
    pub sync: Option<Arc<dyn RankSum<T, B>>>,
}

impl<'a, T: Element, B: Backend<T>> BufferState<'a, B, T> {
    pub fn new(mode: Mode, buffers: &'a ParamStore<B, T>) -> Self {
        BufferState {
            mode,
            buffers,
            updates: Vec::new(),
            sync: None,
        }
    }

    /// The current value of a buffer: its latest update in this pass if a
    /// layer already ran (a layer applied twice compounds its updates, as in
    /// PyTorch), the stored value otherwise.
    pub fn current(&self, name: &str) -> Result<&Tensor<T, B>> {
        match self.updates.iter().rev().find(|(n, _)| n == name) {
            Some((_, t)) => Ok(t),
            None => self.buffers.get(name),
        }
    }

    /// The collected `(buffer name, new value)` updates, for [`apply_updates`]
    /// once the pass (and its borrow of the buffers) is over.
    pub fn into_updates(self) -> Vec<(String, Tensor<T, B>)> {
        self.updates
    }
}

/// Writes buffer updates from a [`BufferState`] into `store`: every name must
/// exist there with the same shape (checked before anything is written, so a
/// bad update leaves the store unchanged).
pub fn apply_updates<T: Element, B: Backend<T>>(
    store: &mut ParamStore<B, T>,
    updates: Vec<(String, Tensor<T, B>)>,
) -> Result<()> {
    for (name, t) in &updates {
        let have = store.get(name)?;
        if have.dims() != t.dims() {
            return Err(ModelError::ShapeMismatch {
                what: "buffer",
                name: name.clone(),
                expected: have.dims().to_vec(),
                got: t.dims().to_vec(),
            });
        }
    }
    for (name, t) in updates {
        store.set(&name, t)?;
    }
    Ok(())
}

/// Batch normalisation over the channel axis of `[batch, channels, ...]`
/// (PyTorch's BatchNorm2d / BatchNorm1d, affine, momentum 0.1, eps 1e-5).
/// Parameters `<name>.weight`, `<name>.bias`; buffers `<name>.running_mean`,
/// `<name>.running_var` and `<name>.num_batches_tracked` (a count kept as
/// PyTorch does, so state dicts line up; it does not enter the arithmetic
/// because the momentum is fixed).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    pub name: String,
    pub channels: usize,
    pub cfg: BatchNormConfig,
}

impl BatchNorm {
    pub fn new(name: impl Into<String>, channels: usize) -> Self {
        BatchNorm {
            name: name.into(),
            channels,
            cfg: BatchNormConfig::default(),
        }
    }
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.name)
    }
    pub fn running_mean_name(&self) -> String {
        format!("{}.running_mean", self.name)
    }
    pub fn running_var_name(&self) -> String {
        format!("{}.running_var", self.name)
    }
    pub fn num_batches_tracked_name(&self) -> String {
        format!("{}.num_batches_tracked", self.name)
    }
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        vec![
            (self.weight_name(), vec![self.channels]),
            (self.bias_name(), vec![self.channels]),
        ]
    }
    pub fn buffer_shapes(&self) -> Vec<(String, Vec<usize>)> {
        vec![
            (self.running_mean_name(), vec![self.channels]),
            (self.running_var_name(), vec![self.channels]),
            (self.num_batches_tracked_name(), vec![]),
        ]
    }

    /// Weight 1 and bias 0; running mean 0, running variance 1, no batches seen.
    pub fn init<T: Element, B: Backend<T>>(
        &self,
        params: &mut ParamStore<B, T>,
        buffers: &mut ParamStore<B, T>,
    ) -> Result<()> {
        let c = self.channels;
        params.insert(
            self.weight_name(),
            Tensor::full(params.backend(), T::one(), [c])?,
        )?;
        params.insert(self.bias_name(), Tensor::zeros(params.backend(), [c])?)?;
        let fresh = BatchNormStats::new(buffers.backend(), c)?;
        buffers.insert(self.running_mean_name(), fresh.mean)?;
        buffers.insert(self.running_var_name(), fresh.var)?;
        let zero = Tensor::zeros(buffers.backend(), Vec::<usize>::new())?;
        buffers.insert(self.num_batches_tracked_name(), zero)
    }

    pub fn forward<'t, T: Element, B: Backend<T>>(
        &self,
        p: &TrackedParams<'t, B, T>,
        state: &mut BufferState<'_, B, T>,
        x: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        let d = x.dims();
        if d.len() < 2 || d[1] != self.channels {
            return Err(ModelError::BadInput {
                what: format!("batch norm layer '{}'", self.name),
                why: format!("expected input [batch, {}, ...]", self.channels),
                shape: d.to_vec(),
            });
        }
        let (w, b) = (p.get(&self.weight_name())?, p.get(&self.bias_name())?);
        // Buffers are read as plain tensors: they never enter the graph.
        let (mn, vn, cn) = (
            self.running_mean_name(),
            self.running_var_name(),
            self.num_batches_tracked_name(),
        );
        let running = BatchNormStats {
            mean: state.current(&mn)?.clone(),
            var: state.current(&vn)?.clone(),
        };
        match state.mode {
            Mode::Eval => Ok(x.batch_norm_eval(w, b, &running, &self.cfg)?),
            Mode::Train => {
                let (y, new) = match &state.sync {
                    Some(f) => sync_batch_norm_train(x, w, b, &running, &self.cfg, f)?,
                    None => x.batch_norm_train(w, b, &running, &self.cfg)?,
                };
                let count = state.current(&cn)?.affine(1.0, 1.0)?;
                state.updates.push((mn, new.mean));
                state.updates.push((vn, new.var));
                state.updates.push((cn, count));
                Ok(y)
            }
        }
    }
}

/// Training-mode batch norm over the batch of a whole data-parallel job
/// (synchronised batch norm): `x` `[n, c, ...]` is this rank's rows, `f`
/// sums over the ranks. Normalises with the global per-channel mean and
/// biased variance, and returns the running statistics updated from them as
/// the fused kernel does (`Tensor::batch_norm_train`: momentum, unbiased
/// variance with the global count N). Composed of tape ops, two-pass: (1)
/// the per-channel sums and the element count, summed over ranks; (2) the
/// centred sums of squares, summed over ranks. Each sum is a
/// [`Var::rank_sum`] with adjoint weight `n` (this rank's rows), exact when
/// the ranks' gradients are combined as means over their rows. With a hook
/// that returns its input, it computes what the fused kernel computes.
pub fn sync_batch_norm_train<'t, T: Element, B: Backend<T>>(
    x: &Var<'t, T, B>,
    weight: &Var<'t, T, B>,
    bias: &Var<'t, T, B>,
    running: &BatchNormStats<T, B>,
    cfg: &BatchNormConfig,
    f: &Arc<dyn RankSum<T, B>>,
) -> Result<(Var<'t, T, B>, BatchNormStats<T, B>)> {
    let d = x.dims().to_vec();
    let params = [
        weight.dims(),
        bias.dims(),
        running.mean.dims(),
        running.var.dims(),
    ];
    // A rank's share may hold one value per channel: the global count is
    // checked below.
    let g = mla_core::batch_norm_geometry(&d, &params, cfg, false)?;
    let (n, c, l) = (g.n, g.c, g.inner);
    if n == 0 {
        return Err(ModelError::Config(
            "synchronised batch norm: this rank's share of the batch is empty".into(),
        ));
    }
    let tape = x.tape();
    let backend = x.value().backend();
    let x3 = x.reshape([n, c, l])?;
    let per_channel = |v: &Var<'t, T, B>| -> Result<Var<'t, T, B>> {
        Ok(v.sum_axis(2, false)?.sum_axis(0, false)?)
    };
    // (1) Sums and count over the job.
    let count = tape.constant(Tensor::full(backend, T::lit((n * l) as f64), [1])?);
    let packed = Var::concat(&[&per_channel(&x3)?, &count], 0)?.rank_sum(f, n as f64)?;
    let total = packed.value().narrow(0, c, 1)?.to_vec()?[0]
        .as_f64()
        .round();
    if total <= 1.0 {
        return Err(ModelError::Config(format!(
            "synchronised batch norm: training needs more than 1 value per channel over the job's batch, got {total}"
        )));
    }
    let mean = packed.narrow(0, 0, c)?.scale(1.0 / total)?;
    let xc = x3.sub(&mean.reshape([1, c, 1])?)?;
    // (2) Centred sums of squares over the job: the biased variance.
    let var = per_channel(&xc.sqr()?)?
        .rank_sum(f, n as f64)?
        .scale(1.0 / total)?;
    let sd = var.affine(1.0, cfg.eps)?.sqrt()?;
    let y = xc
        .div(&sd.reshape([1, c, 1])?)?
        .mul(&weight.reshape([1, c, 1])?)?
        .add(&bias.reshape([1, c, 1])?)?
        .reshape(d)?;
    let new = running.updated(mean.value(), var.value(), total, cfg.momentum)?;
    Ok((y, new))
}

/// Max pooling, `kernel x kernel` windows, no padding, sizes rounded down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
}

impl MaxPool2d {
    pub fn new(kernel: usize, stride: usize) -> Self {
        MaxPool2d { kernel, stride }
    }
    /// Output plane size for an `h x w` input (None if the window does not fit).
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        if self.kernel == 0 || self.stride == 0 || h < self.kernel || w < self.kernel {
            return None;
        }
        Some((
            (h - self.kernel) / self.stride + 1,
            (w - self.kernel) / self.stride + 1,
        ))
    }
    pub fn forward<'t, T: Element, B: Backend<T>>(
        &self,
        x: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        Ok(x.max_pool2d(self.kernel, self.stride)?)
    }
}

pub fn relu<'t, T: Element, B: Backend<T>>(x: &Var<'t, T, B>) -> Result<Var<'t, T, B>> {
    Ok(x.relu()?)
}

/// `[batch, ...] -> [batch, prod(...)]`.
pub fn flatten<'t, T: Element, B: Backend<T>>(x: &Var<'t, T, B>) -> Result<Var<'t, T, B>> {
    Ok(x.flatten()?)
}
