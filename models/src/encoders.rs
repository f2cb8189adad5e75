//! Per-modality encoders `phi_m`, exactly as MLA.md:
//! - `cnn`: conv3x3(C->32, pad 1), ReLU, maxpool 2, conv3x3(32->64, pad 1),
//!   ReLU, maxpool 2, flatten, linear(->s), ReLU. Needs `[C, H, W]` inputs.
//! - `mlp`: flatten, linear(->256), ReLU, linear(->s), ReLU. Any input shape.
//!
//! Parameters are named `encoder.<modality>.<layer>.{weight,bias}` with layers
//! `conv1`, `conv2`, `fc` (cnn) and `fc1`, `fc2` (mlp).
//!
//! [`ResNet`] (`resnet18`, `resnet18-small`) is torchvision's ResNet-18 with
//! batch norm: its forward pass takes a [`crate::layers::Mode`] and running-statistics
//! buffers ([`BufferState`]) besides the parameters.

use crate::error::{ModelError, Result};
use crate::init::{Activation, InitScheme};
use crate::layers::{self, BatchNorm, BufferState, Conv2d, Linear, MaxPool2d};
use crate::params::{ParamStore, TrackedParams};
use mla_core::{Backend, Element, Tensor, Var};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// Prefix of every encoder parameter (`encoder.<modality>.<layer>...`).
pub const ENCODER_PREFIX: &str = "encoder.";

/// Width of the mlp encoder's hidden layer.
pub const MLP_HIDDEN: usize = 256;
/// Channels of the cnn encoder's two conv layers.
pub const CNN_CHANNELS: [usize; 2] = [32, 64];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncoderKind {
    Mlp,
    Cnn,
    ResNet(ResNetKind),
}

impl EncoderKind {
    pub const NAMES: [&'static str; 4] = ["mlp", "cnn", "resnet18", "resnet18-small"];

    pub fn as_str(self) -> &'static str {
        match self {
            EncoderKind::Mlp => "mlp",
            EncoderKind::Cnn => "cnn",
            EncoderKind::ResNet(k) => k.as_str(),
        }
    }

    /// Whether the encoder has batch-norm buffers (and a training mode).
    pub fn has_buffers(self) -> bool {
        matches!(self, EncoderKind::ResNet(_))
    }
}

impl fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EncoderKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mlp" => Ok(EncoderKind::Mlp),
            "cnn" => Ok(EncoderKind::Cnn),
            other => other
                .parse::<ResNetKind>()
                .map(EncoderKind::ResNet)
                .map_err(|_| ModelError::unknown("encoder", s.trim(), &Self::NAMES)),
        }
    }
}

/// Parses an encoder spec against the dataset's modalities (in their order):
/// - `"cnn"`: that encoder for every modality;
/// - `"image=cnn,audio=mlp"`: one per modality. Every modality must be named
///   exactly once: a modality left out is an error (no silent default), as is
///   an unknown modality or encoder name.
pub fn parse_encoder_spec(spec: &str, modalities: &[&str]) -> Result<Vec<EncoderKind>> {
    const WHAT: &str = "encoder spec";
    let trimmed = spec.trim();
    if trimmed.is_empty() {
        return Err(ModelError::bad_spec(
            WHAT,
            spec,
            format!(
                "empty; expected one of {} or MODALITY=ENCODER,...",
                EncoderKind::NAMES.join("|")
            ),
        ));
    }
    if !trimmed.contains('=') {
        let kind: EncoderKind = trimmed.parse()?;
        return Ok(vec![kind; modalities.len()]);
    }
    let mut chosen: Vec<Option<EncoderKind>> = vec![None; modalities.len()];
    for item in trimmed.split(',') {
        let item = item.trim();
        let Some((name, enc)) = item.split_once('=') else {
            return Err(ModelError::bad_spec(
                WHAT,
                spec,
                format!("'{item}' is not MODALITY=ENCODER"),
            ));
        };
        let name = name.trim();
        let idx = modalities
            .iter()
            .position(|m| *m == name)
            .ok_or_else(|| ModelError::unknown("modality", name, modalities))?;
        if chosen[idx].is_some() {
            return Err(ModelError::bad_spec(
                WHAT,
                spec,
                format!("modality '{name}' given more than once"),
            ));
        }
        chosen[idx] = Some(enc.parse()?);
    }
    let missing: Vec<&str> = modalities
        .iter()
        .zip(&chosen)
        .filter(|(_, c)| c.is_none())
        .map(|(m, _)| *m)
        .collect();
    if !missing.is_empty() {
        return Err(ModelError::bad_spec(
            WHAT,
            spec,
            format!(
                "no encoder for modality {} (name every modality, or give one encoder for all)",
                missing.join(", ")
            ),
        ));
    }
    Ok(chosen
        .into_iter()
        .map(|c| c.expect("checked above"))
        .collect())
}

