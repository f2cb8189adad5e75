//! Error paths: every op given mismatched shapes or invalid arguments returns
//! an error naming the op and the shapes involved; tape misuse is an
//! `Error::Autodiff`. Nothing here may panic.

use mla_core::{Error, Indices, Result, Shape, Tape, Tensor, Var};
use mla_cpu::Cpu;
use std::fmt::Debug;

type T32 = Tensor<f32, Cpu>;

fn t(dims: &[usize]) -> T32 {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    T32::from_slice(&Cpu, &data, dims.to_vec()).unwrap()
}

fn idx(v: &[u32]) -> Indices<f32, Cpu> {
    Indices::new(&Cpu, v).unwrap()
}

/// Asserts `r` failed in `op` with every shape in `shapes` (written as `[2, 3]`) in its message.
#[track_caller]
fn expect<V: Debug>(r: Result<V>, op: &str, shapes: &[&[usize]]) {
    let err = match r {
        Ok(v) => panic!("{op}: expected an error, got {v:?}"),
        Err(e) => e,
    };
    assert_eq!(err.op(), Some(op), "wrong op in: {err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{op}:")),
        "message does not lead with the op: {msg}"
    );
    for s in shapes {
        assert!(
            msg.contains(&format!("{s:?}")),
            "message lacks shape {s:?}: {msg}"
        );
    }
}

#[track_caller]
fn expect_autodiff<V>(r: Result<V>, needle: &str) {
    match r {
        Ok(_) => panic!("expected an autodiff error mentioning {needle:?}"),
        Err(e @ Error::Autodiff(_)) => {
            assert!(
                e.to_string().contains(needle),
                "autodiff error {e} lacks {needle:?}"
            );
            assert_eq!(e.op(), None);
        }
        Err(e) => panic!("expected Error::Autodiff, got {e}"),
    }
}

#[test]
fn matmul_mismatches_name_both_shapes() {
    let tape = Tape::new(&Cpu);
    let v = |d: &[usize]| tape.var(t(d));
    expect(
        v(&[2, 3]).matmul(&v(&[4, 5])),
        "matmul",
        &[&[2, 3], &[4, 5]],
    );
    expect(
        v(&[3, 2]).matmul_t(&v(&[4, 5]), true, false),
        "matmul",
        &[&[3, 2], &[4, 5]],
    );
    expect(
        v(&[2, 3]).matmul_t(&v(&[5, 4]), false, true),
        "matmul",
        &[&[2, 3], &[5, 4]],
    );
    expect(
        v(&[3, 2]).matmul_t(&v(&[3, 2]), true, true),
        "matmul",
        &[&[3, 2]],
    );
    expect(
        v(&[2, 3, 4]).matmul(&v(&[4, 5])),
        "matmul",
        &[&[2, 3, 4], &[4, 5]],
    );
    expect(v(&[4]).matmul(&v(&[4, 5])), "matmul", &[&[4], &[4, 5]]);
    expect(t(&[2, 3]).matmul(&t(&[2, 3])), "matmul", &[&[2, 3]]);
    expect(t(&[2, 3, 1]).t(), "transpose", &[&[2, 3, 1]]);
}

#[test]
fn binary_mismatches_name_op_and_shapes() {
    let tape = Tape::new(&Cpu);
    let (a, b) = (tape.var(t(&[2, 3])), tape.var(t(&[4])));
    expect(a.add(&b), "add", &[&[2, 3], &[4]]);
    expect(a.sub(&b), "sub", &[&[2, 3], &[4]]);
    expect(a.mul(&b), "mul", &[&[2, 3], &[4]]);
    expect(a.div(&b), "div", &[&[2, 3], &[4]]);
    let c = tape.constant(t(&[3, 2]));
    expect(c.add(&a), "add", &[&[3, 2], &[2, 3]]);
    expect(
        t(&[2, 1, 3]).mul(&t(&[4, 2])),
        "mul",
        &[&[2, 1, 3], &[4, 2]],
    );
}

