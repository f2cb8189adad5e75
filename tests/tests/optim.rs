//! Optimizers against hand-written f64 references (PyTorch semantics);
//! inactive parameters keep their values and state; state round-trips.

use mla_core::Tensor;
use mla_cpu::{Cpu, CpuFloat};
use mla_models::optim::{OptimConfig, Optimizer, OptimizerKind};
use mla_models::params::ParamStore;
use mla_models::rng::Rng;
use proptest::prelude::*;

fn tensor<T: CpuFloat>(v: &[f64], shape: &[usize]) -> Tensor<T, Cpu> {
    let v: Vec<T> = v.iter().map(|&x| T::lit(x)).collect();
    Tensor::from_slice(&Cpu, &v, shape.to_vec()).unwrap()
}

fn host<T: CpuFloat>(t: &Tensor<T, Cpu>) -> Vec<f64> {
    t.to_vec().unwrap().iter().map(|x| x.as_f64()).collect()
}

fn gaussian(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// Reference state of one parameter.
#[derive(Clone, Default)]
struct RefSlot {
    buf: Option<Vec<f64>>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

/// PyTorch's SGD (dampening 0) and Adam/AdamW, written out per element.
fn ref_step(cfg: &OptimConfig, p: &mut [f64], g: &[f64], st: &mut RefSlot) {
    let n = p.len();
    match cfg.kind {
        OptimizerKind::Sgd => {
            let d: Vec<f64> = (0..n).map(|i| g[i] + cfg.weight_decay * p[i]).collect();
            if cfg.momentum == 0.0 {
                for i in 0..n {
                    p[i] -= cfg.lr * d[i];
                }
                return;
            }
            let buf = match st.buf.take() {
                None => d.clone(),
                Some(b) => (0..n).map(|i| cfg.momentum * b[i] + d[i]).collect(),
            };
            for i in 0..n {
                let step = if cfg.nesterov {
                    d[i] + cfg.momentum * buf[i]
                } else {
                    buf[i]
                };
                p[i] -= cfg.lr * step;
            }
            st.buf = Some(buf);
        }
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            if st.m.is_empty() {
                st.m = vec![0.0; n];
                st.v = vec![0.0; n];
            }
            st.t += 1;
            for i in 0..n {
                let mut gi = g[i];
                if cfg.kind == OptimizerKind::AdamW {
                    p[i] *= 1.0 - cfg.lr * cfg.weight_decay;
                } else {
                    gi += cfg.weight_decay * p[i];
                }
                st.m[i] = cfg.beta1 * st.m[i] + (1.0 - cfg.beta1) * gi;
                st.v[i] = cfg.beta2 * st.v[i] + (1.0 - cfg.beta2) * gi * gi;
                let mhat = st.m[i] / (1.0 - cfg.beta1.powi(st.t));
                let vhat = st.v[i] / (1.0 - cfg.beta2.powi(st.t));
                p[i] -= cfg.lr * mhat / (vhat.sqrt() + cfg.eps);
            }
        }
    }
}

const NAMES: [&str; 3] = ["encoder.a.w", "encoder.b.w", "head.weight"];
const SHAPES: [&[usize]; 3] = [&[3, 2], &[4], &[2, 3]];

fn configs() -> Vec<OptimConfig> {
    let base = OptimConfig::default();
    vec![
        base,
        OptimConfig {
            momentum: 0.0,
            ..base
        },
        OptimConfig {
            nesterov: true,
            weight_decay: 0.01,
            lr: 0.05,
            ..base
        },
        OptimConfig {
            kind: OptimizerKind::Adam,
            lr: 1e-2,
            weight_decay: 0.01,
            ..base
        },
        OptimConfig {
            kind: OptimizerKind::AdamW,
            lr: 1e-2,
            weight_decay: 0.1,
            beta1: 0.8,
            beta2: 0.99,
            ..base
        },
    ]
}

fn store<T: CpuFloat>(init: &[Vec<f64>]) -> ParamStore<Cpu, T> {
    let mut s = ParamStore::new(&Cpu);
    for ((n, shape), v) in NAMES.iter().zip(SHAPES).zip(init) {
        s.insert(*n, tensor::<T>(v, shape)).unwrap();
    }
    s
}

/// Alternating MLA-style steps: each step updates one encoder plus the head.
/// Runs the optimizer and the reference side by side; returns the optimizer.
fn run<T: CpuFloat>(
    cfg: OptimConfig,
    seed: u64,
    steps: usize,
    tol: f64,
) -> (Optimizer<Cpu, T>, ParamStore<Cpu, T>) {
    let mut rng = Rng::new(seed);
    let init: Vec<Vec<f64>> = SHAPES
        .iter()
        .map(|s| gaussian(&mut rng, s.iter().product()))
        .collect();
    let mut params = store::<T>(&init);
    let mut opt = Optimizer::<Cpu, T>::new(cfg).unwrap();
    let mut ref_p = init.clone();
    let mut ref_s = vec![RefSlot::default(); 3];
    for step in 0..steps {
        let active = [step % 2, 2];
        let mut grads = Vec::new();
        for &k in &active {
            let g = gaussian(&mut rng, ref_p[k].len());
            ref_step(&cfg, &mut ref_p[k], &g, &mut ref_s[k]);
            grads.push((NAMES[k].to_string(), tensor::<T>(&g, SHAPES[k])));
        }
        let inactive = 1 - step % 2;
        let before = host(params.get(NAMES[inactive]).unwrap());
        opt.step(&mut params, &grads).unwrap();
        assert_eq!(
            host(params.get(NAMES[inactive]).unwrap()),
            before,
            "inactive parameter moved"
        );
        for k in 0..3 {
            let got = host(params.get(NAMES[k]).unwrap());
            for (a, b) in got.iter().zip(&ref_p[k]) {
                assert!(
                    (a - b).abs() <= tol * (1.0 + b.abs()),
                    "{:?} step {step} {}: {a} vs reference {b}",
                    cfg.kind,
                    NAMES[k]
                );
            }
        }
    }
    (opt, params)
}

#[test]
fn optimizers_match_f64_reference() {
    for cfg in configs() {
        run::<f64>(cfg, 1, 8, 1e-12);
        run::<f32>(cfg, 2, 8, 2e-5);
    }
}

#[test]
fn inactive_parameters_get_no_state_and_no_step_count() {
    for cfg in configs() {
        let (opt, _) = run::<f64>(cfg, 3, 5, 1e-12);
        // Steps 0, 2, 4 were a's, 1 and 3 b's, the head took all five.
        let names: Vec<String> = opt.state().tensors.iter().map(|(n, _)| n.clone()).collect();
        match cfg.kind {
            OptimizerKind::Sgd if cfg.momentum == 0.0 => assert!(names.is_empty()),
            OptimizerKind::Sgd => assert_eq!(names.len(), 3),
            _ => {
                assert_eq!(
                    (
                        opt.param_steps(NAMES[0]),
                        opt.param_steps(NAMES[1]),
                        opt.param_steps(NAMES[2])
                    ),
                    (3, 2, 5)
                );
            }
        }
        // A parameter never given a gradient has no state at all.
        let mut rng = Rng::new(4);
        let init: Vec<Vec<f64>> = SHAPES
            .iter()
            .map(|s| gaussian(&mut rng, s.iter().product()))
            .collect();
        let mut params = store::<f64>(&init);
        let mut opt = Optimizer::<Cpu, f64>::new(cfg).unwrap();
        for _ in 0..3 {
            let g = vec![(
                NAMES[0].to_string(),
                tensor::<f64>(&gaussian(&mut rng, 6), SHAPES[0]),
            )];
            opt.step(&mut params, &g).unwrap();
        }
        let st = opt.state();
        assert!(
            st.tensors.iter().all(|(n, _)| n.ends_with(NAMES[0])),
            "{cfg:?}"
        );
        assert!(st.scalars.iter().all(|(n, _)| n.ends_with(NAMES[0])));
        assert_eq!(host(params.get(NAMES[1]).unwrap()), init[1]);
        assert_eq!(opt.param_steps(NAMES[1]), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    /// Export after k steps, load into a fresh optimizer, continue: bit-identical to never stopping.
    #[test]
    fn state_round_trip_is_bit_identical(which in 0usize..5, k in 1usize..6, seed in any::<u64>()) {
        let cfg = configs()[which];
        let mut rng = Rng::new(seed);
        let init: Vec<Vec<f64>> = SHAPES.iter().map(|s| gaussian(&mut rng, s.iter().product())).collect();
        let grads: Vec<Vec<(String, Tensor<f32, Cpu>)>> = (0..k + 4)
            .map(|step| {
                [step % 2, 2].iter().map(|&i| (NAMES[i].to_string(), tensor::<f32>(&gaussian(&mut rng, SHAPES[i].iter().product()), SHAPES[i]))).collect()
            })
            .collect();
        let mut a_params = store::<f32>(&init);
        let mut a = Optimizer::<Cpu, f32>::new(cfg).unwrap();
        for g in &grads[..k] {
            a.step(&mut a_params, g).unwrap();
        }
        // "Checkpoint": copy values through the host, as a file would.
        let st = a.state();
        let mut copied = st.clone();
        for (_, t) in copied.tensors.iter_mut() {
            *t = Tensor::from_slice(&Cpu, &t.to_vec().unwrap(), t.dims().to_vec()).unwrap();
        }
        let mut b_params = store::<f32>(&a_params.iter().map(|(_, t)| host(t)).collect::<Vec<_>>());
        // store() inserts in NAMES order, which is also sorted order.
        let mut b = Optimizer::<Cpu, f32>::new(cfg).unwrap();
        b.load_state(&b_params, &copied).unwrap();
        for g in &grads[k..] {
            a.step(&mut a_params, g).unwrap();
            b.step(&mut b_params, g).unwrap();
        }
        for n in NAMES {
            prop_assert_eq!(a_params.get(n).unwrap().to_vec().unwrap(), b_params.get(n).unwrap().to_vec().unwrap());
        }
    }
}

#[test]
fn bad_steps_and_bad_state_are_refused_without_side_effects() {
    let mut rng = Rng::new(8);
    let init: Vec<Vec<f64>> = SHAPES
        .iter()
        .map(|s| gaussian(&mut rng, s.iter().product()))
        .collect();
    let mut params = store::<f32>(&init);
    let mut opt = Optimizer::<Cpu, f32>::new(OptimConfig::default()).unwrap();
    let good = (NAMES[0].to_string(), tensor::<f32>(&[1.0; 6], SHAPES[0]));
    let cases = [
        (
            vec![
                good.clone(),
                ("encoder.c.w".to_string(), tensor::<f32>(&[1.0], &[1])),
            ],
            "no parameter named 'encoder.c.w'",
        ),
        (
            vec![
                good.clone(),
                (NAMES[1].to_string(), tensor::<f32>(&[1.0; 3], &[3])),
            ],
            "expected shape [4], got [3]",
        ),
        (
            vec![good.clone(), good.clone()],
            "two gradients for parameter 'encoder.a.w'",
        ),
    ];
    for (grads, needle) in cases {
        let err = opt.step(&mut params, &grads).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
        assert_eq!(
            host(params.get(NAMES[0]).unwrap()),
            host(&tensor::<f32>(&init[0], SHAPES[0])),
            "a refused step moved a parameter"
        );
        assert!(opt.state().tensors.is_empty());
    }
    opt.step(&mut params, std::slice::from_ref(&good)).unwrap();
    let sgd_state = opt.state();
    let mut adam = Optimizer::<Cpu, f32>::new(OptimConfig {
        kind: OptimizerKind::Adam,
        ..OptimConfig::default()
    })
    .unwrap();
    let err = adam
        .load_state(&params, &sgd_state)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not adam state"), "{err}");
    adam.step(&mut params, &[good]).unwrap();
    let mut adam_state = adam.state();
    let err = opt
        .load_state(&params, &adam_state)
        .unwrap_err()
        .to_string();
    assert!(err.contains("optimizer is SGD"), "{err}");
    adam_state.scalars.clear();
    let mut fresh = Optimizer::<Cpu, f32>::new(OptimConfig {
        kind: OptimizerKind::Adam,
        ..OptimConfig::default()
    })
    .unwrap();
    assert!(fresh
        .load_state(&params, &adam_state)
        .unwrap_err()
        .to_string()
        .contains("no step count"));
    let mut other = ParamStore::<Cpu, f32>::new(&Cpu);
    other
        .insert(NAMES[0], tensor::<f32>(&[0.0; 6], &[6]))
        .unwrap();
    assert!(opt
        .load_state(&other, &sgd_state)
        .unwrap_err()
        .to_string()
        .contains("expected shape [6], got [3, 2]"));
    // Configuration errors.
    assert!(Optimizer::<Cpu, f32>::new(OptimConfig {
        lr: -1.0,
        ..OptimConfig::default()
    })
    .is_err());
    assert!(Optimizer::<Cpu, f32>::new(OptimConfig {
        momentum: 0.0,
        nesterov: true,
        ..OptimConfig::default()
    })
    .is_err());
    assert!("rmsprop"
        .parse::<OptimizerKind>()
        .unwrap_err()
        .to_string()
        .contains("sgd, adam, adamw"));
}
