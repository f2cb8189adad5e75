//! The ResNet-18 encoders: torchvision's parameter and buffer names and
//! shapes, initialisation, output shapes, train / eval batch-norm behaviour
//! (running statistics updated only in training, frames averaged), and errors.

use mla_core::{Tape, Tensor};
use mla_cpu::Cpu;
use mla_models::encoders::{ResNet, ResNetKind};
use mla_models::layers::{apply_updates, BufferState, Mode};
use mla_models::params::ParamStore;
use mla_models::rng::Rng;
use mla_models::ModelError;

type Store = ParamStore<Cpu, f32>;
/// `(buffer name, new values)` from one pass.
type Updates = Vec<(String, Vec<f32>)>;

fn built(kind: ResNetKind, wm: f64, shape: &[usize]) -> (ResNet, Store, Store) {
    let net = ResNet::new("visual", kind, wm, shape).unwrap();
    let (mut params, mut buffers) = (Store::new(&Cpu), Store::new(&Cpu));
    net.init(&mut params, &mut buffers, 7).unwrap();
    (net, params, buffers)
}

fn input(shape: &[usize], seed: u64) -> Tensor<f32, Cpu> {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_slice(&Cpu, &v, shape.to_vec()).unwrap()
}

/// Runs the encoder on `x`; returns the features and the buffer updates.
fn run(
    net: &ResNet,
    params: &Store,
    buffers: &Store,
    x: &Tensor<f32, Cpu>,
    mode: Mode,
) -> (Vec<f32>, Vec<usize>, Updates) {
    let tape = Tape::no_grad(&Cpu);
    let p = params.track(&tape, |_| false);
    let mut state = BufferState::new(mode, buffers);
    let y = net
        .forward(&p, &mut state, &tape.constant(x.clone()))
        .unwrap();
    let updates = state
        .updates
        .iter()
        .map(|(n, t)| (n.clone(), t.to_vec().unwrap()))
        .collect();
    (y.value().to_vec().unwrap(), y.dims().to_vec(), updates)
}