#[test]
fn operands_from_different_tapes_are_rejected_by_the_op() {
    let (t1, t2) = (Tape::new(&Cpu), Tape::new(&Cpu));
    let (a, b) = (t1.var(t(&[2, 2])), t2.var(t(&[2, 2])));
    expect(a.matmul(&b), "matmul", &[&[2, 2]]);
    expect(a.add(&b), "add", &[&[2, 2]]);
    expect(a.div(&b), "div", &[&[2, 2]]);
    expect(Var::concat(&[&a, &b], 0), "concat", &[&[2, 2]]);
    let (x, w) = (t1.var(t(&[1, 1, 3, 3])), t2.var(t(&[1, 1, 2, 2])));
    expect(
        x.conv2d(&w, 1, 0),
        "conv2d",
        &[&[1, 1, 3, 3], &[1, 1, 2, 2]],
    );
}

#[test]
fn reductions_reject_bad_axes() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[2, 3]));
    expect(x.sum_axis(2, false), "sum_axis", &[&[2, 3]]);
    expect(x.sum_axis(7, true), "sum_axis", &[&[2, 3]]);
    expect(x.mean_axis(2, false), "mean_axis", &[&[2, 3]]);
    expect(tape.var(t(&[])).sum_axis(0, false), "sum_axis", &[&[]]);
}

#[test]
fn layout_ops_reject_bad_arguments() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[2, 3]));
    expect(x.reshape([4]), "reshape", &[&[2, 3], &[4]]);
    expect(x.reshape([3, 3]), "reshape", &[&[2, 3], &[3, 3]]);
    expect(tape.var(t(&[])).flatten(), "flatten", &[&[]]);
    expect(x.narrow(1, 2, 2), "narrow", &[&[2, 3]]);
    expect(x.narrow(2, 0, 1), "narrow", &[&[2, 3]]);
    expect(x.narrow(0, usize::MAX, 2), "narrow", &[&[2, 3]]);
    expect(x.narrow(0, 1, usize::MAX), "narrow", &[&[2, 3]]);
    expect(
        x.broadcast_to(&Shape::new([3, 3])),
        "broadcast_to",
        &[&[2, 3], &[3, 3]],
    );
    expect(
        x.broadcast_to(&Shape::new([3])),
        "broadcast_to",
        &[&[2, 3], &[3]],
    );
    expect(
        x.broadcast_to(&Shape::new([2, 3, 2])),
        "broadcast_to",
        &[&[2, 3], &[2, 3, 2]],
    );

    let y = tape.var(t(&[2, 4]));
    expect(Var::concat(&[&x, &y], 0), "concat", &[&[2, 3], &[2, 4]]);
    expect(Var::concat(&[&x, &x], 2), "concat", &[&[2, 3]]);
    let z = tape.var(t(&[2, 3, 1]));
    expect(Var::concat(&[&x, &z], 1), "concat", &[&[2, 3], &[2, 3, 1]]);
    expect(Var::<f32, Cpu>::concat(&[], 0), "concat", &[]);
    expect(T32::concat(&[], 0), "concat", &[]);
}

#[test]
fn gather_rows_rejects_out_of_range_indices() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[3, 2]));
    expect(
        x.gather_rows(&idx(&[0, 3])),
        "gather_rows",
        &[&[3, 2], &[2]],
    );
    expect(x.gather_rows(&idx(&[u32::MAX])), "gather_rows", &[&[3, 2]]);
    expect(
        tape.var(t(&[])).gather_rows(&idx(&[0])),
        "gather_rows",
        &[&[]],
    );
}