#[derive(Clone, Debug, PartialEq)]
enum Net {
    Mlp {
        fc1: Linear,
        fc2: Linear,
    },
    Cnn {
        conv1: Conv2d,
        conv2: Conv2d,
        pool: MaxPool2d,
        fc: Linear,
    },
    ResNet(ResNet),
}

/// One modality's encoder: input `[batch, ...input_shape]` -> features `[batch, s]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoder {
    modality: String,
    kind: EncoderKind,
    input_shape: Vec<usize>,
    feature_size: usize,
    net: Net,
}

impl Encoder {
    /// Builds the architecture for one modality's input shape (per sample,
    /// without the batch axis). `cnn` needs `[C, H, W]` with H, W >= 4 (two
    /// 2x2 poolings). A ResNet's feature size is its last stage's width
    /// (512 times `width_mult`), which `feature_size` must equal; the other
    /// encoders ignore `width_mult`.
    pub fn new(
        modality: &str,
        kind: EncoderKind,
        input_shape: &[usize],
        feature_size: usize,
        width_mult: f64,
    ) -> Result<Self> {
        let bad = |why: String| ModelError::BadInput {
            what: format!("{kind} encoder for modality '{modality}'"),
            why,
            shape: input_shape.to_vec(),
        };
        if feature_size == 0 {
            return Err(ModelError::Config(format!(
                "feature size must be positive (modality '{modality}')"
            )));
        }
        if input_shape.is_empty() || input_shape.contains(&0) {
            return Err(bad(
                "input shape must have at least one axis and no empty axis".into(),
            ));
        }
        let prefix = Self::prefix_for(modality);
        let net = match kind {
            EncoderKind::Mlp => {
                let n: usize = input_shape.iter().product();
                Net::Mlp {
                    fc1: Linear::new(format!("{prefix}fc1"), n, MLP_HIDDEN),
                    fc2: Linear::new(format!("{prefix}fc2"), MLP_HIDDEN, feature_size),
                }
            }
            EncoderKind::Cnn => {
                let &[c, h, w] = input_shape else {
                    return Err(bad(format!(
                        "needs a [channels, height, width] input per sample (rank 3), got rank {}; use the mlp encoder for other shapes",
                        input_shape.len()
                    )));
                };
                let conv1 = Conv2d::new(format!("{prefix}conv1"), c, CNN_CHANNELS[0], 3, 1, 1);
                let conv2 = Conv2d::new(
                    format!("{prefix}conv2"),
                    CNN_CHANNELS[0],
                    CNN_CHANNELS[1],
                    3,
                    1,
                    1,
                );
                let pool = MaxPool2d::new(2, 2);
                let out = conv1
                    .output_hw(h, w)
                    .and_then(|(h, w)| pool.output_hw(h, w))
                    .and_then(|(h, w)| conv2.output_hw(h, w))
                    .and_then(|(h, w)| pool.output_hw(h, w))
                    .ok_or_else(|| {
                        bad("height and width must be at least 4 (two 2x2 max-poolings)".into())
                    })?;
                let flat = CNN_CHANNELS[1] * out.0 * out.1;
                Net::Cnn {
                    conv1,
                    conv2,
                    pool,
                    fc: Linear::new(format!("{prefix}fc"), flat, feature_size),
                }
            }
            EncoderKind::ResNet(rk) => {
                let net = ResNet::new(modality, rk, width_mult, input_shape)?;
                if net.feature_size() != feature_size {
                    return Err(ModelError::Config(format!(
                        "{rk} with width multiplier {width_mult} gives {} features per sample (modality '{modality}'), but the feature size is {feature_size}; pass --feature-size {}",
                        net.feature_size(),
                        net.feature_size()
                    )));
                }
                Net::ResNet(net)
            }
        };
        Ok(Encoder {
            modality: modality.to_string(),
            kind,
            input_shape: input_shape.to_vec(),
            feature_size,
            net,
        })
    }