/// torchvision's resnet18 has 11,689,512 parameters; without its 512 x 1000
/// `fc` (513,000) that leaves 11,176,512 for 3 input channels. 20 batch-norm
/// layers, 3 downsampling shortcuts.
#[test]
fn resnet18_names_and_shapes_are_torchvision() {
    let net = ResNet::new("visual", ResNetKind::ResNet18, 1.0, &[3, 224, 224]).unwrap();
    let params = net.param_shapes();
    let total: usize = params
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(total, 11_176_512);
    let find = |list: &[(String, Vec<usize>)], name: &str| {
        list.iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(
        find(&params, "encoder.visual.conv1.weight"),
        vec![64, 3, 7, 7]
    );
    assert_eq!(find(&params, "encoder.visual.bn1.weight"), vec![64]);
    assert_eq!(
        find(&params, "encoder.visual.layer1.1.conv2.weight"),
        vec![64, 64, 3, 3]
    );
    assert_eq!(
        find(&params, "encoder.visual.layer2.0.downsample.0.weight"),
        vec![128, 64, 1, 1]
    );
    assert_eq!(find(&params, "encoder.visual.layer4.1.bn2.bias"), vec![512]);
    assert!(params
        .iter()
        .all(|(n, _)| !n.contains("fc") && !n.ends_with("conv1.bias")));
    assert!(!params
        .iter()
        .any(|(n, _)| n.starts_with("encoder.visual.layer1.0.downsample")));
    let buffers = net.buffer_shapes();
    assert_eq!(buffers.len(), 20 * 3);
    assert_eq!(
        find(&buffers, "encoder.visual.layer1.0.bn1.running_mean"),
        vec![64]
    );
    assert_eq!(
        find(&buffers, "encoder.visual.layer3.0.downsample.1.running_var"),
        vec![256]
    );
    assert_eq!(
        find(&buffers, "encoder.visual.bn1.num_batches_tracked"),
        Vec::<usize>::new()
    );
    assert_eq!(net.feature_size(), 512);
    // One input channel changes only the stem.
    let audio = ResNet::new("audio", ResNetKind::ResNet18, 1.0, &[1, 257, 188]).unwrap();
    let total: usize = audio
        .param_shapes()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(total, 11_176_512 - 64 * 2 * 49);
}

#[test]
fn width_multiplier_scales_every_stage() {
    let net = ResNet::new("image", ResNetKind::ResNet18Small, 0.25, &[1, 28, 28]).unwrap();
    assert_eq!(net.feature_size(), 128);
    let shapes = net.param_shapes();
    let get = |name: &str| shapes.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(get("encoder.image.conv1.weight"), vec![16, 1, 3, 3]);
    assert_eq!(
        get("encoder.image.layer2.0.conv1.weight"),
        vec![32, 16, 3, 3]
    );
    assert_eq!(
        get("encoder.image.layer3.0.downsample.0.weight"),
        vec![64, 32, 1, 1]
    );
    assert_eq!(
        get("encoder.image.layer4.1.conv2.weight"),
        vec![128, 128, 3, 3]
    );
}

/// Kaiming normal (fan_out, ReLU): std sqrt(2 / (oc * kh * kw)); batch norm
/// weight 1, bias 0, running mean 0, variance 1, no batches counted.
#[test]
fn initialisation_follows_torchvision() {
    let (_, params, buffers) = built(ResNetKind::ResNet18, 1.0, &[3, 32, 32]);
    for (name, fan_out) in [
        ("encoder.visual.layer4.0.conv2.weight", 512 * 9),
        ("encoder.visual.conv1.weight", 64 * 49),
        ("encoder.visual.layer3.0.downsample.0.weight", 256),
    ] {
        let w = params.get(name).unwrap().to_vec().unwrap();
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let want = (2.0 / fan_out as f64).sqrt();
        // Sampling error of the std is about want / sqrt(2 n).
        let tol = 5.0 * want / (2.0 * n).sqrt();
        assert!((std - want).abs() <= tol, "{name}: std {std} vs {want}");
        assert!(mean.abs() <= 5.0 * want / n.sqrt(), "{name}: mean {mean}");
    }
    assert!(params
        .get("encoder.visual.layer2.1.bn1.weight")
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .all(|&v| v == 1.0));
    assert!(params
        .get("encoder.visual.layer2.1.bn1.bias")
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    let rv = buffers
        .get("encoder.visual.layer2.1.bn1.running_var")
        .unwrap();
    assert!(rv.to_vec().unwrap().iter().all(|&v| v == 1.0));
    let rm = buffers
        .get("encoder.visual.layer2.1.bn1.running_mean")
        .unwrap();
    assert!(rm.to_vec().unwrap().iter().all(|&v| v == 0.0));
    assert_eq!(
        buffers
            .get("encoder.visual.bn1.num_batches_tracked")
            .unwrap()
            .to_vec()
            .unwrap(),
        vec![0.0]
    );
    // Same seed, same weights; the stream is per name.
    let (_, again, _) = built(ResNetKind::ResNet18, 1.0, &[3, 32, 32]);
    let name = "encoder.visual.layer1.0.conv1.weight";
    assert_eq!(
        params.get(name).unwrap().to_vec().unwrap(),
        again.get(name).unwrap().to_vec().unwrap()
    );
}

#[test]
fn output_shapes_and_buffer_updates() {
    let (net, params, buffers) = built(ResNetKind::ResNet18, 1.0, &[3, 32, 32]);
    let x = input(&[2, 3, 32, 32], 1);
    let (y, dims, updates) = run(&net, &params, &buffers, &x, Mode::Train);
    assert_eq!(dims, vec![2, 512]);
    assert!(
        y.iter().all(|v| v.is_finite() && *v >= 0.0),
        "features after relu + mean"
    );
    // Every batch norm updates its three buffers once, in training only.
    assert_eq!(updates.len(), 60);
    let mut names: Vec<&str> = updates.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    let want: Vec<String> = net.buffer_shapes().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let count = updates
        .iter()
        .find(|(n, _)| n == "encoder.visual.bn1.num_batches_tracked")
        .unwrap();
    assert_eq!(count.1, vec![1.0]);
    // The stem's running mean moved by 0.1 of the batch mean: not zero any more.
    let rm = &updates
        .iter()
        .find(|(n, _)| n == "encoder.visual.bn1.running_mean")
        .unwrap()
        .1;
    assert!(rm.iter().any(|&v| v != 0.0));
    let (_, _, none) = run(&net, &params, &buffers, &x, Mode::Eval);
    assert!(
        none.is_empty(),
        "evaluation must not touch the running statistics"
    );

    let (small, sp, sb) = built(ResNetKind::ResNet18Small, 0.25, &[1, 28, 28]);
    let (_, dims, _) = run(&small, &sp, &sb, &input(&[3, 1, 28, 28], 2), Mode::Train);
    assert_eq!(dims, vec![3, 128]);
}

/// In evaluation each frame is encoded on its own, so the features of a
/// `[batch, T, C, H, W]` input are the mean of the per-frame features.
#[test]
fn frames_are_encoded_separately_and_averaged() {
    let (net, params, mut buffers) = built(ResNetKind::ResNet18Small, 0.125, &[3, 2, 9, 9]);
    // Give the running statistics non-trivial values with one training pass.
    let x = input(&[2, 3, 2, 9, 9], 4);
    let tape = Tape::no_grad(&Cpu);
    let p = params.track(&tape, |_| false);
    let mut state = BufferState::new(Mode::Train, &buffers);
    net.forward(&p, &mut state, &tape.constant(x.clone()))
        .unwrap();
    let updates = state.into_updates();
    apply_updates(&mut buffers, updates).unwrap();
    assert_ne!(
        buffers
            .get("encoder.visual.bn1.running_var")
            .unwrap()
            .to_vec()
            .unwrap(),
        vec![1.0; 8]
    );

    let (y, dims, _) = run(&net, &params, &buffers, &x, Mode::Eval);
    assert_eq!(dims, vec![2, 64]);
    let single = ResNet::new("visual", ResNetKind::ResNet18Small, 0.125, &[2, 9, 9]).unwrap();
    let xv = x.to_vec().unwrap();
    let frame = 2 * 9 * 9;
    for b in 0..2 {
        let mut mean = vec![0.0f64; 64];
        for t in 0..3 {
            let start = (b * 3 + t) * frame;
            let f = Tensor::from_slice(&Cpu, &xv[start..start + frame], vec![1, 2, 9, 9]).unwrap();
            let (yf, _, _) = run(&single, &params, &buffers, &f, Mode::Eval);
            for (m, v) in mean.iter_mut().zip(yf) {
                *m += v as f64 / 3.0;
            }
        }
        for (j, m) in mean.iter().enumerate() {
            let got = y[b * 64 + j] as f64;
            assert!(
                (got - m).abs() <= 1e-5 * (1.0 + m.abs()),
                "sample {b} feature {j}: {got} vs {m}"
            );
        }
    }
}

#[test]
fn bad_configurations_and_inputs_are_errors() {
    for wm in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            ResNet::new("a", ResNetKind::ResNet18, wm, &[1, 8, 8]),
            Err(ModelError::Config(_))
        ));
    }
    for shape in [&[8, 8][..], &[1, 0, 8], &[2, 1, 2, 3, 4]] {
        assert!(matches!(
            ResNet::new("a", ResNetKind::ResNet18, 1.0, shape),
            Err(ModelError::BadInput { .. })
        ));
    }
    let (net, params, buffers) = built(ResNetKind::ResNet18Small, 0.125, &[1, 8, 8]);
    let tape = Tape::no_grad(&Cpu);
    let p = params.track(&tape, |_| false);
    let mut state = BufferState::new(Mode::Train, &buffers);
    let wrong = tape.constant(input(&[2, 3, 8, 8], 1));
    let err = net.forward(&p, &mut state, &wrong).unwrap_err();
    assert!(
        err.to_string()
            .contains("resnet18-small encoder for modality 'visual'"),
        "{err}"
    );
    // Training on one sample whose last stage is 1x1: one value per channel, as PyTorch refuses.
    let one = tape.constant(input(&[1, 1, 8, 8], 1));
    let err = net.forward(&p, &mut state, &one).unwrap_err();
    assert!(err.to_string().contains("batch_norm"), "{err}");
    let mut eval = BufferState::new(Mode::Eval, &buffers);
    assert_eq!(net.forward(&p, &mut eval, &one).unwrap().dims(), &[1, 64]);
    assert!("resnet18-small".parse::<ResNetKind>().is_ok());
    assert!("resnet19".parse::<ResNetKind>().is_err());
}