#[test]
fn conv2d_rejects_bad_geometry() {
    let tape = Tape::new(&Cpu);
    let v = |d: &[usize]| tape.var(t(d));
    let x = v(&[1, 2, 5, 5]);
    expect(
        x.conv2d(&v(&[3, 3, 3, 3]), 1, 0),
        "conv2d",
        &[&[1, 2, 5, 5], &[3, 3, 3, 3]],
    );
    expect(
        v(&[2, 5, 5]).conv2d(&v(&[3, 2, 3, 3]), 1, 0),
        "conv2d",
        &[&[2, 5, 5], &[3, 2, 3, 3]],
    );
    expect(
        x.conv2d(&v(&[3, 2, 3]), 1, 0),
        "conv2d",
        &[&[1, 2, 5, 5], &[3, 2, 3]],
    );
    expect(
        x.conv2d(&v(&[3, 2, 3, 3]), 0, 0),
        "conv2d",
        &[&[1, 2, 5, 5], &[3, 2, 3, 3]],
    );
    expect(
        x.conv2d(&v(&[3, 2, 6, 3]), 1, 0),
        "conv2d",
        &[&[1, 2, 5, 5], &[3, 2, 6, 3]],
    );
    expect(
        x.conv2d(&v(&[3, 2, 3, 8]), 1, 1),
        "conv2d",
        &[&[1, 2, 5, 5], &[3, 2, 3, 8]],
    );
    expect(
        x.conv2d(&v(&[0, 2, 3, 3]), 1, 0),
        "conv2d",
        &[&[1, 2, 5, 5], &[0, 2, 3, 3]],
    );
    expect(
        x.conv2d(&v(&[3, 2, 0, 3]), 1, 0),
        "conv2d",
        &[&[1, 2, 5, 5], &[3, 2, 0, 3]],
    );
    // Padding so large the output size overflows must be an error, not a wrap-around.
    expect(
        x.conv2d(&v(&[3, 2, 3, 3]), 1, usize::MAX / 2),
        "conv2d",
        &[&[1, 2, 5, 5]],
    );
    // An input without channels has nothing to convolve.
    expect(
        v(&[1, 0, 5, 5]).conv2d(&v(&[3, 0, 3, 3]), 1, 0),
        "conv2d",
        &[&[1, 0, 5, 5], &[3, 0, 3, 3]],
    );
}

#[test]
fn pools_reject_bad_geometry() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[1, 2, 4, 3]));
    expect(x.max_pool2d(4, 1), "max_pool2d", &[&[1, 2, 4, 3]]);
    expect(x.max_pool2d(0, 1), "max_pool2d", &[&[1, 2, 4, 3]]);
    expect(x.max_pool2d(2, 0), "max_pool2d", &[&[1, 2, 4, 3]]);
    expect(
        tape.var(t(&[2, 4, 3])).max_pool2d(2, 2),
        "max_pool2d",
        &[&[2, 4, 3]],
    );
    expect(x.avg_pool2d(4, 1), "avg_pool2d", &[&[1, 2, 4, 3]]);
    expect(x.avg_pool2d(0, 1), "avg_pool2d", &[&[1, 2, 4, 3]]);
    expect(x.avg_pool2d(2, 0), "avg_pool2d", &[&[1, 2, 4, 3]]);
    expect(
        tape.var(t(&[4, 3])).avg_pool2d(2, 2),
        "avg_pool2d",
        &[&[4, 3]],
    );
    expect(
        tape.var(t(&[4, 3])).global_avg_pool2d(),
        "global_avg_pool2d",
        &[&[4, 3]],
    );
    expect(
        t(&[4, 3]).global_avg_pool2d(),
        "global_avg_pool2d",
        &[&[4, 3]],
    );
}

#[test]
fn padded_max_pool_rejects_bad_padding() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[1, 2, 4, 3]));
    // More than half the kernel: a window could lie wholly in the padding.
    expect(x.max_pool2d_pad(3, 2, 2), "max_pool2d", &[&[1, 2, 4, 3]]);
    expect(x.max_pool2d_pad(1, 1, 1), "max_pool2d", &[&[1, 2, 4, 3]]);
    expect(
        t(&[1, 2, 4, 3]).max_pool2d_pad(2, 0, 1),
        "max_pool2d",
        &[&[1, 2, 4, 3]],
    );
    // Padding makes a kernel larger than the plane fit, as in PyTorch.
    assert_eq!(x.max_pool2d_pad(5, 1, 2).unwrap().dims(), &[1, 2, 4, 3]);
    assert_eq!(x.max_pool2d_pad(3, 2, 1).unwrap().dims(), &[1, 2, 2, 2]);
    expect(
        tape.var(t(&[1, 2, 0, 3])).global_avg_pool2d(),
        "global_avg_pool2d",
        &[&[1, 2, 0, 3]],
    );
}