    /// `encoder.<modality>.`: every parameter of this encoder starts with it.
    pub fn prefix_for(modality: &str) -> String {
        format!("{ENCODER_PREFIX}{modality}.")
    }
    pub fn prefix(&self) -> String {
        Self::prefix_for(&self.modality)
    }
    pub fn modality(&self) -> &str {
        &self.modality
    }
    /// The ResNet behind a `resnet18` / `resnet18-small` encoder.
    pub fn resnet(&self) -> Option<&ResNet> {
        match &self.net {
            Net::ResNet(r) => Some(r),
            _ => None,
        }
    }

    pub fn kind(&self) -> EncoderKind {
        self.kind
    }
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    pub fn feature_size(&self) -> usize {
        self.feature_size
    }

    /// Features entering the final linear layer (cnn: 3,136 for [1,28,28], 9,600 for [1,40,63]).
    pub fn flatten_size(&self) -> usize {
        match &self.net {
            Net::Mlp { fc1, .. } => fc1.in_features,
            Net::Cnn { fc, .. } => fc.in_features,
            Net::ResNet(r) => r.feature_size(),
        }
    }

    /// Every parameter (name, shape), in layer order (ResNet: sorted, with
    /// its batch-norm buffers, which the model keeps among its parameters).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match &self.net {
            Net::ResNet(r) => {
                let mut v = r.param_shapes();
                v.extend(r.buffer_shapes());
                v.sort();
                v
            }
            Net::Mlp { fc1, fc2 } => [fc1.param_shapes(), fc2.param_shapes()].concat(),
            Net::Cnn {
                conv1, conv2, fc, ..
            } => [
                conv1.param_shapes(),
                conv2.param_shapes(),
                fc.param_shapes(),
            ]
            .concat(),
        }
    }

    /// Creates this encoder's parameters (every layer is followed by a ReLU).
    pub fn init<T: Element, B: Backend<T>>(
        &self,
        store: &mut ParamStore<B, T>,
        scheme: InitScheme,
        seed: u64,
    ) -> Result<()> {
        let act = Activation::Relu;
        match &self.net {
            Net::ResNet(r) => {
                // Buffers live beside the parameters in the model's store;
                // they never get a gradient, so no optimizer touches them.
                let mut buffers = ParamStore::new(store.backend());
                r.init(store, &mut buffers, seed)?;
                for (name, t) in buffers.iter() {
                    store.insert(name, t.clone())?;
                }
                Ok(())
            }
            Net::Mlp { fc1, fc2 } => {
                fc1.init(store, scheme, act, seed)?;
                fc2.init(store, scheme, act, seed)
            }
            Net::Cnn {
                conv1, conv2, fc, ..
            } => {
                conv1.init(store, scheme, act, seed)?;
                conv2.init(store, scheme, act, seed)?;
                fc.init(store, scheme, act, seed)
            }
        }
    }

    /// `[batch, ...input_shape] -> [batch, s]`; `state` holds the batch-norm
    /// buffers and collects their updates (unused by cnn and mlp).
    pub fn forward<'t, T: Element, B: Backend<T>>(
        &self,
        p: &TrackedParams<'t, B, T>,
        state: &mut BufferState<'_, B, T>,
        x: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        let d = x.dims();
        if d.len() != self.input_shape.len() + 1 || d[1..] != self.input_shape[..] {
            return Err(ModelError::BadInput {
                what: format!("{} encoder for modality '{}'", self.kind, self.modality),
                why: format!("expected input [batch, {}]", dims_list(&self.input_shape)),
                shape: d.to_vec(),
            });
        }
        match &self.net {
            Net::Mlp { fc1, fc2 } => {
                let h = layers::flatten(x)?;
                let h = layers::relu(&fc1.forward(p, &h)?)?;
                layers::relu(&fc2.forward(p, &h)?)
            }
            Net::Cnn {
                conv1,
                conv2,
                pool,
                fc,
            } => {
                // ReLU after the pooling: max-pooling commutes with a
                // monotone map, so values and gradients are those of MLA.md's
                // ReLU-then-pool, but the ReLU and its backward run on a
                // quarter of the values.
                let h = layers::relu(&pool.forward(&conv1.forward(p, x)?)?)?;
                let h = layers::relu(&pool.forward(&conv2.forward(p, &h)?)?)?;
                let h = layers::flatten(&h)?;
                layers::relu(&fc.forward(p, &h)?)
            }
            Net::ResNet(r) => r.forward(p, state, x),
        }
    }
}

