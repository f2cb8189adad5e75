//! Fused training-mode batch norm over `[n, c, inner]`.
//!
//! Forward: one rayon task per channel computes its mean, then its centred
//! sum of squares (two passes over the channel, both in f64: a one-pass
//! `E[x^2] - E[x]^2` loses every digit when |mean| >> std); then one pass per
//! sample writes `y = (x - mean) * (invstd * weight) + bias`.
//!
//! Backward: the closed form
//! `dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))`, with
//! `xhat = (x - mean) * invstd`; one task per channel sums `dy` and `dy * xhat`
//! (these sums are also `dbias` and `dweight`), then one pass per sample writes `dx`.
//!
//! Each channel's sums run in a fixed order inside one task, so results do not
//! depend on the thread count.

use crate::alloc::uninit_vec;
use crate::CpuFloat;
use mla_core::{BatchNormGeometry, Error, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

fn check_len(op: &'static str, what: &str, have: usize, want: usize) -> Result<()> {
    if have == want {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{what} has {have} elements, expected {want}"),
            &[&[have], &[want]],
        ))
    }
}

/// Sum over channel `ch` of `f(element)`, in f64, sample by sample.
fn channel_sum<T: CpuFloat>(
    x: &[T],
    g: &BatchNormGeometry,
    ch: usize,
    mut f: impl FnMut(usize, T) -> f64,
) -> f64 {
    let mut s = 0.0f64;
    for i in 0..g.n {
        let base = (i * g.c + ch) * g.inner;
        for (j, &v) in x[base..base + g.inner].iter().enumerate() {
            s += f(base + j, v);
        }
    }
    s
}

/// Writes `out[k] = f(channel, k)` for every element, one rayon task per sample.
fn per_element<T: CpuFloat>(g: &BatchNormGeometry, f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    let per_sample = g.c * g.inner;
    let fill = |i: usize, out: &mut [MaybeUninit<T>]| {
        for ch in 0..g.c {
            let base = ch * g.inner;
            for (j, o) in out[base..base + g.inner].iter_mut().enumerate() {
                o.write(f(ch, i * per_sample + base + j));
            }
        }
    };
    // SAFETY: `fill` writes every element of each sample's block.
    unsafe {
        uninit_vec(g.len(), |out| {
            out.par_chunks_mut(per_sample.max(1))
                .enumerate()
                .for_each(|(i, o)| fill(i, o))
        })
    }
}

pub(crate) fn batch_norm<T: CpuFloat>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    g: &BatchNormGeometry,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    let op = "batch_norm";
    check_len(op, "input", x.len(), g.len())?;
    check_len(op, "weight", weight.len(), g.c)?;
    check_len(op, "bias", bias.len(), g.c)?;
    if g.count() == 0 {
        return Err(Error::invalid(
            op,
            "no values to take batch statistics over",
            &[&[g.n, g.c, g.inner]],
        ));
    }
    let count = g.count() as f64;
    let stats: Vec<(f64, f64)> = (0..g.c)
        .into_par_iter()
        .map(|ch| {
            let mean = channel_sum(x, g, ch, |_, v| v.as_f64()) / count;
            let var = channel_sum(x, g, ch, |_, v| {
                let d = v.as_f64() - mean;
                d * d
            }) / count;
            (mean, var)
        })
        .collect();
    // Per channel: the mean and the factor `invstd * weight`, in T for the element pass.
    let coef: Vec<(T, T)> = stats
        .iter()
        .zip(weight)
        .map(|(&(mean, var), &w)| {
            let invstd = 1.0 / (var + g.eps).sqrt();
            (T::lit(mean), T::lit(invstd * w.as_f64()))
        })
        .collect();
    let y = per_element(g, |ch, k| {
        let (mean, scale) = coef[ch];
        (x[k] - mean) * scale + bias[ch]
    });
    let mean = stats.iter().map(|s| T::lit(s.0)).collect();
    let var = stats.iter().map(|s| T::lit(s.1)).collect();
    Ok((y, mean, var))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward<T: CpuFloat>(
    x: &[T],
    grad: &[T],
    mean: &[T],
    var: &[T],
    weight: &[T],
    g: &BatchNormGeometry,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    let op = "batch_norm_backward";
    check_len(op, "input", x.len(), g.len())?;
    check_len(op, "grad", grad.len(), g.len())?;
    check_len(op, "mean", mean.len(), g.c)?;
    check_len(op, "var", var.len(), g.c)?;
    check_len(op, "weight", weight.len(), g.c)?;
    let count = g.count().max(1) as f64;
    // Per channel (sum dy, sum dy * xhat, invstd).
    let sums: Vec<(f64, f64, f64)> = (0..g.c)
        .into_par_iter()
        .map(|ch| {
            let m = mean[ch].as_f64();
            let invstd = 1.0 / (var[ch].as_f64() + g.eps).sqrt();
            let sum_dy = channel_sum(x, g, ch, |k, _| grad[k].as_f64());
            let sum_dy_xhat = channel_sum(x, g, ch, |k, v| {
                grad[k].as_f64() * (v.as_f64() - m) * invstd
            });
            (sum_dy, sum_dy_xhat, invstd)
        })
        .collect();
    // dx = k * (dy - a - (x - mean) * b) with k = weight * invstd,
    // a = sum(dy) / N and b = invstd * sum(dy * xhat) / N.
    let coef: Vec<(T, T, T, T)> = sums
        .iter()
        .zip(weight)
        .zip(mean)
        .map(|((&(sdy, sdyx, invstd), &w), &m)| {
            (
                m,
                T::lit(w.as_f64() * invstd),
                T::lit(sdy / count),
                T::lit(invstd * sdyx / count),
            )
        })
        .collect();
    let dx = per_element(g, |ch, k| {
        let (m, kk, a, b) = coef[ch];
        kk * (grad[k] - a - (x[k] - m) * b)
    });
    let dweight = sums.iter().map(|s| T::lit(s.1)).collect();
    let dbias = sums.iter().map(|s| T::lit(s.0)).collect();
    Ok((dx, dweight, dbias))
}
