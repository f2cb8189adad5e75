//! Gradient manipulation on the device, for the balancing methods: norms,
//! dot products, the unbiased standard deviation, scaling, seeded Gaussian
//! noise. Results stay on the device as `[]`-shaped tensors; a method reads
//! one back only where it branches on it.

use crate::rng::Rng;
use crate::trainer::Result;
use mla_core::{Backend, Tensor};

type T32<B> = Tensor<f32, B>;

/// `sum(a * b)` as a `[]` tensor.
pub fn dot<B: Backend<f32>>(a: &T32<B>, b: &T32<B>) -> Result<T32<B>> {
    Ok(a.mul(b)?.sum_all()?.reshape(Vec::<usize>::new())?)
}

/// `|a|^2` as a `[]` tensor.
pub fn sq_norm<B: Backend<f32>>(a: &T32<B>) -> Result<T32<B>> {
    dot(a, a)
}

/// Sum of `|a_i|^2` over several tensors (a whole encoder's gradient).
pub fn sq_norm_all<B: Backend<f32>>(parts: &[&T32<B>]) -> Result<Option<T32<B>>> {
    let mut acc: Option<T32<B>> = None;
    for p in parts {
        let n = sq_norm(p)?;
        acc = Some(match acc {
            None => n,
            Some(a) => a.add(&n)?,
        });
    }
    Ok(acc)
}

/// Unbiased (n - 1) standard deviation of all elements, as a `[]` tensor
/// (torch's default `std()`); 0 for fewer than two elements.
pub fn std_unbiased<B: Backend<f32>>(a: &T32<B>) -> Result<T32<B>> {
    let n = a.elem_count();
    if n < 2 {
        return Ok(T32::<B>::zeros(a.backend(), Vec::<usize>::new())?);
    }
    let flat = a.reshape(vec![n])?;
    let mean = flat.mean_all()?.reshape(vec![1])?;
    let centred = flat.sub(&mean)?;
    let var = centred.sqr()?.sum_all()?.scale(1.0 / (n - 1) as f64)?;
    Ok(var.sqrt()?.reshape(Vec::<usize>::new())?)
}

/// `a * k` for a `[]` tensor `k` (broadcast on the device).
pub fn scale_by<B: Backend<f32>>(a: &T32<B>, k: &T32<B>) -> Result<T32<B>> {
    Ok(a.mul(k)?)
}

/// A tensor of `a`'s shape with i.i.d. N(0, 1) entries drawn from `rng`
/// (host stream, uploaded: the stream is what makes runs and resumes
/// reproducible on every backend).
pub fn standard_normal<B: Backend<f32>>(
    backend: &B,
    dims: &[usize],
    rng: &mut Rng,
) -> Result<T32<B>> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Ok(Tensor::from_slice(backend, &v, dims.to_vec())?)
}