fn dims_list(d: &[usize]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- ResNet-18 encoders ----

/// The ResNet encoders of the field's method papers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResNetKind {
    /// torchvision's ResNet-18: 7x7 / stride 2 stem, 3x3 / stride 2 max-pool.
    ResNet18,
    /// The same blocks behind a 3x3 / stride 1 stem without max-pool, for
    /// small inputs such as 28x28.
    ResNet18Small,
}

impl ResNetKind {
    pub const NAMES: [&'static str; 2] = ["resnet18", "resnet18-small"];

    pub fn as_str(self) -> &'static str {
        match self {
            ResNetKind::ResNet18 => "resnet18",
            ResNetKind::ResNet18Small => "resnet18-small",
        }
    }
}

impl fmt::Display for ResNetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResNetKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "resnet18" => Ok(ResNetKind::ResNet18),
            "resnet18-small" => Ok(ResNetKind::ResNet18Small),
            _ => Err(ModelError::unknown("encoder", s.trim(), &Self::NAMES)),
        }
    }
}

/// The encoder spec used when none is given: `cnn` for modalities of image
/// shape, `mlp` for vectors (rank 1, which `cnn` cannot take); one name
/// when every modality gets the same, else `NAME=KIND,...` in dataset order.
pub fn default_encoder_spec<'a>(
    modalities: impl IntoIterator<Item = (&'a str, &'a [usize])>,
) -> String {
    let kinds: Vec<(&str, EncoderKind)> = modalities
        .into_iter()
        .map(|(name, shape)| {
            let kind = if shape.len() == 1 {
                EncoderKind::Mlp
            } else {
                EncoderKind::Cnn
            };
            (name, kind)
        })
        .collect();
    match kinds.first() {
        Some(&(_, first)) if kinds.iter().all(|&(_, k)| k == first) => first.as_str().into(),
        None => EncoderKind::Cnn.as_str().into(),
        Some(_) => kinds
            .iter()
            .map(|(n, k)| format!("{n}={}", k.as_str()))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The feature size an encoder spec implies when none is given: a ResNet's
/// last stage width (512 times `width_mult`, rounded) if the spec names a
/// ResNet, else the cnn/mlp default (128).
pub fn default_feature_size(spec: &str, width_mult: f64) -> usize {
    if spec.to_ascii_lowercase().contains("resnet18") {
        ((RESNET18_WIDTHS[3] as f64 * width_mult).round() as usize).max(1)
    } else {
        crate::model::DEFAULT_FEATURE_SIZE
    }
}

/// ResNet-18's stage widths at width multiplier 1.
pub const RESNET18_WIDTHS: [usize; 4] = [64, 128, 256, 512];
/// Basic blocks per stage.
pub const RESNET18_BLOCKS: [usize; 4] = [2, 2, 2, 2];

/// torchvision's BasicBlock: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`,
/// the shortcut a 1x1 strided conv + batch norm (`downsample.0`, `downsample.1`)
/// when the stride or the width changes, the identity otherwise.
#[derive(Clone, Debug, PartialEq)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(name: &str, cin: usize, cout: usize, stride: usize) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| {
            (
                Conv2d::without_bias(format!("{name}.downsample.0"), cin, cout, 1, stride, 0),
                BatchNorm::new(format!("{name}.downsample.1"), cout),
            )
        });
        BasicBlock {
            conv1: Conv2d::without_bias(format!("{name}.conv1"), cin, cout, 3, stride, 1),
            bn1: BatchNorm::new(format!("{name}.bn1"), cout),
            conv2: Conv2d::without_bias(format!("{name}.conv2"), cout, cout, 3, 1, 1),
            bn2: BatchNorm::new(format!("{name}.bn2"), cout),
            downsample,
        }
    }

    fn convs(&self) -> Vec<&Conv2d> {
        let mut v = vec![&self.conv1, &self.conv2];
        v.extend(self.downsample.as_ref().map(|d| &d.0));
        v
    }

    fn norms(&self) -> Vec<&BatchNorm> {
        let mut v = vec![&self.bn1, &self.bn2];
        v.extend(self.downsample.as_ref().map(|d| &d.1));
        v
    }

    fn forward<'t, T: Element, B: Backend<T>>(
        &self,
        p: &TrackedParams<'t, B, T>,
        state: &mut BufferState<'_, B, T>,
        x: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        let h = self.conv1.forward(p, x)?;
        let h = self.bn1.forward(p, state, &h)?.relu()?;
        let h = self.conv2.forward(p, &h)?;
        let h = self.bn2.forward(p, state, &h)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward(p, state, &conv.forward(p, x)?)?,
            None => x.clone(),
        };
        Ok(h.add(&shortcut)?.relu()?)
    }
}