#[test]
fn conv2d_bias_must_match_the_output_channels() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[1, 2, 5, 5]));
    let w = tape.var(t(&[3, 2, 3, 3]));
    let bad = tape.var(t(&[2]));
    let before = tape.len();
    expect(
        x.conv2d_bias(&w, Some(&bad), 1, 0),
        "conv2d",
        &[&[1, 2, 5, 5], &[3, 2, 3, 3], &[2]],
    );
    assert_eq!(tape.len(), before, "a rejected bias must record nothing");
    expect(
        x.conv2d_bias(&w, Some(&tape.var(t(&[2]))), 1, 0),
        "conv2d",
        &[&[1, 2, 5, 5], &[3, 2, 3, 3], &[2]],
    );
    expect(
        x.conv2d_bias(&w, Some(&tape.var(t(&[1, 3, 1, 1]))), 1, 0),
        "conv2d",
        &[&[1, 3, 1, 1]],
    );
    let y = x.conv2d_bias(&w, Some(&tape.var(t(&[3]))), 2, 1).unwrap();
    assert_eq!(y.dims(), &[1, 3, 3, 3]);
    assert_eq!(x.conv2d_bias(&w, None, 2, 1).unwrap().dims(), &[1, 3, 3, 3]);
}

#[test]
fn batch_norm_rejects_bad_shapes_and_settings() {
    use mla_core::{BatchNormConfig, BatchNormStats};
    let tape = Tape::new(&Cpu);
    let cfg = BatchNormConfig::default();
    let stats = |c: usize| BatchNormStats::new(&Cpu, c).unwrap();
    let x = tape.var(t(&[2, 3, 4, 4]));
    let (w3, b3) = (tape.var(t(&[3])), tape.var(t(&[3])));
    let (w2, b2) = (tape.var(t(&[2])), tape.var(t(&[2])));
    expect(
        x.batch_norm_train(&w2, &b2, &stats(2), &cfg),
        "batch_norm",
        &[&[2, 3, 4, 4], &[2]],
    );
    expect(
        x.batch_norm_train(&w3, &b3, &stats(2), &cfg),
        "batch_norm",
        &[&[2, 3, 4, 4], &[3], &[2]],
    );
    expect(
        x.batch_norm_eval(&w3, &tape.var(t(&[3, 1])), &stats(3), &cfg),
        "batch_norm",
        &[&[2, 3, 4, 4], &[3, 1]],
    );
    expect(
        tape.var(t(&[6]))
            .batch_norm_train(&w3, &b3, &stats(3), &cfg),
        "batch_norm",
        &[&[6], &[3]],
    );
    // One value per channel: no unbiased variance (PyTorch refuses too) ...
    expect(
        tape.var(t(&[1, 3]))
            .batch_norm_train(&w3, &b3, &stats(3), &cfg),
        "batch_norm",
        &[&[1, 3], &[3]],
    );
    // ... but evaluation is fine.
    let y = tape
        .var(t(&[1, 3]))
        .batch_norm_eval(&w3, &b3, &stats(3), &cfg)
        .unwrap();
    assert_eq!(y.dims(), &[1, 3]);
    for bad in [
        BatchNormConfig {
            momentum: 1.5,
            ..cfg
        },
        BatchNormConfig {
            momentum: f64::NAN,
            ..cfg
        },
        BatchNormConfig { eps: 0.0, ..cfg },
        BatchNormConfig { eps: -1.0, ..cfg },
    ] {
        expect(
            x.batch_norm_train(&w3, &b3, &stats(3), &bad),
            "batch_norm",
            &[&[2, 3, 4, 4]],
        );
    }
    expect(
        x.value()
            .batch_norm_train(w3.value(), b2.value(), &stats(3), &cfg)
            .map(|o| o.out),
        "batch_norm",
        &[&[2, 3, 4, 4], &[2]],
    );
}

#[test]
fn dropout_rejects_bad_probabilities() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[2, 5]));
    let mut zero = || 0.0;
    for p in [-0.1, 1.5, f64::NAN] {
        expect(x.dropout(p, true, &mut zero), "dropout", &[&[2, 5]]);
        // Checked in evaluation too, so a bad setting is caught before training.
        expect(x.dropout(p, false, &mut zero), "dropout", &[&[2, 5]]);
        expect(x.value().dropout(p, true, &mut zero), "dropout", &[&[2, 5]]);
    }
}

