//! mla's `resnet18` against torchvision's resnet18 itself: the fixtures in
//! tests/fixtures/resnet18 were exported once from PyTorch by
//! `make_fixtures.py` there, with every weight and buffer filled from a
//! formula that this test computes too (no weights committed). One
//! training-mode forward must give the same features, input gradient and
//! batch-norm running statistics; an evaluation-mode forward with the updated
//! statistics the same features. The parameter and buffer names and shapes
//! must be torchvision's state dict, entry for entry.

use mla_core::{Tape, Tensor};
use mla_cpu::Cpu;
use mla_models::data::npy::{DType, NpyArray};
use mla_models::encoders::{ResNet, ResNetKind};
use mla_models::layers::{BufferState, Mode};
use mla_models::params::ParamStore;
use std::path::PathBuf;

type Store = ParamStore<Cpu, f32>;
const PREFIX: &str = "encoder.audio.";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/resnet18")
        .join(name)
}

fn load(name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = NpyArray::open(fixture(name), DType::F32).unwrap();
    (a.shape().to_vec(), a.to_vec::<f32>().unwrap())
}

/// `formula` of make_fixtures.py: the value of every element of a tensor,
/// from its torchvision name and shape.
fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let bytes: u64 = name.bytes().map(u64::from).sum();
    let phase = (bytes % 1000) as f64 * 0.001 * 2.0 * std::f64::consts::PI;
    let leaf = name.rsplit('.').next().unwrap();
    (0..n)
        .map(|i| {
            let h = (12.9898 * i as f64 + phase).sin() * 43758.5453;
            let s = 2.0 * (h - h.floor()) - 1.0;
            let v = match leaf {
                "weight" if shape.len() == 4 => s * (3.0 / (n / shape[0]) as f64).sqrt(),
                "weight" => 1.0 + 0.2 * s,
                "bias" => 0.1 * s,
                "running_mean" => 0.05 * s,
                "running_var" => 1.0 + 0.3 * s,
                "num_batches_tracked" => 0.0,
                other => panic!("no formula for {other}"),
            };
            v as f32
        })
        .collect()
}

/// torchvision's state dict: (name, shape) in its order.
fn torchvision_state_dict() -> Vec<(String, Vec<usize>)> {
    std::fs::read_to_string(fixture("state_dict.txt"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap().to_string();
            let shape = words
                .filter(|w| *w != "-")
                .map(|w| w.parse().unwrap())
                .collect();
            (name, shape)
        })
        .collect()
}

fn filled() -> (ResNet, Store, Store) {
    let net = ResNet::new("audio", ResNetKind::ResNet18, 1.0, &[1, 64, 64]).unwrap();
    let (mut params, mut buffers) = (Store::new(&Cpu), Store::new(&Cpu));
    net.init(&mut params, &mut buffers, 1).unwrap();
    for (name, shape) in net.param_shapes() {
        let v = formula(&name[PREFIX.len()..], &shape);
        params
            .set(&name, Tensor::from_slice(&Cpu, &v, shape).unwrap())
            .unwrap();
    }
    for (name, shape) in net.buffer_shapes() {
        let v = formula(&name[PREFIX.len()..], &shape);
        buffers
            .set(&name, Tensor::from_slice(&Cpu, &v, shape).unwrap())
            .unwrap();
    }
    (net, params, buffers)
}

/// The largest error within `rel` of the reference's largest magnitude.
/// PyTorch itself in float32 lands 0.3-5e-6 from these (float64) references
/// in this measure; an element-wise relative error would be dominated by the
/// few elements near zero that are differences of much larger terms (up to
/// 4e-4 for PyTorch float32 on the input gradient).
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w as f64).abs();
        if !(err <= worst) {
            (worst, at) = (err, i);
        }
    }
    let err = worst / scale;
    println!("{what}: largest error {err:.2e} of the largest magnitude {scale:.3}");
    assert!(
        err <= rel,
        "{what}: element {at}: mla {} vs torchvision {} (error {err:.2e} of the largest magnitude > {rel:.0e})",
        got[at],
        want[at]
    );
}

#[test]
fn names_and_shapes_are_torchvisions_state_dict() {
    let net = ResNet::new("audio", ResNetKind::ResNet18, 1.0, &[1, 64, 64]).unwrap();
    let mut ours: Vec<(String, Vec<usize>)> = net
        .param_shapes()
        .into_iter()
        .chain(net.buffer_shapes())
        .map(|(n, s)| (n[PREFIX.len()..].to_string(), s))
        .collect();
    let mut theirs = torchvision_state_dict();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
}

#[test]
fn training_forward_backward_and_eval_match_torchvision() {
    let (net, params, mut buffers) = filled();
    let (x_shape, x) = load("input.npy");
    assert_eq!(x_shape, vec![2, 1, 64, 64]);

    // Training mode: batch statistics, running statistics updated.
    let tape = Tape::new(&Cpu);
    let p = params.track(&tape, |_| false);
    let xv = tape.var(Tensor::from_slice(&Cpu, &x, x_shape.clone()).unwrap());
    let mut state = BufferState::new(Mode::Train, &buffers);
    let feats = net.forward(&p, &mut state, &xv).unwrap();
    let updates = state.updates;
    let (f_shape, f_want) = load("features.npy");
    assert_eq!(feats.dims(), f_shape.as_slice());
    assert_close("features", &feats.value().to_vec().unwrap(), &f_want, 1e-4);

    let r: Vec<f32> = (0..f_want.len())
        .map(|j| (0.3 * j as f64).cos() as f32)
        .collect();
    let r = tape.constant(Tensor::from_slice(&Cpu, &r, f_shape).unwrap());
    let loss = feats.mul(&r).unwrap().sum_all().unwrap();
    let grads = tape.backward(&loss).unwrap();
    let dx = grads.get(&xv).unwrap().to_vec().unwrap();
    let (_, dx_want) = load("input_grad.npy");
    assert_close("input gradient", &dx, &dx_want, 1e-4);

    // The running statistics after the step, in torchvision's order.
    for (name, t) in updates {
        buffers.set(&name, t).unwrap();
    }
    let mut stats = Vec::new();
    for (name, _) in torchvision_state_dict() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            stats.extend(
                buffers
                    .get(&format!("{PREFIX}{name}"))
                    .unwrap()
                    .to_vec()
                    .unwrap(),
            );
        }
        if name.ends_with("num_batches_tracked") {
            let n = buffers
                .get(&format!("{PREFIX}{name}"))
                .unwrap()
                .to_vec()
                .unwrap();
            assert_eq!(n, vec![1.0], "{name}");
        }
    }
    let (_, stats_want) = load("running_stats.npy");
    assert_close("running statistics", &stats, &stats_want, 1e-4);

    // Evaluation mode with the updated running statistics.
    let tape = Tape::no_grad(&Cpu);
    let p = params.track(&tape, |_| false);
    let mut state = BufferState::new(Mode::Eval, &buffers);
    let xv = tape.constant(Tensor::from_slice(&Cpu, &x, x_shape).unwrap());
    let feats = net.forward(&p, &mut state, &xv).unwrap();
    assert!(state.updates.is_empty(), "evaluation updated buffers");
    let (_, want) = load("features_eval.npy");
    assert_close(
        "eval features",
        &feats.value().to_vec().unwrap(),
        &want,
        1e-4,
    );
}