/// A ResNet-18 encoder for one modality: input `[batch, C, H, W]` (any C, any
/// H, W >= 1), or `[batch, T, C, H, W]` where the T frames are encoded as one
/// batch of `batch * T` images and their features averaged (OGM-GE's visual
/// encoder); output `[batch, s]` with `s` the last stage's width (512 at
/// width multiplier 1), after global average pooling.
///
/// Parameter and buffer names are torchvision's under the encoder prefix
/// (`encoder.visual.conv1.weight`, `encoder.visual.layer1.0.bn1.running_mean`,
/// `encoder.visual.layer2.0.downsample.0.weight`, ...); there is no `fc`.
/// Batch norm makes the forward pass depend on a [`crate::layers::Mode`] and on running
/// statistics, which live in a buffer store beside the parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNet {
    modality: String,
    kind: ResNetKind,
    width_mult: f64,
    input_shape: Vec<usize>,
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<BasicBlock>,
    feature_size: usize,
}

impl ResNet {
    /// Builds the architecture for one modality's per-sample input shape
    /// `[C, H, W]` or `[T, C, H, W]`. `width_mult` scales every width
    /// (rounded, at least 1): 0.25 gives 16-32-64-128.
    pub fn new(
        modality: &str,
        kind: ResNetKind,
        width_mult: f64,
        input_shape: &[usize],
    ) -> Result<Self> {
        let bad = |why: String| ModelError::BadInput {
            what: format!("{kind} encoder for modality '{modality}'"),
            why,
            shape: input_shape.to_vec(),
        };
        if !(width_mult > 0.0 && width_mult.is_finite()) {
            return Err(ModelError::Config(format!(
                "{kind} width multiplier must be positive, got {width_mult} (modality '{modality}')"
            )));
        }
        if !matches!(input_shape.len(), 3 | 4) || input_shape.contains(&0) {
            return Err(bad(
                "needs a [channels, height, width] or [frames, channels, height, width] input per sample, no empty axis"
                    .into(),
            ));
        }
        let channels = input_shape[input_shape.len() - 3];
        let scaled = |w: usize| -> Result<usize> {
            let s = (w as f64 * width_mult).round();
            if s > 1e6 {
                return Err(ModelError::Config(format!(
                    "{kind} width multiplier {width_mult} makes a stage {s} channels wide (modality '{modality}')"
                )));
            }
            Ok((s as usize).max(1))
        };
        let widths: Vec<usize> = RESNET18_WIDTHS
            .iter()
            .map(|&w| scaled(w))
            .collect::<Result<_>>()?;
        let prefix = Encoder::prefix_for(modality);
        let stem = match kind {
            ResNetKind::ResNet18 => {
                Conv2d::without_bias(format!("{prefix}conv1"), channels, widths[0], 7, 2, 3)
            }
            ResNetKind::ResNet18Small => {
                Conv2d::without_bias(format!("{prefix}conv1"), channels, widths[0], 3, 1, 1)
            }
        };
        let stem_bn = BatchNorm::new(format!("{prefix}bn1"), widths[0]);
        let mut blocks = Vec::new();
        let mut cin = widths[0];
        for (stage, (&width, &count)) in widths.iter().zip(&RESNET18_BLOCKS).enumerate() {
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("{prefix}layer{}.{i}", stage + 1);
                blocks.push(BasicBlock::new(&name, cin, width, stride));
                cin = width;
            }
        }
        Ok(ResNet {
            modality: modality.to_string(),
            kind,
            width_mult,
            input_shape: input_shape.to_vec(),
            stem,
            stem_bn,
            blocks,
            feature_size: cin,
        })
    }

    pub fn modality(&self) -> &str {
        &self.modality
    }
    pub fn kind(&self) -> ResNetKind {
        self.kind
    }
    pub fn width_mult(&self) -> f64 {
        self.width_mult
    }
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    /// `s`: the last stage's width.
    pub fn feature_size(&self) -> usize {
        self.feature_size
    }
    pub fn prefix(&self) -> String {
        Encoder::prefix_for(&self.modality)
    }

    fn convs(&self) -> Vec<&Conv2d> {
        let mut v = vec![&self.stem];
        v.extend(self.blocks.iter().flat_map(|b| b.convs()));
        v
    }
    fn norms(&self) -> Vec<&BatchNorm> {
        let mut v = vec![&self.stem_bn];
        v.extend(self.blocks.iter().flat_map(|b| b.norms()));
        v
    }

    /// Every parameter (name, shape): conv weights, batch-norm weights and biases.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self.convs().iter().flat_map(|c| c.param_shapes()).collect();
        v.extend(self.norms().iter().flat_map(|n| n.param_shapes()));
        v.sort();
        v
    }

    /// Every buffer (name, shape): running means and variances, batch counts.
    pub fn buffer_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self
            .norms()
            .iter()
            .flat_map(|n| n.buffer_shapes())
            .collect();
        v.sort();
        v
    }

    /// Creates the parameters (Kaiming-normal fan_out convolutions, batch-norm
    /// weight 1 and bias 0, as torchvision) and the buffers (mean 0, variance 1).
    pub fn init<T: Element, B: Backend<T>>(
        &self,
        params: &mut ParamStore<B, T>,
        buffers: &mut ParamStore<B, T>,
        seed: u64,
    ) -> Result<()> {
        for conv in self.convs() {
            conv.init_kaiming_fan_out(params, seed)?;
        }
        for norm in self.norms() {
            norm.init(params, buffers)?;
        }
        Ok(())
    }

    /// Loads a torchvision-style ResNet-18 state dict (names without the
    /// encoder prefix: `conv1.weight`, `layer1.0.bn1.running_mean`, ...) into
    /// this encoder's parameters and buffers, which must have been created by
    /// [`ResNet::init`]. The classifier (`fc.*`) is ignored: the encoder ends
    /// at the pooled features. Every name and shape is checked before
    /// anything is written; on a mismatch the error lists every missing,
    /// unexpected, repeated and wrongly shaped entry.
    pub fn load_torchvision<T: Element, B: Backend<T>>(
        &self,
        params: &mut ParamStore<B, T>,
        buffers: &mut ParamStore<B, T>,
        named: Vec<(String, Tensor<T, B>)>,
    ) -> Result<()> {
        let prefix = self.prefix();
        // Full name -> (shape, whether it is a parameter rather than a buffer).
        let expected: BTreeMap<String, (Vec<usize>, bool)> = self
            .param_shapes()
            .into_iter()
            .map(|(n, s)| (n, (s, true)))
            .chain(
                self.buffer_shapes()
                    .into_iter()
                    .map(|(n, s)| (n, (s, false))),
            )
            .collect();
        let mut problems = Vec::new();
        let mut given = BTreeSet::new();
        let mut accepted = Vec::new();
        for (name, t) in named {
            if name.starts_with("fc.") {
                continue;
            }
            let full = format!("{prefix}{name}");
            let Some((shape, is_param)) = expected.get(&full) else {
                problems.push(format!("unexpected '{name}'"));
                continue;
            };
            if !given.insert(full.clone()) {
                problems.push(format!("'{name}' given twice"));
            } else if shape.as_slice() != t.dims() {
                problems.push(format!(
                    "'{name}' has shape {:?}, expected {shape:?}",
                    t.dims()
                ));
            } else if !(if *is_param { &*params } else { &*buffers }).contains(&full) {
                problems.push(format!("'{name}' was not initialised in this model"));
            } else {
                accepted.push((full, *is_param, t));
            }
        }
        for full in expected.keys().filter(|k| !given.contains(*k)) {
            problems.push(format!("missing '{}'", &full[prefix.len()..]));
        }
        if !problems.is_empty() {
            return Err(ModelError::state(
                "ResNet-18 state dict",
                format!(
                    "{} encoder for modality '{}': {}",
                    self.kind,
                    self.modality,
                    problems.join("; ")
                ),
            ));
        }
        for (full, is_param, t) in accepted {
            if is_param {
                params.set(&full, t)?;
            } else {
                buffers.set(&full, t)?;
            }
        }
        Ok(())
    }

    /// `[batch, ...input_shape] -> [batch, s]`. In [`crate::layers::Mode::Train`] every
    /// batch-norm layer appends its new running statistics to `state.updates`.
    pub fn forward<'t, T: Element, B: Backend<T>>(
        &self,
        p: &TrackedParams<'t, B, T>,
        state: &mut BufferState<'_, B, T>,
        x: &Var<'t, T, B>,
    ) -> Result<Var<'t, T, B>> {
        let d = x.dims();
        if d.len() != self.input_shape.len() + 1 || d[1..] != self.input_shape[..] {
            return Err(ModelError::BadInput {
                what: format!("{} encoder for modality '{}'", self.kind, self.modality),
                why: format!("expected input [batch, {}]", dims_list(&self.input_shape)),
                shape: d.to_vec(),
            });
        }
        let batch = d[0];
        // Frames become one batch of images; their features are averaged below.
        let frames = (self.input_shape.len() == 4).then_some(self.input_shape[0]);
        let images = match frames {
            Some(t) => {
                let s = &self.input_shape;
                x.reshape([batch * t, s[1], s[2], s[3]])?
            }
            None => x.clone(),
        };
        let h = self.stem.forward(p, &images)?;
        let mut h = self.stem_bn.forward(p, state, &h)?;
        // As in `cnn`, the ReLU after the max-pool, which commutes with it
        // (torchvision's order gives the same values and gradients).
        if self.kind == ResNetKind::ResNet18 {
            h = h.max_pool2d_pad(3, 2, 1)?;
        }
        let mut h = h.relu()?;
        for block in &self.blocks {
            h = block.forward(p, state, &h)?;
        }
        let n = h.dims()[0];
        let feats = h.global_avg_pool2d()?.reshape([n, self.feature_size])?;
        Ok(match frames {
            Some(t) => feats
                .reshape([batch, t, self.feature_size])?
                .mean_axis(1, false)?,
            None => feats,
        })
    }
}
