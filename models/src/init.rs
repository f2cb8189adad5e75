//! Seeded initialisation. Each parameter draws from its own stream, derived
//! from the model seed and the parameter's name, so adding a modality or a
//! layer never changes how the others start.

use crate::error::{ModelError, Result};
use crate::rng::Rng;
use mla_core::{Backend, Element, Tensor};
use std::str::FromStr;

/// How weights and biases start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitScheme {
    /// PyTorch's defaults for `nn.Linear` / `nn.Conv2d` (Kaiming-uniform with
    /// a = sqrt(5)): weight and bias both `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    /// The default, since the reference numbers of the spec come from PyTorch.
    #[default]
    Torch,
    /// Kaiming-uniform with the ReLU gain (`U(-sqrt(6/fan_in), sqrt(6/fan_in))`)
    /// for layers followed by a ReLU, Xavier-uniform
    /// (`U(-sqrt(6/(fan_in+fan_out)), ...)`) for the others (the heads); zero biases.
    KaimingXavier,
}

impl InitScheme {
    pub const NAMES: [&'static str; 2] = ["torch", "kaiming"];
}

impl FromStr for InitScheme {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "torch" => Ok(InitScheme::Torch),
            "kaiming" | "kaiming-xavier" => Ok(InitScheme::KaimingXavier),
            _ => Err(ModelError::unknown("init scheme", s, &Self::NAMES)),
        }
    }
}

/// What follows a layer: decides the gain under [`InitScheme::KaimingXavier`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Linear,
}

/// Fan-in and fan-out of a weight: `[out, in]` or `[out, in, kh, kw]`.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    let receptive: usize = shape.iter().skip(2).product();
    let fan_in = shape.get(1).copied().unwrap_or(1) * receptive;
    let fan_out = shape.first().copied().unwrap_or(1) * receptive;
    (fan_in, fan_out)
}

/// The stream of one named parameter: a 64-bit FNV-1a hash of its name picks
/// the stream derived from the seed.
pub fn param_rng(seed: u64, name: &str) -> Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Rng::derive(seed, h)
}

/// A tensor of `U(-bound, bound)` values.
pub fn uniform<T: Element, B: Backend<T>>(
    backend: &B,
    shape: &[usize],
    bound: f64,
    rng: &mut Rng,
) -> Result<Tensor<T, B>> {
    from_draws(backend, shape, || bound * (2.0 * rng.uniform() - 1.0))
}

/// A tensor of `N(0, std^2)` values.
pub fn normal<T: Element, B: Backend<T>>(
    backend: &B,
    shape: &[usize],
    std: f64,
    rng: &mut Rng,
) -> Result<Tensor<T, B>> {
    from_draws(backend, shape, || std * rng.normal())
}

/// Kaiming-normal initialisation in fan_out mode for a layer followed by a
/// ReLU: `N(0, 2 / fan_out)`, what torchvision's ResNet uses for every conv.
pub fn kaiming_normal_fan_out<T: Element, B: Backend<T>>(
    backend: &B,
    shape: &[usize],
    seed: u64,
    name: &str,
) -> Result<Tensor<T, B>> {
    let fan_out = fans(shape).1.max(1);
    normal(
        backend,
        shape,
        (2.0 / fan_out as f64).sqrt(),
        &mut param_rng(seed, name),
    )
}

/// A tensor of `shape` filled, in row-major order, by `draw`.
fn from_draws<T: Element, B: Backend<T>>(
    backend: &B,
    shape: &[usize],
    mut draw: impl FnMut() -> f64,
) -> Result<Tensor<T, B>> {
    // Shapes come from data files and checkpoints: an overflowing product or a size the
    // allocator refuses is an error, never a `capacity overflow` panic or an abort.
    let too_big = || {
        ModelError::Config(format!(
            "a parameter of shape {shape:?} does not fit in memory"
        ))
    };
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(too_big)?;
    let mut data: Vec<T> = Vec::new();
    data.try_reserve_exact(n).map_err(|_| too_big())?;
    data.extend((0..n).map(|_| T::lit(draw())));
    Ok(Tensor::from_slice(backend, &data, shape.to_vec())?)
}

/// Initial weight of a Linear (`[out, in]`) or Conv2d (`[oc, c, kh, kw]`) layer.
pub fn weight<T: Element, B: Backend<T>>(
    backend: &B,
    scheme: InitScheme,
    act: Activation,
    shape: &[usize],
    seed: u64,
    name: &str,
) -> Result<Tensor<T, B>> {
    let (fan_in, fan_out) = fans(shape);
    let bound = match (scheme, act) {
        (InitScheme::Torch, _) => 1.0 / (fan_in.max(1) as f64).sqrt(),
        (InitScheme::KaimingXavier, Activation::Relu) => (6.0 / fan_in.max(1) as f64).sqrt(),
        (InitScheme::KaimingXavier, Activation::Linear) => {
            (6.0 / (fan_in + fan_out).max(1) as f64).sqrt()
        }
    };
    uniform(backend, shape, bound, &mut param_rng(seed, name))
}

/// Initial bias of a layer whose weight has `fan_in` inputs per output.
pub fn bias<T: Element, B: Backend<T>>(
    backend: &B,
    scheme: InitScheme,
    len: usize,
    fan_in: usize,
    seed: u64,
    name: &str,
) -> Result<Tensor<T, B>> {
    match scheme {
        InitScheme::Torch => uniform(
            backend,
            &[len],
            1.0 / (fan_in.max(1) as f64).sqrt(),
            &mut param_rng(seed, name),
        ),
        InitScheme::KaimingXavier => Ok(Tensor::zeros(backend, [len])?),
    }
}
