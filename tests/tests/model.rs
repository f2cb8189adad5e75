//! Model library: encoder shapes, spec parsing, seeded init, tape behaviour,
//! gradients of a whole model against f64 finite differences.

use mla_core::{Indices, Tape, Tensor};
use mla_cpu::Cpu;
use mla_models::encoders::{parse_encoder_spec, Encoder, EncoderKind};
use mla_models::init::InitScheme;
use mla_models::model::{scatter_rows, HeadKind, Model, ModelSpec, HEAD_BIAS, HEAD_WEIGHT};
use mla_models::rng::Rng;
use mla_models::ModelError;
use proptest::prelude::*;

fn avmnist_spec(enc: EncoderKind, head: HeadKind) -> ModelSpec {
    ModelSpec::new(
        vec![
            ("image".into(), vec![1, 28, 28]),
            ("audio".into(), vec![1, 40, 63]),
        ],
        vec![enc, enc],
        10,
        head,
    )
}

fn random<T: mla_cpu::CpuFloat>(shape: &[usize], seed: u64) -> Tensor<T, Cpu> {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<T> = (0..n).map(|_| T::lit(rng.normal())).collect();
    Tensor::from_slice(&Cpu, &v, shape.to_vec()).unwrap()
}

#[test]
fn cnn_encoders_on_avmnist_shapes() {
    let model: Model<Cpu> =
        Model::new(&Cpu, avmnist_spec(EncoderKind::Cnn, HeadKind::Shared), 0).unwrap();
    assert_eq!(model.encoder("image").unwrap().flatten_size(), 3136);
    assert_eq!(model.encoder("audio").unwrap().flatten_size(), 9600);
    let tape = Tape::no_grad(&Cpu);
    let p = model.track(&tape, |_| false);
    for (m, shape) in [("image", [2, 1, 28, 28]), ("audio", [2, 1, 40, 63])] {
        let x = tape.constant(random(&shape, 1));
        let h = model.features(&p, m, &x).unwrap();
        assert_eq!(h.dims(), &[2, 128]);
        assert!(
            h.value().to_vec().unwrap().iter().all(|&v| v >= 0.0),
            "features end with a ReLU"
        );
        let z = model.head_logits(&p, &h).unwrap();
        assert_eq!(z.dims(), &[2, 10]);
    }
    assert_eq!(tape.len(), 0, "a no-grad tape records nothing");
    let names: Vec<&str> = model.params().names().collect();
    assert_eq!(
        names,
        [
            "encoder.audio.conv1.bias",
            "encoder.audio.conv1.weight",
            "encoder.audio.conv2.bias",
            "encoder.audio.conv2.weight",
            "encoder.audio.fc.bias",
            "encoder.audio.fc.weight",
            "encoder.image.conv1.bias",
            "encoder.image.conv1.weight",
            "encoder.image.conv2.bias",
            "encoder.image.conv2.weight",
            "encoder.image.fc.bias",
            "encoder.image.fc.weight",
            "head.bias",
            "head.weight",
        ]
    );
    assert_eq!(
        model
            .params()
            .get("encoder.audio.fc.weight")
            .unwrap()
            .dims(),
        &[128, 9600]
    );
    assert_eq!(
        model
            .params()
            .get("encoder.image.conv2.weight")
            .unwrap()
            .dims(),
        &[64, 32, 3, 3]
    );
    assert_eq!(model.params().get(HEAD_WEIGHT).unwrap().dims(), &[10, 128]);
}

