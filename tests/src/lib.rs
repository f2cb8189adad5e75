//! Shared helpers for the cross-crate test suite: finite-difference gradient
//! checks in f64 on the CPU backend, and random inputs shaped to stay away
//! from the kinks and singularities where finite differences lie.

pub mod train;

use mla_core::{Result, Tape, Tensor, Var};
use mla_cpu::Cpu;
use mla_models::rng::Rng;

pub type T64 = Tensor<f64, Cpu>;
pub type V64<'t> = Var<'t, f64, Cpu>;

/// Central-difference step. The truncation error is `h^2/6 * f'''` (~1e-11 for
/// the O(1)..O(10) third derivatives our bounded inputs produce) and the
/// rounding error is `~eps * |L| / h` (~1e-11 * |L|): both far below the 1e-6
/// tolerance, so a failure means a wrong backward rule, not a noisy check.
/// The larger of the two central-difference steps (see `finite_difference`).
pub const FD_STEP: f64 = 1e-4;

/// `|a - b| <= TOL * max(1, |a|, |b|)`: relative for large gradients, absolute
/// near zero, where the finite difference carries an absolute rounding error of
/// order `eps * |L| / h` that does not shrink with the gradient itself.
pub const TOL: f64 = 1e-6;

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL * 1f64.max(a.abs()).max(b.abs())
}

/// Uniform values in `[lo, hi)`.
pub fn uniform(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

/// Values with `min_abs <= |x| < max_abs` and a random sign: keeps relu's kink
/// and division's pole far from every perturbation.
pub fn away_from_zero(rng: &mut Rng, n: usize, min_abs: f64, max_abs: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let m = min_abs + (max_abs - min_abs) * rng.uniform();
            if rng.uniform() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect()
}

/// Pairwise distinct values at least `gap` apart (a shuffled grid plus jitter
/// below `gap / 2`), centred on zero: no ties inside a max-pool window.
pub fn distinct(rng: &mut Rng, n: usize, gap: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mid = n as f64 / 2.0;
    order
        .iter()
        .map(|&i| (i as f64 - mid) * gap + 0.4 * gap * rng.uniform())
        .collect()
}

pub fn tensor(data: &[f64], dims: &[usize]) -> T64 {
    T64::from_slice(&Cpu, data, dims.to_vec()).expect("test tensor")
}

/// One differentiable input of a gradient check.
#[derive(Clone, Debug)]
pub struct Input {
    pub data: Vec<f64>,
    pub dims: Vec<usize>,
}

impl Input {
    pub fn new(data: Vec<f64>, dims: &[usize]) -> Self {
        assert_eq!(
            data.len(),
            dims.iter().product::<usize>(),
            "test input does not fill its shape"
        );
        Input {
            data,
            dims: dims.to_vec(),
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs `f` on a no-grad tape and returns its output values; checks that the
/// tape recorded nothing.
fn forward_no_grad<F>(inputs: &[Input], f: &F) -> std::result::Result<Vec<f64>, String>
where
    F: for<'t> Fn(&[V64<'t>]) -> Result<V64<'t>>,
{
    let tape = Tape::no_grad(&Cpu);
    let vars: Vec<V64<'_>> = inputs
        .iter()
        .map(|i| tape.var(tensor(&i.data, &i.dims)))
        .collect();
    let out = f(&vars).map_err(|e| format!("forward failed: {e}"))?;
    if !tape.is_empty() || vars.iter().any(|v| v.is_tracked()) || out.is_tracked() {
        return Err(format!("no-grad tape recorded {} nodes", tape.len()));
    }
    out.value().to_vec().map_err(|e| e.to_string())
}

/// Richardson-extrapolated central difference, `(4 D(h/2) - D(h)) / 3` with
/// `D(h) = (f(x+h) - f(x-h)) / 2h`: its truncation error is O(h^4) rather
/// than O(h^2). A plain central difference at h = 1e-5 missed by 2e-6
/// (relative) on a batch norm over three values with a small variance, where
/// the third derivative is large; shrinking h instead would trade that for
/// rounding error of order eps * |L| / h.
fn finite_difference<G>(at: &G) -> std::result::Result<f64, String>
where
    G: Fn(f64) -> std::result::Result<f64, String>,
{
    let d = |h: f64| -> std::result::Result<f64, String> { Ok((at(h)? - at(-h)?) / (2.0 * h)) };
    let (coarse, fine) = (d(FD_STEP)?, d(FD_STEP / 2.0)?);
    Ok((4.0 * fine - coarse) / 3.0)
}

/// Checks the tape's gradient of `sum(f(inputs) * R)` (R random, so every
/// output element matters with its own weight) against central finite
/// differences, for every element of every input. Also checks that a no-grad
/// tape computes the same forward values, bit for bit, and records nothing.
pub fn check_gradients<F>(seed: u64, inputs: &[Input], f: F) -> std::result::Result<(), String>
where
    F: for<'t> Fn(&[V64<'t>]) -> Result<V64<'t>>,
{
    let cpu = Cpu;
    let tape = Tape::new(&cpu);
    let vars: Vec<V64<'_>> = inputs
        .iter()
        .map(|i| tape.var(tensor(&i.data, &i.dims)))
        .collect();
    let out = f(&vars).map_err(|e| format!("forward failed: {e}"))?;
    let out_vals = out.value().to_vec().map_err(|e| e.to_string())?;
    let mut rng = Rng::derive(seed, 0x5eed);
    let weights = uniform(&mut rng, out_vals.len(), -1.0, 1.0);
    let r = tape.constant(tensor(&weights, out.dims()));
    let loss = out
        .mul(&r)
        .and_then(|p| p.sum_all())
        .map_err(|e| format!("loss failed: {e}"))?;
    let analytic_loss = loss.value().to_scalar().map_err(|e| e.to_string())?;
    if !close(analytic_loss, dot(&out_vals, &weights)) {
        return Err(format!(
            "sum_all gave {analytic_loss}, host sum {}",
            dot(&out_vals, &weights)
        ));
    }
    let grads = tape
        .backward(&loss)
        .map_err(|e| format!("backward failed: {e}"))?;

    let plain = forward_no_grad(inputs, &f)?;
    if plain != out_vals {
        return Err("no-grad forward differs from the recorded forward".into());
    }

    for (k, (input, var)) in inputs.iter().zip(&vars).enumerate() {
        let g = grads
            .get(var)
            .ok_or_else(|| format!("no gradient for input {k}"))?;
        if g.dims() != input.dims.as_slice() {
            return Err(format!(
                "input {k}: gradient shape {:?} != input shape {:?}",
                g.dims(),
                input.dims
            ));
        }
        let g = g.to_vec().map_err(|e| e.to_string())?;
        for (j, &tape_grad) in g.iter().enumerate() {
            let at = |delta: f64| -> std::result::Result<f64, String> {
                let mut moved = inputs.to_vec();
                moved[k].data[j] += delta;
                Ok(dot(&forward_no_grad(&moved, &f)?, &weights))
            };
            let fd = finite_difference(&at)?;
            if !close(tape_grad, fd) {
                return Err(format!(
                    "input {k} {:?}, element {j}: tape {tape_grad} vs finite difference {fd} (diff {:.3e})",
                    input.dims,
                    (tape_grad - fd).abs()
                ));
            }
        }
    }
    Ok(())
}