#[test]
fn softmax_family_rejects_bad_inputs() {
    let tape = Tape::new(&Cpu);
    expect(tape.var(t(&[])).softmax(), "softmax", &[&[]]);
    expect(tape.var(t(&[2, 0])).softmax(), "softmax", &[&[2, 0]]);
    expect(tape.var(t(&[])).log_softmax(), "log_softmax", &[&[]]);
    expect(
        tape.var(t(&[3, 0])).log_softmax(),
        "log_softmax",
        &[&[3, 0]],
    );
    expect(tape.var(t(&[])).entropy(), "entropy", &[&[]]);
    expect(tape.var(t(&[2, 0])).entropy(), "entropy", &[&[2, 0]]);

    let logits = tape.var(t(&[3, 4]));
    expect(
        logits.cross_entropy(&idx(&[0, 1])),
        "cross_entropy",
        &[&[3, 4], &[2]],
    );
    expect(
        logits.cross_entropy(&idx(&[0, 1, 4])),
        "cross_entropy",
        &[&[3, 4]],
    );
    expect(
        tape.var(t(&[3, 4, 1])).cross_entropy(&idx(&[0, 1, 2])),
        "cross_entropy",
        &[&[3, 4, 1]],
    );
    expect(
        tape.var(t(&[4])).cross_entropy(&idx(&[0])),
        "cross_entropy",
        &[&[4]],
    );
    expect(
        tape.var(t(&[0, 4])).cross_entropy(&idx(&[])),
        "cross_entropy",
        &[&[0, 4]],
    );
    expect(
        tape.var(t(&[2, 0])).cross_entropy(&idx(&[0, 0])),
        "cross_entropy",
        &[&[2, 0]],
    );
}

#[test]
fn constructors_reject_bad_arguments() {
    expect(
        T32::from_slice(&Cpu, &[1.0, 2.0, 3.0], [2, 2]),
        "from_slice",
        &[&[2, 2]],
    );
    expect(t(&[2]).to_scalar(), "to_scalar", &[&[2]]);
    expect(t(&[0]).to_scalar(), "to_scalar", &[&[0]]);
    if usize::BITS > 32 {
        let too_big = u32::MAX as usize + 1;
        expect(
            Indices::<f32, Cpu>::from_usize(&Cpu, &[too_big]).map(|i| i.len()),
            "indices",
            &[],
        );
    }
}

#[test]
fn backward_misuse_is_an_autodiff_error() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[2, 3]));
    expect_autodiff(tape.backward(&x), "one-element");
    expect_autodiff(tape.backward(&tape.constant(t(&[]))), "does not depend");

    let ng = Tape::no_grad(&Cpu);
    let y = ng.var(t(&[2, 3])).sum_all().unwrap();
    expect_autodiff(ng.backward(&y), "no-grad");

    let loss = x.sqr().unwrap().sum_all().unwrap();
    let other = Tape::new(&Cpu);
    expect_autodiff(other.backward(&loss), "another tape");

    assert!(tape.backward(&loss).is_ok());
    expect_autodiff(tape.backward(&loss), "twice");
}

/// After a backward pass the tape is spent; new vars on it must not be
/// confused with the spent ones, and old values cannot sneak into a new graph.
#[test]
fn spent_tape_never_aliases_old_and_new_vars() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[2]));
    let loss = x.sum_all().unwrap();
    let g1 = tape.backward(&loss).unwrap();
    assert_eq!(g1.get(&x).unwrap().to_vec().unwrap(), vec![1.0, 1.0]);
    assert_eq!(tape.len(), 0, "backward must release the recorded graph");

    let y = tape.var(t(&[3]));
    let loss2 = y.scale(3.0).unwrap().sum_all().unwrap();
    let g2 = tape.backward(&loss2).unwrap();
    assert_eq!(g2.get(&y).unwrap().to_vec().unwrap(), vec![3.0, 3.0, 3.0]);
    assert!(
        g2.get(&x).is_none(),
        "a spent var must not pick up a new var's gradient"
    );

    let z = tape.var(t(&[2]));
    let mixed = x.mul(&z).unwrap().sum_all().unwrap();
    expect_autodiff(tape.backward(&mixed), "spent");
}

/// A failing op records nothing and leaves the tape usable.
#[test]
fn failed_ops_leave_the_tape_consistent() {
    let tape = Tape::new(&Cpu);
    let a = tape.var(t(&[2, 3]));
    let before = tape.len();
    assert!(a.matmul(&a).is_err());
    assert!(a.add(&tape.var(t(&[5]))).is_err());
    assert_eq!(tape.len(), before + 1, "only the new leaf may be recorded");
    let loss = a.sum_all().unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.get(&a).unwrap().to_vec().unwrap(), vec![1.0; 6]);
}