#[test]
fn mlp_accepts_any_shape_and_checks_it() {
    for shape in [vec![7], vec![3, 5], vec![1, 40, 63], vec![2, 3, 4, 5]] {
        let spec = ModelSpec {
            feature_size: 16,
            ..ModelSpec::new(
                vec![("x".into(), shape.clone())],
                vec![EncoderKind::Mlp],
                4,
                HeadKind::Single,
            )
        };
        let model: Model<Cpu> = Model::new(&Cpu, spec, 3).unwrap();
        let tape = Tape::no_grad(&Cpu);
        let p = model.track(&tape, |_| true);
        let mut xs = vec![5];
        xs.extend(&shape);
        let h = model
            .features(&p, "x", &tape.constant(random(&xs, 2)))
            .unwrap();
        assert_eq!(h.dims(), &[5, 16]);
        // A batch of the wrong per-sample shape is refused with the expected shape named.
        let mut wrong = xs.clone();
        *wrong.last_mut().unwrap() += 1;
        let err = model
            .features(&p, "x", &tape.constant(random(&wrong, 2)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mlp encoder for modality 'x'") && err.contains("expected input [batch,"),
            "{err}"
        );
    }
}

#[test]
fn cnn_rejects_bad_input_shapes_clearly() {
    let err = Encoder::new("audio", EncoderKind::Cnn, &[40, 63], 128, 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cnn encoder for modality 'audio'")
            && err.contains("[channels, height, width]"),
        "{err}"
    );
    let err = Encoder::new("tiny", EncoderKind::Cnn, &[1, 3, 9], 128, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 4"), "{err}");
    // Smallest accepted plane, odd sizes rounded down: 5x7 -> 2x3 -> 1x1.
    let e = Encoder::new("ok", EncoderKind::Cnn, &[2, 5, 7], 8, 1.0).unwrap();
    assert_eq!(e.flatten_size(), 64);
    let model: Model<Cpu> =
        Model::new(&Cpu, avmnist_spec(EncoderKind::Cnn, HeadKind::Shared), 0).unwrap();
    let tape = Tape::no_grad(&Cpu);
    let p = model.track(&tape, |_| false);
    let err = model
        .features(&p, "image", &tape.constant(random(&[2, 28, 28], 1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected input [batch, 1, 28, 28]") && err.contains("[2, 28, 28]"),
        "{err}"
    );
    let err = model
        .features(&p, "video", &tape.constant(random(&[2, 1, 28, 28], 1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown modality 'video'") && err.contains("image, audio"),
        "{err}"
    );
}

#[test]
fn encoder_spec_parser() {
    let mods = ["image", "audio"];
    assert_eq!(
        parse_encoder_spec("mlp", &mods).unwrap(),
        vec![EncoderKind::Mlp; 2]
    );
    assert_eq!(
        parse_encoder_spec(" CNN ", &mods).unwrap(),
        vec![EncoderKind::Cnn; 2]
    );
    assert_eq!(
        parse_encoder_spec("audio=mlp, image=cnn", &mods).unwrap(),
        vec![EncoderKind::Cnn, EncoderKind::Mlp]
    );
    let cases: [(&str, &[&str]); 7] = [
        ("rnn", &["unknown encoder 'rnn'", "mlp, cnn"]),
        (
            "image=cnn,audio=lstm",
            &["unknown encoder 'lstm'", "mlp, cnn"],
        ),
        (
            "image=cnn,video=mlp",
            &["unknown modality 'video'", "image, audio"],
        ),
        ("image=cnn", &["no encoder for modality audio"]),
        (
            "image=cnn,image=mlp,audio=cnn",
            &["'image' given more than once"],
        ),
        ("image=cnn,audio", &["'audio' is not MODALITY=ENCODER"]),
        ("  ", &["empty"]),
    ];
    for (spec, needles) in cases {
        let err = parse_encoder_spec(spec, &mods).unwrap_err().to_string();
        for n in needles {
            assert!(err.contains(n), "spec {spec:?}: {err:?} lacks {n:?}");
        }
    }
    assert!(matches!(
        "gru".parse::<EncoderKind>(),
        Err(ModelError::UnknownName { .. })
    ));
}

#[test]
fn model_spec_errors() {
    let mut s = avmnist_spec(EncoderKind::Mlp, HeadKind::Single);
    let err = Model::<Cpu>::new(&Cpu, s.clone(), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("exactly one modality"), "{err}");
    s.head = HeadKind::Shared;
    s.encoders.pop();
    assert!(Model::<Cpu>::new(&Cpu, s.clone(), 0)
        .err()
        .unwrap()
        .to_string()
        .contains("1 encoders given for 2 modalities"));
    let mut s = avmnist_spec(EncoderKind::Mlp, HeadKind::Shared);
    s.modalities[1].0 = "image".into();
    assert!(Model::<Cpu>::new(&Cpu, s, 0)
        .err()
        .unwrap()
        .to_string()
        .contains("listed twice"));
    let mut s = avmnist_spec(EncoderKind::Mlp, HeadKind::Shared);
    s.modalities[1].0 = "a.b".into();
    assert!(Model::<Cpu>::new(&Cpu, s, 0)
        .err()
        .unwrap()
        .to_string()
        .contains("'a.b'"));
}

#[test]
fn init_is_seeded_and_within_torch_bounds() {
    let spec = avmnist_spec(EncoderKind::Cnn, HeadKind::Shared);
    let a: Model<Cpu> = Model::new(&Cpu, spec.clone(), 42).unwrap();
    let b: Model<Cpu> = Model::new(&Cpu, spec.clone(), 42).unwrap();
    let c: Model<Cpu> = Model::new(&Cpu, spec.clone(), 43).unwrap();
    for (name, t) in a.params().iter() {
        let va = t.to_vec().unwrap();
        assert_eq!(
            va,
            b.params().get(name).unwrap().to_vec().unwrap(),
            "{name} differs for the same seed"
        );
        assert_ne!(
            va,
            c.params().get(name).unwrap().to_vec().unwrap(),
            "{name} equal for different seeds"
        );
        // Torch default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        let wshape = a
            .params()
            .get(&name.replace(".bias", ".weight"))
            .unwrap()
            .dims()
            .to_vec();
        let fan_in: usize = wshape[1..].iter().product();
        let bound = 1.0 / (fan_in as f32).sqrt();
        assert!(
            va.iter().all(|v| v.abs() <= bound),
            "{name} outside +-{bound}"
        );
        let max = va.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.5 * bound, "{name} does not fill its range");
    }
    // Adding a modality leaves the others' initial values alone (per-name streams).
    let one = ModelSpec::new(
        vec![("image".into(), vec![1, 28, 28])],
        vec![EncoderKind::Cnn],
        10,
        HeadKind::Shared,
    );
    let d: Model<Cpu> = Model::new(&Cpu, one, 42).unwrap();
    for (name, t) in d.params().iter() {
        assert_eq!(
            t.to_vec().unwrap(),
            a.params().get(name).unwrap().to_vec().unwrap(),
            "{name}"
        );
    }
    // Kaiming / Xavier scheme: zero biases, ReLU-gain bounds.
    let k: Model<Cpu> = Model::new(
        &Cpu,
        ModelSpec {
            init: InitScheme::KaimingXavier,
            ..spec
        },
        1,
    )
    .unwrap();
    assert!(k
        .params()
        .get(HEAD_BIAS)
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    let w = k
        .params()
        .get("encoder.image.fc.weight")
        .unwrap()
        .to_vec()
        .unwrap();
    let bound = (6.0f32 / 3136.0).sqrt();
    assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.9 * bound));
}

#[test]
fn training_tape_tracks_only_the_active_modality_and_head() {
    let spec = ModelSpec {
        feature_size: 8,
        ..avmnist_spec(EncoderKind::Mlp, HeadKind::Shared)
    };
    let model: Model<Cpu> = Model::new(&Cpu, spec, 0).unwrap();
    let tape = Tape::new(&Cpu);
    let p = model.track(&tape, Model::<Cpu>::step_trainable("audio"));
    assert!(p.is_tracked("encoder.audio.fc1.weight") && p.is_tracked(HEAD_WEIGHT));
    assert!(!p.is_tracked("encoder.image.fc1.weight"));
    let x = tape.constant(random(&[3, 1, 40, 63], 5));
    let h = model.features(&p, "audio", &x).unwrap();
    let loss = model
        .head_logits(&p, &h)
        .unwrap()
        .cross_entropy(&Indices::new(&Cpu, &[1, 2, 3]).unwrap())
        .unwrap();
    let g = p.gradients(tape.backward(&loss).unwrap());
    let names: Vec<&str> = g.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "encoder.audio.fc1.bias",
            "encoder.audio.fc1.weight",
            "encoder.audio.fc2.bias",
            "encoder.audio.fc2.weight",
            "head.bias",
            "head.weight"
        ]
    );
    for (n, t) in &g {
        assert_eq!(t.dims(), model.params().get(n).unwrap().dims());
    }
}

/// Loss of a small two-modality model (f64) as a function of its parameters.
type NamedGrads = Vec<(String, Tensor<f64, Cpu>)>;

fn small_loss(
    model: &Model<Cpu, f64>,
    xs: &[Tensor<f64, Cpu>; 2],
    y: &Indices<f64, Cpu>,
    grads: bool,
) -> (f64, NamedGrads) {
    let tape = Tape::new(&Cpu);
    let p = model.track(&tape, |_| grads);
    let mut loss = None;
    for (m, x) in ["a", "b"].iter().zip(xs) {
        let h = model.features(&p, m, &tape.constant(x.clone())).unwrap();
        let l = model.head_logits(&p, &h).unwrap().cross_entropy(y).unwrap();
        loss = Some(match loss {
            None => l,
            Some(acc) => l.add(&acc).unwrap(),
        });
    }
    let loss = loss.unwrap();
    let v = loss.value().to_scalar().unwrap();
    if !grads {
        return (v, vec![]);
    }
    (v, p.gradients(tape.backward(&loss).unwrap()))
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    let spec = ModelSpec {
        feature_size: 5,
        ..ModelSpec::new(
            vec![("a".into(), vec![2, 6, 5]), ("b".into(), vec![3, 4])],
            vec![EncoderKind::Cnn, EncoderKind::Mlp],
            3,
            HeadKind::Shared,
        )
    };
    let mut model: Model<Cpu, f64> = Model::new(&Cpu, spec, 9).unwrap();
    let xs = [
        random::<f64>(&[2, 2, 6, 5], 11),
        random::<f64>(&[2, 3, 4], 12),
    ];
    let y = Indices::new(&Cpu, &[2, 0]).unwrap();
    let (_, grads) = small_loss(&model, &xs, &y, true);
    assert_eq!(grads.len(), model.params().len());
    let mut rng = Rng::new(3);
    for (name, g) in &grads {
        let g = g.to_vec().unwrap();
        let base = model.params().get(name).unwrap().clone();
        let v0 = base.to_vec().unwrap();
        for _ in 0..4 {
            let i = rng.below(v0.len());
            let eps = 1e-6;
            let mut eval = |d: f64| {
                let mut v = v0.clone();
                v[i] += d;
                model
                    .params_mut()
                    .set(
                        name,
                        Tensor::from_slice(&Cpu, &v, base.dims().to_vec()).unwrap(),
                    )
                    .unwrap();
                small_loss(&model, &xs, &y, false).0
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{name}[{i}]: fd {fd} vs autodiff {}",
                g[i]
            );
        }
        model.params_mut().set(name, base).unwrap();
    }
}

#[test]
fn joint_slices_sum_to_the_joint_logits() {
    let spec = ModelSpec {
        feature_size: 6,
        ..avmnist_spec(EncoderKind::Mlp, HeadKind::Concat)
    };
    let model: Model<Cpu, f64> = Model::new(&Cpu, spec, 1).unwrap();
    assert_eq!(model.params().get(HEAD_WEIGHT).unwrap().dims(), &[10, 12]);
    let tape = Tape::no_grad(&Cpu);
    let p = model.track(&tape, |_| false);
    let hi = model
        .features(&p, "image", &tape.constant(random(&[4, 1, 28, 28], 1)))
        .unwrap();
    let ha = model
        .features(&p, "audio", &tape.constant(random(&[4, 1, 40, 63], 2)))
        .unwrap();
    let joint = model
        .joint_logits(&p, &[&hi, &ha])
        .unwrap()
        .value()
        .to_vec()
        .unwrap();
    let si = model
        .modality_logits(&p, "image", &hi)
        .unwrap()
        .value()
        .to_vec()
        .unwrap();
    let sa = model
        .modality_logits(&p, "audio", &ha)
        .unwrap()
        .value()
        .to_vec()
        .unwrap();
    // Slice logits carry b / M each (BASELINES.md section 1), so they sum
    // to the fused logits; each is its slice's product plus half the bias.
    let b = model.params().get(HEAD_BIAS).unwrap().to_vec().unwrap();
    let zero = Tensor::<f64, Cpu>::zeros(&Cpu, hi.dims().to_vec()).unwrap();
    let without_audio = model
        .joint_logits(&p, &[&hi, &tape.constant(zero)])
        .unwrap()
        .value()
        .to_vec()
        .unwrap();
    for r in 0..4 {
        for c in 0..10 {
            let k = r * 10 + c;
            assert!((si[k] + sa[k] - joint[k]).abs() < 1e-12);
            assert!((si[k] + b[c] / 2.0 - without_audio[k]).abs() < 1e-12);
        }
    }
    assert!(model.joint_logits(&p, &[&hi]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Present rows land at their positions, the rest are zero, and the
    /// gradient reaches exactly the present rows.
    #[test]
    fn scatter_rows_places_present_rows(batch in 1usize..8, mask in proptest::collection::vec(any::<bool>(), 8), seed in 0u64..1000) {
        let positions: Vec<usize> = (0..batch).filter(|&i| mask[i]).collect();
        let n = positions.len();
        let h = random::<f64>(&[n, 3], seed);
        let tape = Tape::new(&Cpu);
        let hv = tape.var(h.clone());
        let out = scatter_rows(&hv, &positions, batch).unwrap();
        prop_assert_eq!(out.dims(), &[batch, 3]);
        let (o, hh) = (out.value().to_vec().unwrap(), h.to_vec().unwrap());
        for i in 0..batch {
            let row = &o[i * 3..i * 3 + 3];
            match positions.iter().position(|&p| p == i) {
                Some(k) => prop_assert_eq!(row, &hh[k * 3..k * 3 + 3]),
                None => prop_assert!(row.iter().all(|&v| v == 0.0)),
            }
        }
        if n > 0 {
            let w = tape.constant(random::<f64>(&[batch, 3], seed + 1));
            let loss = out.mul(&w).unwrap().sum_all().unwrap();
            let g = tape.backward(&loss).unwrap().get(&hv).unwrap().to_vec().unwrap();
            let wv = w.value().to_vec().unwrap();
            for (k, &p) in positions.iter().enumerate() {
                prop_assert_eq!(&g[k * 3..k * 3 + 3], &wv[p * 3..p * 3 + 3]);
            }
        }
    }
}

/// The pieces together: alternating unimodal steps through the shared head
/// with HGM and SGD learn a synthetic two-modality task, fusion beats chance
/// by far, and a parameter snapshot taken before training stays as it was.
#[test]
fn mla_steps_learn_a_synthetic_task() {
    use mla_models::fusion::{fuse_tensors, Fusion};
    use mla_models::hgm::{Hgm, HgmMode};
    use mla_models::optim::{OptimConfig, Optimizer};

    let classes = 3;
    let spec = ModelSpec {
        feature_size: 16,
        ..ModelSpec::new(
            vec![("a".into(), vec![1, 8, 8]), ("b".into(), vec![6])],
            vec![EncoderKind::Cnn, EncoderKind::Mlp],
            classes,
            HeadKind::Shared,
        )
    };
    let mut model: Model<Cpu> = Model::new(&Cpu, spec, 0).unwrap();
    let snapshot = model.params().clone();
    let before: Vec<Vec<f32>> = snapshot.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    let mut rng = Rng::new(1);
    // Class c: modality a has a bright 4x4 quadrant c, modality b a shifted mean on coordinate c.
    let sample = |rng: &mut Rng| {
        let y = rng.below(classes);
        let a: Vec<f32> = (0..64)
            .map(|k| {
                let (r, c) = (k / 8, k % 8);
                let quad = (r / 4) * 2 + c / 4;
                (if quad == y { 1.0 } else { 0.0 } + 0.5 * rng.normal()) as f32
            })
            .collect();
        let b: Vec<f32> = (0..6)
            .map(|j| (if j == y { 1.5 } else { 0.0 } + rng.normal()) as f32)
            .collect();
        (a, b, y as u32)
    };
    let batch = |rng: &mut Rng, n: usize| {
        let (mut xa, mut xb, mut ys) = (vec![], vec![], vec![]);
        for _ in 0..n {
            let (a, b, y) = sample(rng);
            xa.extend(a);
            xb.extend(b);
            ys.push(y);
        }
        (
            Tensor::<f32, Cpu>::from_slice(&Cpu, &xa, [n, 1, 8, 8]).unwrap(),
            Tensor::<f32, Cpu>::from_slice(&Cpu, &xb, [n, 6]).unwrap(),
            ys,
        )
    };
    let mut hgm: Hgm<Cpu> = Hgm::new(&Cpu, HgmMode::Owm, 10.0, 16, &["a", "b"]).unwrap();
    let mut opt: Optimizer<Cpu> = Optimizer::new(OptimConfig {
        lr: 0.05,
        ..OptimConfig::default()
    })
    .unwrap();
    for _ in 0..80 {
        let (xa, xb, ys) = batch(&mut rng, 16);
        let labels = Indices::new(&Cpu, &ys).unwrap();
        for (m, x) in [("a", &xa), ("b", &xb)] {
            let tape = Tape::new(&Cpu);
            let p = model.track(&tape, Model::<Cpu>::step_trainable(m));
            let h = model.features(&p, m, &tape.constant(x.clone())).unwrap();
            let loss = model
                .head_logits(&p, &h)
                .unwrap()
                .cross_entropy(&labels)
                .unwrap();
            let mut grads = p.gradients(tape.backward(&loss).unwrap());
            hgm.apply(m, h.value(), &mut grads).unwrap();
            opt.step(model.params_mut(), &grads).unwrap();
        }
    }
    let (xa, xb, ys) = batch(&mut rng, 300);
    let tape = Tape::no_grad(&Cpu);
    let p = model.track(&tape, |_| false);
    let za = model
        .modality_logits(
            &p,
            "a",
            &model.features(&p, "a", &tape.constant(xa)).unwrap(),
        )
        .unwrap();
    let zb = model
        .modality_logits(
            &p,
            "b",
            &model.features(&p, "b", &tape.constant(xb)).unwrap(),
        )
        .unwrap();
    let all: Vec<usize> = (0..300).collect();
    let acc = |pred: Vec<usize>| {
        pred.iter()
            .zip(&ys)
            .filter(|(p, y)| **p == **y as usize)
            .count() as f64
            / 300.0
    };
    let fused = fuse_tensors(
        &Fusion::Entropy,
        300,
        &[(za.value(), &all), (zb.value(), &all)],
    )
    .unwrap();
    let alone = |z: &mla_core::Var<'_, f32, Cpu>| {
        acc(fuse_tensors(&Fusion::Mean, 300, &[(z.value(), &all)])
            .unwrap()
            .predictions())
    };
    let (fa, ia, ib) = (acc(fused.predictions()), alone(&za), alone(&zb));
    eprintln!(
        "fused {fa}, a {ia}, b {ib}, fractions {:?}",
        hgm.fraction_stats().unwrap()
    );
    assert!(
        fa > 0.85 && ia > 0.6 && ib > 0.6,
        "fused {fa}, a {ia}, b {ib}"
    );
    let stats = hgm.fraction_stats().unwrap();
    assert!(
        stats
            .iter()
            .all(|s| s.steps == 80 && s.mean > 0.0 && s.mean < 1.0),
        "{stats:?}"
    );
    let after: Vec<Vec<f32>> = snapshot.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    assert_eq!(
        before, after,
        "a snapshot changed when the live parameters were stepped"
    );
    assert_ne!(
        model.params().get(HEAD_WEIGHT).unwrap().to_vec().unwrap(),
        snapshot.get(HEAD_WEIGHT).unwrap().to_vec().unwrap()
    );
}

/// The `cnn` encoder applies each ReLU after its max-pool (cheaper); MLA.md
/// specifies ReLU then pool. The two must agree exactly: features and every
/// parameter's and the input's gradient, on inputs with many negative
/// windows (the ReLU's zeros) and ties.
#[test]
fn cnn_encoder_equals_relu_then_pool_exactly() {
    let spec = ModelSpec::new(
        vec![("a".into(), vec![2, 12, 10])],
        vec![EncoderKind::Cnn],
        4,
        HeadKind::Shared,
    );
    let model: Model<Cpu> = Model::new(&Cpu, spec, 5).unwrap();
    let mut x = random::<f32>(&[3, 2, 12, 10], 21).to_vec().unwrap();
    // Ties: a block of equal values, and windows of equal negatives.
    for v in x.iter_mut().skip(7).take(9) {
        *v = 0.5;
    }
    for v in x.iter_mut().skip(40).take(12) {
        *v = -0.25;
    }
    let x = Tensor::from_slice(&Cpu, &x, vec![3, 2, 12, 10]).unwrap();
    let run = |reference: bool| {
        let tape = Tape::new(&Cpu);
        let p = model.track(&tape, |_| true);
        let xv = tape.var(x.clone());
        let h = if reference {
            let w1 = p.get("encoder.a.conv1.weight").unwrap();
            let b1 = p.get("encoder.a.conv1.bias").unwrap();
            let h = xv.conv2d_bias(w1, Some(b1), 1, 1).unwrap();
            let h = h.relu().unwrap().max_pool2d(2, 2).unwrap();
            let w2 = p.get("encoder.a.conv2.weight").unwrap();
            let b2 = p.get("encoder.a.conv2.bias").unwrap();
            let h = h.conv2d_bias(w2, Some(b2), 1, 1).unwrap();
            let h = h.relu().unwrap().max_pool2d(2, 2).unwrap();
            let h = h.flatten().unwrap();
            let w = p.get("encoder.a.fc.weight").unwrap();
            let b = p.get("encoder.a.fc.bias").unwrap();
            h.matmul_t(w, false, true)
                .unwrap()
                .add(b)
                .unwrap()
                .relu()
                .unwrap()
        } else {
            model.features(&p, "a", &xv).unwrap()
        };
        let feats = h.value().to_vec().unwrap();
        // A loss that weighs every feature differently.
        let wts: Vec<f32> = (0..feats.len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let wts = tape.constant(Tensor::from_slice(&Cpu, &wts, h.dims().to_vec()).unwrap());
        let loss = h.mul(&wts).unwrap().sum_all().unwrap();
        let grads = tape.backward(&loss).unwrap();
        let gx = grads.get(&xv).unwrap().to_vec().unwrap();
        let gp: Vec<(String, Vec<f32>)> = p
            .gradients(grads)
            .into_iter()
            .map(|(n, g)| (n, g.to_vec().unwrap()))
            .collect();
        (feats, gx, gp)
    };
    let (f0, gx0, gp0) = run(true);
    let (f1, gx1, gp1) = run(false);
    assert!(f0.iter().any(|&v| v == 0.0) && f0.iter().any(|&v| v > 0.0));
    assert_eq!(f0, f1, "features");
    assert!(gx0.iter().any(|&v| v != 0.0));
    assert_eq!(gx0, gx1, "input gradient");
    assert_eq!(gp0.len(), 6);
    for ((n0, g0), (n1, g1)) in gp0.iter().zip(&gp1) {
        assert_eq!(n0, n1);
        assert_eq!(g0, g1, "gradient of {n0}");
    }
}