/// One training step's gradients reach every parameter (and no buffer).
#[test]
fn every_parameter_gets_a_gradient_in_training() {
    let (net, params, buffers) = built(ResNetKind::ResNet18Small, 0.125, &[2, 8, 8]);
    let tape = Tape::new(&Cpu);
    let p = params.track(&tape, |_| true);
    let mut state = BufferState::new(Mode::Train, &buffers);
    let y = net
        .forward(&p, &mut state, &tape.constant(input(&[3, 2, 8, 8], 9)))
        .unwrap();
    let w = tape.constant(input(&[3, 64], 10));
    let loss = y.mul(&w).unwrap().sum_all().unwrap();
    let grads = p.gradients(tape.backward(&loss).unwrap());
    let want: Vec<(String, Vec<usize>)> = net.param_shapes();
    assert_eq!(grads.len(), want.len());
    for ((name, g), (wname, wshape)) in grads.iter().zip(&want) {
        assert_eq!(name, wname);
        assert_eq!(g.dims(), wshape.as_slice(), "{name}");
        let v = g.to_vec().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}");
        assert!(
            v.iter().any(|&x| x != 0.0),
            "{name} got an all-zero gradient"
        );
    }
}

/// A batch-norm layer run twice in one pass compounds its updates (as
/// PyTorch's module does); `apply_updates` rejects a wrong buffer shape
/// without writing anything.
#[test]
fn repeated_layers_compound_and_bad_updates_are_refused() {
    use mla_models::layers::BatchNorm;
    let bn = BatchNorm::new("encoder.a.bn", 2);
    let (mut params, mut buffers) = (Store::new(&Cpu), Store::new(&Cpu));
    bn.init(&mut params, &mut buffers).unwrap();
    let tape = Tape::no_grad(&Cpu);
    let p = params.track(&tape, |_| false);
    let x =
        tape.constant(Tensor::from_slice(&Cpu, &[1.0f32, 10.0, 3.0, 20.0], vec![2, 2]).unwrap());
    let mut state = BufferState::new(Mode::Train, &buffers);
    bn.forward(&p, &mut state, &x).unwrap();
    bn.forward(&p, &mut state, &x).unwrap();
    let updates = state.into_updates();
    assert_eq!(updates.len(), 6);
    // Channel means 2 and 15: 0.1 * m, then 0.9 * 0.1 * m + 0.1 * m.
    let mean = updates[3].1.to_vec().unwrap();
    assert!(
        (mean[0] - 0.19 * 2.0).abs() < 1e-6 && (mean[1] - 0.19 * 15.0).abs() < 1e-5,
        "{mean:?}"
    );
    assert_eq!(updates[5].1.to_vec().unwrap(), vec![2.0]);
    let bad = vec![
        (
            "encoder.a.bn.running_mean".to_string(),
            Tensor::zeros(&Cpu, [2]).unwrap(),
        ),
        (
            "encoder.a.bn.running_var".to_string(),
            Tensor::zeros(&Cpu, [3]).unwrap(),
        ),
    ];
    assert!(apply_updates(&mut buffers, bad).is_err());
    assert_eq!(
        buffers
            .get("encoder.a.bn.running_var")
            .unwrap()
            .to_vec()
            .unwrap(),
        vec![1.0, 1.0]
    );
    apply_updates(&mut buffers, updates).unwrap();
    assert_eq!(
        buffers
            .get("encoder.a.bn.num_batches_tracked")
            .unwrap()
            .to_vec()
            .unwrap(),
        vec![2.0]
    );
}

