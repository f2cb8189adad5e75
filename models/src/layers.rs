//! Layers as forward functions over named parameters. A layer owns no
//! tensors: it knows its parameter names and shapes, creates them in a
//! [`ParamStore`], and reads them from a step's [`TrackedParams`].

use crate::error::{ModelError, Result};
use crate::init::{self, Activation, InitScheme};
use crate::params::{ParamStore, TrackedParams};
use mla_core::{Backend, Element, Var};

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
/// per-channel bias (broadcast as `[oc, 1, 1]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
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
        vec![
            (self.weight_name(), self.weight_shape()),
            (self.bias_name(), vec![self.out_channels]),
        ]
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
        let b = init::bias(
            store.backend(),
            scheme,
            self.out_channels,
            fan_in,
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
        let b = p
            .get(&self.bias_name())?
            .reshape([self.out_channels, 1, 1])?;
        Ok(x.conv2d(w, self.stride, self.pad)?.add(&b)?)
    }
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
