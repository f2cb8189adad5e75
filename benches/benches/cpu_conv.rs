//! conv2d forward and forward+backward on the CPU backend at the AV-MNIST `cnn`
//! encoder's shapes (batch 64): conv3x3(C->32, pad 1), ReLU, maxpool 2,
//! conv3x3(32->64, pad 1), ReLU, maxpool 2, flatten, linear(->128), ReLU.
//!
//! Throughput is in FLOP (criterion prints it as elem/s): 2 * n * oc * c*kh*kw * oh*ow
//! per GEMM, counting only the GEMMs (im2col, col2im, the bias, ReLU and pooling
//! are extra work inside the timed region). Run: `cargo bench -p mla-benches --bench cpu_conv`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mla_benches::values;
use mla_core::{Tape, Tensor};
use mla_cpu::Cpu;
use std::time::Duration;

type T32 = Tensor<f32, Cpu>;

fn tensor(seed: u64, dims: &[usize], scale: f32) -> T32 {
    T32::from_slice(
        &Cpu,
        &values(seed, dims.iter().product(), scale),
        dims.to_vec(),
    )
    .unwrap()
}

/// GEMM flops of one 3x3 / pad 1 / stride 1 convolution (output plane = input plane).
fn conv_flops(x: &[usize], oc: usize) -> u64 {
    let [n, c, h, w] = [x[0], x[1], x[2], x[3]];
    2 * (n * oc * c * 9 * h * w) as u64
}

struct ConvLayer {
    name: &'static str,
    x: [usize; 4],
    oc: usize,
    /// Whether the layer's input needs a gradient (false for the first layer: it is data).
    input_grad: bool,
}

const LAYERS: [ConvLayer; 4] = [
    ConvLayer {
        name: "image_conv1",
        x: [64, 1, 28, 28],
        oc: 32,
        input_grad: false,
    },
    ConvLayer {
        name: "image_conv2",
        x: [64, 32, 14, 14],
        oc: 64,
        input_grad: true,
    },
    ConvLayer {
        name: "audio_conv1",
        x: [64, 1, 40, 63],
        oc: 32,
        input_grad: false,
    },
    ConvLayer {
        name: "audio_conv2",
        x: [64, 32, 20, 31],
        oc: 64,
        input_grad: true,
    },
];

fn conv_layers(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for l in &LAYERS {
        let x = tensor(1, &l.x, 1.0);
        let w = tensor(2, &[l.oc, l.x[1], 3, 3], 0.2);
        let f = conv_flops(&l.x, l.oc);
        g.throughput(Throughput::Elements(f));
        g.bench_function(format!("{}/fwd", l.name), |b| {
            b.iter(|| x.conv2d(&w, 1, 1).unwrap())
        });
        // Backward: the weight gradient always, the input gradient when the layer has one.
        let gemms = if l.input_grad { 3 } else { 2 };
        g.throughput(Throughput::Elements(gemms * f));
        g.bench_function(format!("{}/fwd+bwd", l.name), |b| {
            b.iter(|| {
                let tape = Tape::new(&Cpu);
                let xv = if l.input_grad {
                    tape.var(x.clone())
                } else {
                    tape.constant(x.clone())
                };
                let wv = tape.var(w.clone());
                let loss = xv.conv2d(&wv, 1, 1).unwrap().sum_all().unwrap();
                tape.backward(&loss).unwrap()
            })
        });
    }
    g.finish();
}

/// The whole `cnn` encoder, forward + backward, as in one MLA step for one modality.
fn encoders(c: &mut Criterion) {
    let mut g = c.benchmark_group("cnn_encoder");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(15);
    for (name, x_dims, flat) in [
        ("image", [64usize, 1, 28, 28], 64 * 7 * 7),
        ("audio", [64, 1, 40, 63], 64 * 10 * 15),
    ] {
        let (h, w) = (x_dims[2], x_dims[3]);
        let x = tensor(3, &x_dims, 1.0);
        let w1 = tensor(4, &[32, 1, 3, 3], 0.5);
        let b1 = tensor(5, &[32, 1, 1], 0.1);
        let w2 = tensor(6, &[64, 32, 3, 3], 0.08);
        let b2 = tensor(7, &[64, 1, 1], 0.1);
        let wf = tensor(8, &[128, flat], 0.02);
        let bf = tensor(9, &[128], 0.1);
        let f1 = conv_flops(&x_dims, 32);
        let f2 = conv_flops(&[64, 32, h / 2, w / 2], 64);
        let ff = 2 * (64 * flat * 128) as u64;
        g.throughput(Throughput::Elements(2 * f1 + 3 * f2 + 3 * ff));
        g.bench_function(format!("{name}/fwd+bwd"), |b| {
            b.iter(|| {
                let tape = Tape::new(&Cpu);
                let xv = tape.constant(x.clone());
                let p: Vec<_> = [&w1, &b1, &w2, &b2, &wf, &bf]
                    .iter()
                    .map(|t| tape.var((*t).clone()))
                    .collect();
                let h1 = xv
                    .conv2d(&p[0], 1, 1)
                    .unwrap()
                    .add(&p[1])
                    .unwrap()
                    .relu()
                    .unwrap()
                    .max_pool2d(2, 2)
                    .unwrap();
                let h2 = h1
                    .conv2d(&p[2], 1, 1)
                    .unwrap()
                    .add(&p[3])
                    .unwrap()
                    .relu()
                    .unwrap()
                    .max_pool2d(2, 2)
                    .unwrap();
                let z = h2
                    .flatten()
                    .unwrap()
                    .matmul_t(&p[4], false, true)
                    .unwrap()
                    .add(&p[5])
                    .unwrap()
                    .relu()
                    .unwrap();
                let loss = z.sum_all().unwrap();
                tape.backward(&loss).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, conv_layers, encoders);
criterion_main!(benches);