/// A torchvision-named state dict (no prefix, with an `fc` classifier) whose
/// tensors come from a formula loads into the right parameters and buffers;
/// every missing, unexpected, repeated or wrongly shaped entry is listed in
/// one error and nothing is written.
#[test]
fn torchvision_state_dicts_load_with_every_name_checked() {
    let (net, mut params, mut buffers) = built(ResNetKind::ResNet18Small, 0.125, &[1, 8, 8]);
    let prefix = "encoder.visual.";
    let formula = |k: usize, dims: &[usize]| -> Tensor<f32, Cpu> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| 0.01 * ((i as f32) * 0.7).sin() + k as f32 * 1e-3)
            .collect();
        Tensor::from_slice(&Cpu, &v, dims.to_vec()).unwrap()
    };
    let mut dict: Vec<(String, Tensor<f32, Cpu>)> = net
        .param_shapes()
        .into_iter()
        .chain(net.buffer_shapes())
        .enumerate()
        .map(|(k, (n, s))| (n[prefix.len()..].to_string(), formula(k, &s)))
        .collect();
    dict.push(("fc.weight".into(), formula(0, &[10, 64])));
    dict.push(("fc.bias".into(), formula(0, &[10])));

    let mut broken = dict.clone();
    broken.retain(|(n, _)| n != "layer3.1.bn2.running_var");
    broken.push(("layer9.0.conv1.weight".into(), formula(0, &[1])));
    let i = broken
        .iter()
        .position(|(n, _)| n == "conv1.weight")
        .unwrap();
    broken[i].1 = formula(0, &[8, 3, 3, 3]);
    broken.push(("bn1.bias".into(), formula(0, &[8])));
    let before = params
        .get("encoder.visual.bn1.bias")
        .unwrap()
        .to_vec()
        .unwrap();
    let msg = net
        .load_torchvision(&mut params, &mut buffers, broken)
        .unwrap_err()
        .to_string();
    for needle in [
        "missing 'layer3.1.bn2.running_var'",
        "unexpected 'layer9.0.conv1.weight'",
        "'conv1.weight' has shape [8, 3, 3, 3], expected [8, 1, 3, 3]",
        "'bn1.bias' given twice",
        "modality 'visual'",
    ] {
        assert!(msg.contains(needle), "{needle} not in: {msg}");
    }
    assert_eq!(
        params
            .get("encoder.visual.bn1.bias")
            .unwrap()
            .to_vec()
            .unwrap(),
        before
    );

    net.load_torchvision(&mut params, &mut buffers, dict.clone())
        .unwrap();
    for (name, t) in &dict {
        if name.starts_with("fc.") {
            assert!(!params.contains(&format!("{prefix}{name}")));
            continue;
        }
        let full = format!("{prefix}{name}");
        let stored = if params.contains(&full) {
            params.get(&full)
        } else {
            buffers.get(&full)
        };
        assert_eq!(
            stored.unwrap().to_vec().unwrap(),
            t.to_vec().unwrap(),
            "{name}"
        );
    }
}
