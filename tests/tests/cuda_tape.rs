//! Full tape gradients of a small conv net on CUDA and on the CPU backend from
//! the same weights and data: loss and every gradient agree.

mod cuda_common;

use cuda_common::*;
use mla_core::{Backend, Element, Indices, Result, Tape, Tensor, Var};
use mla_cpu::Cpu;
use mla_models::rng::Rng;

/// Parameter shapes of the test net.
const SHAPES: [&[usize]; 6] = [
    &[4, 2, 3, 3],  // conv1 weight
    &[5, 4, 3, 3],  // conv2 weight
    &[1, 5, 1, 1],  // conv2 bias
    &[6, 10],       // head weight
    &[6],           // head bias
    &[3, 2, 9, 11], // input (tracked too)
];

/// conv -> relu -> max pool -> strided conv + bias -> tanh -> avg pool ->
/// flatten -> linear -> (cross-entropy + entropy + log-softmax and
/// softmax terms, narrow/concat in between). Returns the loss and the
/// gradient of every tracked value.
fn net<T: Element, B: Backend<T>>(
    backend: &B,
    values: &[Vec<f64>],
    labels: &[u32],
) -> Result<(f64, Vec<Vec<f64>>)> {
    let tape = Tape::new(backend);
    let vars: Vec<Var<'_, T, B>> = values
        .iter()
        .zip(SHAPES)
        .map(|(v, s)| {
            Ok(tape.var(Tensor::from_slice(
                backend,
                &v.iter().map(|&x| T::lit(x)).collect::<Vec<_>>(),
                s.to_vec(),
            )?))
        })
        .collect::<Result<_>>()?;
    let [w1, w2, b2, wh, bh, x] = &vars[..] else {
        unreachable!()
    };
    let labels = Indices::new(backend, labels)?;
    let h = x.conv2d(w1, 1, 1)?.relu()?.max_pool2d(2, 2)?; // [3, 4, 4, 5]
    let h = h.conv2d(w2, 2, 1)?.add(b2)?.tanh()?; // [3, 5, 2, 3]
    let h = h.avg_pool2d(2, 1)?.flatten()?; // [3, 10]
    let logits = h.matmul_t(wh, false, true)?.add(bh)?; // [3, 6]
    let ce = logits.cross_entropy(&labels)?;
    let ent = logits.entropy()?.mean_all()?;
    let left = logits.narrow(1, 0, 2)?.log_softmax()?;
    let right = logits.narrow(1, 2, 4)?.softmax()?.sigmoid()?;
    let mixed = Var::concat(&[&right, &left], 1)?
        .sqr()?
        .mean_axis(0, false)?
        .sum_all()?;
    let loss = ce.add(&ent.scale(0.3)?)?.add(&mixed.scale(0.05)?)?;
    let grads = tape.backward(&loss)?;
    let loss_value = loss.value().to_scalar()?.as_f64();
    let gs = vars
        .iter()
        .map(|v| {
            Ok(grads
                .get(v)
                .expect("every value feeds the loss")
                .to_vec()?
                .iter()
                .map(|x| x.as_f64())
                .collect())
        })
        .collect::<Result<Vec<Vec<f64>>>>()?;
    Ok((loss_value, gs))
}

fn data(seed: u64) -> (Vec<Vec<f64>>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let values = SHAPES
        .iter()
        .map(|s| uniform(&mut rng, s.iter().product(), -0.8, 0.8))
        .collect();
    let labels = (0..3).map(|_| rng.below(6) as u32).collect();
    (values, labels)
}

fn compare<T: Element + mla_cpu::CpuFloat + mla_cuda::CudaFloat>(
    cuda: &mla_cuda::Cuda,
    seed: u64,
    rtol: f64,
    atol: f64,
) {
    let (values, labels) = data(seed);
    let (lc, gc) = net::<T, Cpu>(&Cpu, &values, &labels).unwrap();
    let (lg, gg) = net::<T, mla_cuda::Cuda>(cuda, &values, &labels).unwrap();
    assert!(
        (lc - lg).abs() <= atol + rtol * lc.abs(),
        "loss: cpu {lc} cuda {lg}"
    );
    for (i, (c, g)) in gc.iter().zip(&gg).enumerate() {
        assert_close(
            &format!("gradient of value {i} {:?}", SHAPES[i]),
            g,
            c,
            rtol,
            atol,
        );
    }
}

#[test]
fn conv_net_gradients_match_cpu_f64() {
    let Some(cuda) = cuda() else { return };
    for seed in 0..4 {
        compare::<f64>(&cuda, seed, 1e-9, 1e-11);
    }
}

#[test]
fn conv_net_gradients_match_cpu_f32() {
    let Some(cuda) = cuda() else { return };
    for seed in 10..14 {
        compare::<f32>(&cuda, seed, 2e-4, 2e-5);
    }
}

/// The net itself is well formed (runs everywhere, so a broken test net shows
/// up on machines without a GPU too): finite loss, gradients of the right sizes.
#[test]
fn test_net_runs_on_cpu() {
    let (values, labels) = data(1);
    let (loss, grads) = net::<f64, Cpu>(&Cpu, &values, &labels).unwrap();
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    for (g, s) in grads.iter().zip(SHAPES) {
        assert_eq!(g.len(), s.iter().product::<usize>());
        assert!(g.iter().all(|v| v.is_finite()));
    }
}
