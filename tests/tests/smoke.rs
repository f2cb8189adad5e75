use mla_core::{Indices, Tape, Tensor};
use mla_cpu::Cpu;

type T64 = Tensor<f64, Cpu>;

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn loss_fn(x: &T64, w: &T64, w2: &T64, labels: &Indices<f64, Cpu>) -> (f64, Vec<f64>) {
    let cpu = Cpu;
    let tape = Tape::new(&cpu);
    let wv = tape.var(w.clone());
    let xv = tape.constant(x.clone());
    let w2v = tape.var(w2.clone());
    let h = xv
        .conv2d(&wv, 1, 1)
        .unwrap()
        .relu()
        .unwrap()
        .max_pool2d(2, 2)
        .unwrap()
        .flatten()
        .unwrap();
    let logits = h.matmul_t(&w2v, false, true).unwrap();
    let loss = logits.cross_entropy(labels).unwrap();
    let g = tape.backward(&loss).unwrap();
    (
        loss.value().to_scalar().unwrap(),
        g.get(&wv).unwrap().to_vec().unwrap(),
    )
}

#[test]
fn conv_mlp_gradient_matches_finite_differences() {
    let cpu = Cpu;
    let mut s = 7;
    let x: Vec<f64> = (0..2 * 2 * 6 * 5).map(|_| lcg(&mut s)).collect();
    let w: Vec<f64> = (0..3 * 2 * 3 * 3).map(|_| lcg(&mut s)).collect();
    let w2: Vec<f64> = (0..4 * 3 * 3 * 2).map(|_| lcg(&mut s)).collect();
    let x = T64::from_slice(&cpu, &x, [2, 2, 6, 5]).unwrap();
    let w2 = T64::from_slice(&cpu, &w2, [4, 18]).unwrap();
    let labels = Indices::new(&cpu, &[1, 3]).unwrap();
    let wt = T64::from_slice(&cpu, &w, [3, 2, 3, 3]).unwrap();
    let (_, g) = loss_fn(&x, &wt, &w2, &labels);
    for i in 0..w.len() {
        let eps = 1e-6;
        let mut wp = w.clone();
        wp[i] += eps;
        let mut wm = w.clone();
        wm[i] -= eps;
        let lp = loss_fn(
            &x,
            &T64::from_slice(&cpu, &wp, [3, 2, 3, 3]).unwrap(),
            &w2,
            &labels,
        )
        .0;
        let lm = loss_fn(
            &x,
            &T64::from_slice(&cpu, &wm, [3, 2, 3, 3]).unwrap(),
            &w2,
            &labels,
        )
        .0;
        let fd = (lp - lm) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
            "i={i} fd={fd} g={}",
            g[i]
        );
    }
}
