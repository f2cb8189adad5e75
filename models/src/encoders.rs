//! Per-modality encoders `phi_m`, exactly as MLA.md:
//! - `cnn`: conv3x3(C->32, pad 1), ReLU, maxpool 2, conv3x3(32->64, pad 1),
//!   ReLU, maxpool 2, flatten, linear(->s), ReLU. Needs `[C, H, W]` inputs.
//! - `mlp`: flatten, linear(->256), ReLU, linear(->s), ReLU. Any input shape.
//!
//! Parameters are named `encoder.<modality>.<layer>.{weight,bias}` with layers
//! `conv1`, `conv2`, `fc` (cnn) and `fc1`, `fc2` (mlp).

use crate::error::{ModelError, Result};
use crate::init::{Activation, InitScheme};
use crate::layers::{self, Conv2d, Linear, MaxPool2d};
use crate::params::{ParamStore, TrackedParams};
use mla_core::{Backend, Element, Var};
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
}

impl EncoderKind {
    pub const NAMES: [&'static str; 2] = ["mlp", "cnn"];

    pub fn as_str(self) -> &'static str {
        match self {
            EncoderKind::Mlp => "mlp",
            EncoderKind::Cnn => "cnn",
        }
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
            _ => Err(ModelError::unknown("encoder", s.trim(), &Self::NAMES)),
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

#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// One modality's encoder: input `[batch, ...input_shape]` -> features `[batch, s]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoder {
    modality: String,
    kind: EncoderKind,
    input_shape: Vec<usize>,
    feature_size: usize,
    net: Net,
}

impl Encoder {
    /// Builds the architecture for one modality's input shape (per sample,
    /// without the batch axis). `cnn` needs `[C, H, W]` with H, W >= 4 (two 2x2 poolings).
    pub fn new(
        modality: &str,
        kind: EncoderKind,
        input_shape: &[usize],
        feature_size: usize,
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
        }
    }

    /// Every parameter (name, shape), in layer order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match &self.net {
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

    /// `[batch, ...input_shape] -> [batch, s]`.
    pub fn forward<'t, T: Element, B: Backend<T>>(
        &self,
        p: &TrackedParams<'t, B, T>,
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
                let h = pool.forward(&layers::relu(&conv1.forward(p, x)?)?)?;
                let h = pool.forward(&layers::relu(&conv2.forward(p, &h)?)?)?;
                let h = layers::flatten(&h)?;
                layers::relu(&fc.forward(p, &h)?)
            }
        }
    }
}

fn dims_list(d: &[usize]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