/// Zero-sized tensors are legal: ops on them return empty results or an error, never a panic.
#[test]
fn empty_tensors_do_not_panic() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[2, 0]));
    assert_eq!(x.sum_axis(0, false).unwrap().dims(), &[0]);
    assert_eq!(
        x.sum_axis(1, true).unwrap().value().to_vec().unwrap(),
        vec![0.0, 0.0]
    );
    assert_eq!(x.sum_all().unwrap().value().to_scalar().unwrap(), 0.0);
    assert_eq!(x.relu().unwrap().dims(), &[2, 0]);
    assert_eq!(x.add(&tape.var(t(&[0]))).unwrap().dims(), &[2, 0]);
    assert_eq!(
        tape.var(t(&[2, 3, 0])).sum_axis(1, false).unwrap().dims(),
        &[2, 0]
    );
    assert_eq!(
        tape.var(t(&[0, 3]))
            .matmul(&tape.var(t(&[3, 2])))
            .unwrap()
            .dims(),
        &[0, 2]
    );
    assert_eq!(
        tape.var(t(&[0, 3])).narrow(1, 1, 2).unwrap().dims(),
        &[0, 2]
    );
    let loss = x.sum_all().unwrap();
    assert_eq!(
        tape.backward(&loss).unwrap().get(&x).unwrap().dims(),
        &[2, 0]
    );
}

/// An empty batch flows through the model ops and back: outputs and gradients
/// have the right (empty or zero) shapes and values.
#[test]
fn empty_batches_flow_through_forward_and_backward() {
    let tape = Tape::new(&Cpu);
    let x = tape.var(t(&[0, 2, 5, 5]));
    let w = tape.var(t(&[3, 2, 3, 3]));
    let h = x.conv2d(&w, 1, 1).unwrap();
    assert_eq!(h.dims(), &[0, 3, 5, 5]);
    let p = h.max_pool2d(2, 2).unwrap().avg_pool2d(2, 1).unwrap();
    assert_eq!(p.dims(), &[0, 3, 1, 1]);
    let logits = p.flatten().unwrap().log_softmax().unwrap();
    assert_eq!(logits.dims(), &[0, 3]);
    let loss = logits
        .sum_all()
        .unwrap()
        .add(&w.sum_all().unwrap())
        .unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.get(&x).unwrap().dims(), &[0, 2, 5, 5]);
    assert_eq!(
        g.get(&w).unwrap().to_vec().unwrap(),
        vec![1.0; 54],
        "only the direct sum reaches w"
    );

    let tape = Tape::new(&Cpu);
    let rows = tape.var(t(&[3, 2]));
    assert_eq!(rows.gather_rows(&idx(&[])).unwrap().dims(), &[0, 2]);
    // Rows of zero length can still be selected.
    let empty_rows = tape.var(t(&[3, 0]));
    let picked = empty_rows.gather_rows(&idx(&[2, 0])).unwrap();
    assert_eq!(picked.dims(), &[2, 0]);
    let loss = picked.sum_all().unwrap();
    assert_eq!(
        tape.backward(&loss)
            .unwrap()
            .get(&empty_rows)
            .unwrap()
            .dims(),
        &[3, 0]
    );
}

/// Shapes whose element count overflows `usize` must be rejected, not wrapped
/// around into a small buffer that later kernels would index past.
#[cfg(target_pointer_width = "64")]
#[test]
fn shapes_whose_size_overflows_are_rejected() {
    let huge = [1usize << 63, 2];
    expect(T32::from_slice(&Cpu, &[], huge), "from_slice", &[&huge]);
    expect(T32::zeros(&Cpu, huge), "zeros", &[&huge]);
    expect(T32::full(&Cpu, 1.0, huge), "full", &[&huge]);
    // (2^63 + 3) * 2 wraps around to exactly 6, the element count of [2, 3].
    let wraps_to_six = [(1usize << 63) + 3, 2];
    expect(
        t(&[2, 3]).reshape(wraps_to_six),
        "reshape",
        &[&[2, 3], &wraps_to_six],
    );
    let tape = Tape::new(&Cpu);
    expect(
        tape.var(t(&[2, 3])).reshape(wraps_to_six),
        "reshape",
        &[&[2, 3], &wraps_to_six],
    );
    expect(
        t(&[1]).broadcast_to(&Shape::new(huge)),
        "broadcast_to",
        &[&[1], &huge],
    );
}
