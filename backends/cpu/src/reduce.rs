use crate::{CpuFloat, PAR_CHUNK};
use mla_core::{Error, Result};
use rayon::prelude::*;

/// Sum in f64 with eight independent partial sums (a dependency chain per lane, not one per element).
fn sum_f64<T: CpuFloat>(x: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v.as_f64();
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|v| v.as_f64()).sum();
    acc.iter().sum::<f64>() + tail
}

pub(crate) fn sum_axis<T: CpuFloat>(x: &[T], outer: usize, len: usize, inner: usize) -> Vec<T> {
    let mut out = crate::alloc::zeroed_vec(outer * inner);
    if out.is_empty() {
        return out;
    }
    if inner == 1 {
        // Accumulate in f64: long sums (whole-tensor losses, gradient checks) stay accurate.
        // Long rows are summed in fixed-size pieces (in parallel), and the pieces in order,
        // so the result does not depend on the thread count.
        out.par_iter_mut().enumerate().for_each(|(o, dst)| {
            let row = &x[o * len..(o + 1) * len];
            let s: f64 = if len > PAR_CHUNK {
                let parts: Vec<f64> = row.par_chunks(PAR_CHUNK).map(sum_f64).collect();
                parts.iter().sum()
            } else {
                sum_f64(row)
            };
            *dst = T::lit(s);
        });
        return out;
    }
    // Tasks own a column range of one output row; with few rows (a bias
    // gradient summed over the batch) the columns are split so all threads work.
    let col_chunk = if outer >= 2 * rayon::current_num_threads() {
        inner
    } else {
        (PAR_CHUNK / len.max(1)).clamp(64, inner.max(64))
    };
    out.par_chunks_mut(inner).enumerate().for_each(|(o, row)| {
        row.par_chunks_mut(col_chunk)
            .enumerate()
            .for_each(|(jc, dst)| {
                let j0 = jc * col_chunk;
                for l in 0..len {
                    let src = &x[(o * len + l) * inner + j0..][..dst.len()];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = *d + s;
                    }
                }
            })
    });
    out
}

pub(crate) fn softmax<T: CpuFloat>(x: &[T], rows: usize, cols: usize, log: bool) -> Vec<T> {
    let mut out = vec![T::zero(); rows * cols];
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .for_each(|(o, x)| {
            let max = x.iter().copied().fold(T::neg_infinity(), T::max);
            let mut sum = T::zero();
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - max).exp();
                sum = sum + *o;
            }
            if log {
                let lse = sum.ln();
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = v - max - lse;
                }
            } else {
                for o in o.iter_mut() {
                    *o = *o / sum;
                }
            }
        });
    out
}

pub(crate) fn softmax_backward<T: CpuFloat>(
    y: &[T],
    grad: &[T],
    rows: usize,
    cols: usize,
    log: bool,
) -> Vec<T> {
    let mut out = vec![T::zero(); rows * cols];
    out.par_chunks_mut(cols).enumerate().for_each(|(r, o)| {
        let (y, g) = (
            &y[r * cols..(r + 1) * cols],
            &grad[r * cols..(r + 1) * cols],
        );
        if log {
            // d/dx log_softmax: g - softmax * sum(g)
            let gs = g.iter().fold(T::zero(), |a, &b| a + b);
            for j in 0..cols {
                o[j] = g[j] - y[j].exp() * gs;
            }
        } else {
            let dot = g.iter().zip(y).fold(T::zero(), |a, (&g, &y)| a + g * y);
            for j in 0..cols {
                o[j] = y[j] * (g[j] - dot);
            }
        }
    });
    out
}

pub(crate) fn cross_entropy<T: CpuFloat>(
    logits: &[T],
    labels: &[u32],
    rows: usize,
    cols: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= cols) {
        return Err(Error::invalid(
            "cross_entropy",
            format!("label {bad} out of range for {cols} classes"),
            &[&[rows, cols]],
        ));
    }
    let logp = softmax(logits, rows, cols, true);
    let total: f64 = (0..rows)
        .map(|r| -logp[r * cols + labels[r] as usize].as_f64())
        .sum();
    let probs = logp.iter().map(|v| v.exp()).collect();
    Ok((vec![T::lit(total / rows as f64)], probs))
}

pub(crate) fn cross_entropy_backward<T: CpuFloat>(
    probs: &[T],
    labels: &[u32],
    grad_loss: &[T],
    rows: usize,
    cols: usize,
) -> Result<Vec<T>> {
    let scale = grad_loss[0] / T::lit(rows as f64);
    let mut out: Vec<T> = probs.iter().map(|&p| p * scale).collect();
    for (r, &l) in labels.iter().enumerate() {
        let l = l as usize;
        if l >= cols {
            return Err(Error::invalid(
                "cross_entropy_backward",
                format!("label {l} out of range for {cols} classes"),
                &[&[rows, cols]],
            ));
        }
        out[r * cols + l] = out[r * cols + l] - scale;
    }
    Ok(out)
}
