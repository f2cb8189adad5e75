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
//! in one pass (these sums are also `dbias` and `dweight`), then one pass per
//! sample writes `dx`.
//!
//! Each channel's sums run in a fixed order (fixed lanes, see
//! [`channel_sums`]) inside one task, so results do not depend on the thread
//! count.

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

/// Independent partial sums of [`channel_sums`]: one f64 add chain per
/// lane instead of a single chain, whose add latency (not bandwidth) would
/// bound the pass; the lanes vectorise.
const LANES: usize = 8;

/// Sums over channel `ch` of the `S` values `f(index, element)`, in f64,
/// sample by sample: each element `j` of a sample's run goes to lane `j %
/// LANES`, and the lanes are added in order at the end (a fixed order, so
/// the result depends on the shape only).
fn channel_sums<T: CpuFloat, const S: usize>(
    x: &[T],
    g: &BatchNormGeometry,
    ch: usize,
    f: impl Fn(usize, T) -> [f64; S],
) -> [f64; S] {
    let mut acc = [[0.0f64; LANES]; S];
    // Element `k` (value `v`) into lane `l`.
    let mut add = |l: usize, k: usize, v: T| {
        for (a, t) in acc.iter_mut().zip(f(k, v)) {
            a[l] += t;
        }
    };
    for i in 0..g.n {
        let base = (i * g.c + ch) * g.inner;
        let mut blocks = x[base..base + g.inner].chunks_exact(LANES);
        for (b, blk) in (&mut blocks).enumerate() {
            for (l, &v) in blk.iter().enumerate() {
                add(l, base + b * LANES + l, v);
            }
        }
        let tail = base + g.inner - blocks.remainder().len();
        for (l, &v) in blocks.remainder().iter().enumerate() {
            add(l, tail + l, v);
        }
    }
    acc.map(|a| a.iter().sum())
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
            let [sum] = channel_sums(x, g, ch, |_, v| [v.as_f64()]);
            let mean = sum / count;
            let [ss] = channel_sums(x, g, ch, |_, v| {
                let d = v.as_f64() - mean;
                [d * d]
            });
            let var = ss / count;
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
            // One pass for both sums; invstd is factored out of the second.
            let [sum_dy, sum_dy_xc] = channel_sums(x, g, ch, |k, v| {
                let dy = grad[k].as_f64();
                [dy, dy * (v.as_f64() - m)]
            });
            (sum_dy, sum_dy_xc * invstd, invstd)
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
