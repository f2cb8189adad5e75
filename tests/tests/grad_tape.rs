//! What the tape records: nothing on a no-grad tape or for constants, one node
//! per op on tracked values, and the same forward values either way.

use mla_core::{Indices, Tape, Var};
use mla_cpu::Cpu;
use mla_models::rng::Rng;
use mla_tests::{distinct, tensor, uniform, V64};

/// A forward pass touching every op family; returns the output and the
/// intermediate values it wants compared.
fn forward<'t>(tape: &'t Tape<f64, Cpu>, seed: u64) -> Vec<V64<'t>> {
    let mut rng = Rng::new(seed);
    let x = tape.var(tensor(
        &distinct(&mut rng, 2 * 2 * 6 * 6, 0.05),
        &[2, 2, 6, 6],
    ));
    let w = tape.var(tensor(
        &uniform(&mut rng, 3 * 2 * 3 * 3, -1.0, 1.0),
        &[3, 2, 3, 3],
    ));
    let fc = tape.var(tensor(&uniform(&mut rng, 27 * 4, -1.0, 1.0), &[27, 4]));
    let labels = Indices::new(&Cpu, &[1, 3]).unwrap();
    let h = x.conv2d(&w, 1, 1).unwrap().relu().unwrap();
    let m = h.max_pool2d(2, 2).unwrap();
    let a = h.avg_pool2d(2, 2).unwrap().sigmoid().unwrap();
    let g = h.global_avg_pool2d().unwrap().flatten().unwrap();
    let f = m.add(&a).unwrap().flatten().unwrap();
    let logits = f.matmul(&fc).unwrap().tanh().unwrap();
    let both = Var::concat(&[&logits, &g], 1).unwrap();
    let picked = both
        .gather_rows(&Indices::new(&Cpu, &[1, 0, 1]).unwrap())
        .unwrap()
        .narrow(1, 1, 4)
        .unwrap();
    let ce = logits.cross_entropy(&labels).unwrap();
    let ent = logits.entropy().unwrap().mean_all().unwrap();
    let sm = picked
        .softmax()
        .unwrap()
        .sqr()
        .unwrap()
        .sum_axis(0, false)
        .unwrap();
    let loss = ce
        .add(&ent)
        .unwrap()
        .add(&sm.mean_axis(0, true).unwrap())
        .unwrap()
        .exp()
        .unwrap();
    vec![h, m, a, g, logits, both, picked, ce, ent, sm, loss]
}

#[test]
fn no_grad_tape_records_nothing_and_matches_forward() {
    let grad = Tape::new(&Cpu);
    let recorded = forward(&grad, 3);
    assert!(grad.len() > recorded.len(), "a grad tape records each op");
    assert!(recorded.iter().all(|v| v.is_tracked()));

    let plain = Tape::no_grad(&Cpu);
    let values = forward(&plain, 3);
    assert_eq!(plain.len(), 0);
    assert!(plain.is_empty());
    assert!(values.iter().all(|v| !v.is_tracked()));
    for (i, (a, b)) in recorded.iter().zip(&values).enumerate() {
        assert_eq!(a.dims(), b.dims(), "value {i}");
        assert_eq!(
            a.value().to_vec().unwrap(),
            b.value().to_vec().unwrap(),
            "value {i} differs between tapes"
        );
    }
}

#[test]
fn constants_and_detached_values_record_nothing() {
    let tape = Tape::new(&Cpu);
    let c = tape.constant(tensor(&[1.0, -2.0, 3.0, 4.0], &[2, 2]));
    let y = c.matmul(&c).unwrap().relu().unwrap().sum_all().unwrap();
    assert_eq!(tape.len(), 0);
    assert!(!y.is_tracked());

    let x = tape.var(tensor(&[0.5, 1.5], &[1, 2]));
    assert_eq!(tape.len(), 1);
    let d = x.sqr().unwrap().detach();
    assert_eq!(tape.len(), 2);
    let z = d.exp().unwrap().mul(&x).unwrap().sum_all().unwrap();
    assert_eq!(tape.len(), 4, "only ops with a tracked input are recorded");
    // d is detached: dz/dx = exp(x^2), not exp(x^2) * (1 + 2 x^2).
    let g = tape.backward(&z).unwrap();
    let got = g.get(&x).unwrap().to_vec().unwrap();
    for (gv, xv) in got.iter().zip([0.5f64, 1.5]) {
        assert!(
            mla_tests::close(*gv, (xv * xv).exp()),
            "{gv} vs {}",
            (xv * xv).exp()
        );
    }
    assert!(g.get(&d).is_none());
}
