//! Tiny f32 training kit for the integration and memory tests: synthetic data
//! sets, two small models and a plain SGD step on the backend's kernel.

use mla_core::{Backend, Indices, Result, SgdConfig, Tape, Tensor, Var};
use mla_cpu::Cpu;
use mla_models::rng::Rng;

pub type T32 = Tensor<f32, Cpu>;
pub type V32<'t> = Var<'t, f32, Cpu>;

/// Uniform init in `±sqrt(3 / fan_in)` (unit-variance pre-activations for unit inputs).
pub fn init(rng: &mut Rng, dims: &[usize], fan_in: usize) -> T32 {
    let bound = (3.0 / fan_in as f64).sqrt();
    let data: Vec<f32> = (0..dims.iter().product())
        .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
        .collect();
    T32::from_slice(&Cpu, &data, dims.to_vec()).expect("init shape")
}

/// One step: builds a tape, runs `loss_fn` on tracked copies of `params`,
/// back-propagates, drops the tape, then updates every parameter in place with
/// plain SGD. Returns the loss before the update.
pub fn sgd_step<F>(params: &mut [T32], lr: f64, loss_fn: F) -> Result<f32>
where
    F: for<'t> Fn(&'t Tape<f32, Cpu>, &[V32<'t>]) -> Result<V32<'t>>,
{
    let (loss, grads) = {
        let tape = Tape::new(&Cpu);
        let vars: Vec<V32<'_>> = params.iter().map(|p| tape.var(p.clone())).collect();
        let loss = loss_fn(&tape, &vars)?;
        let mut grads = tape.backward(&loss)?;
        let g: Vec<T32> = vars
            .iter()
            .map(|v| grads.remove(v).expect("every parameter is used"))
            .collect();
        (loss.value().to_scalar()?, g)
    };
    // The tape and its vars are gone, so each parameter's storage is unshared
    // again and is updated in place without a copy.
    let cfg = SgdConfig {
        lr,
        momentum: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    };
    for (p, g) in params.iter_mut().zip(&grads) {
        Cpu.sgd_step(p.storage_mut()?, g.storage(), None, &cfg)?;
    }
    Ok(loss)
}

/// Fraction of rows whose largest logit is at the label.
pub fn accuracy(logits: &T32, labels: &[u32]) -> Result<f64> {
    let (rows, cols) = logits.shape().as_matrix("accuracy")?;
    let v = logits.to_vec()?;
    let hits = (0..rows)
        .filter(|&r| {
            let row = &v[r * cols..(r + 1) * cols];
            let best = (0..cols).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best == labels[r] as usize
        })
        .count();
    Ok(hits as f64 / rows as f64)
}

/// Two classes no line separates: a disc of radius 0.5 (label 0) inside a
/// ring of radii 0.9..1.3 (label 1). Returns `[n, 2]` points and labels.
pub fn rings(rng: &mut Rng, n: usize) -> (T32, Vec<u32>) {
    let mut xs = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u32;
        let r = if label == 0 {
            0.5 * rng.uniform().sqrt()
        } else {
            0.9 + 0.4 * rng.uniform()
        };
        let a = 2.0 * std::f64::consts::PI * rng.uniform();
        xs.extend([(r * a.cos()) as f32, (r * a.sin()) as f32]);
        labels.push(label);
    }
    (
        T32::from_slice(&Cpu, &xs, [n, 2]).expect("rings shape"),
        labels,
    )
}

/// `n` single-channel `size x size` images, each holding one bar of length
/// 3..=size/2 at a random position: horizontal (label 0) or vertical (label 1).
pub fn bars(rng: &mut Rng, n: usize, size: usize) -> (T32, Vec<u32>) {
    let mut img = vec![0f32; n * size * size];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u32;
        let len = 3 + rng.below(size / 2 - 2);
        let (along, across) = (rng.below(size - len + 1), rng.below(size));
        for t in along..along + len {
            let (y, x) = if label == 0 { (across, t) } else { (t, across) };
            img[i * size * size + y * size + x] = 1.0;
        }
        labels.push(label);
    }
    (
        T32::from_slice(&Cpu, &img, [n, 1, size, size]).expect("bars shape"),
        labels,
    )
}

/// `input -> hidden (tanh) -> classes`: `[w1, b1, w2, b2]`.
pub fn mlp_params(rng: &mut Rng, input: usize, hidden: usize, classes: usize) -> Vec<T32> {
    vec![
        init(rng, &[input, hidden], input),
        T32::zeros(&Cpu, [hidden]).expect("b1"),
        init(rng, &[hidden, classes], hidden),
        T32::zeros(&Cpu, [classes]).expect("b2"),
    ]
}

pub fn mlp_logits<'t>(p: &[V32<'t>], x: &V32<'t>) -> Result<V32<'t>> {
    x.matmul(&p[0])?
        .add(&p[1])?
        .tanh()?
        .matmul(&p[2])?
        .add(&p[3])
}

/// For `size x size` single-channel images: conv 3x3 (pad 1) to `channels`,
/// bias, relu, 2x2 max-pool, flatten, linear to `classes` with its weight
/// stored `[classes, features]` (used transposed). `[wc, bc, wf, bf]`.
pub fn convnet_params(rng: &mut Rng, size: usize, channels: usize, classes: usize) -> Vec<T32> {
    let features = channels * (size / 2) * (size / 2);
    vec![
        init(rng, &[channels, 1, 3, 3], 9),
        T32::zeros(&Cpu, [1, channels, 1, 1]).expect("bc"),
        init(rng, &[classes, features], features),
        T32::zeros(&Cpu, [classes]).expect("bf"),
    ]
}

pub fn convnet_logits<'t>(p: &[V32<'t>], x: &V32<'t>) -> Result<V32<'t>> {
    let h = x
        .conv2d(&p[0], 1, 1)?
        .add(&p[1])?
        .relu()?
        .max_pool2d(2, 2)?
        .flatten()?;
    h.matmul_t(&p[2], false, true)?.add(&p[3])
}

pub fn labels(l: &[u32]) -> Indices<f32, Cpu> {
    Indices::new(&Cpu, l).expect("labels")
}
