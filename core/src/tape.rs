//! The tape: each op on tracked values appends one node (inputs, saved values,
//! backward rule); `backward` walks it once in reverse. A tape lives for one
//! step: drop it (or let `backward` drain it) and every saved activation goes.

use crate::backend::{
    Backend, BatchNormGeometry, BinaryOp, Conv2dGeometry, Pool2dGeometry, UnaryOp,
};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::ops;
use crate::ops::batch_norm::{BatchNormConfig, BatchNormStats};
use crate::ops::rank_sum::RankSum;
use crate::shape::Shape;
use crate::tensor::{Indices, Tensor};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

/// What an op saved for its backward rule.
enum Op<T: Element, B: Backend<T>> {
    Leaf,
    MatMul {
        a: Tensor<T, B>,
        b: Tensor<T, B>,
        ta: bool,
        tb: bool,
    },
    Binary {
        op: BinaryOp,
        a: Tensor<T, B>,
        b: Tensor<T, B>,
    },
    Unary {
        op: UnaryOp,
        x: Tensor<T, B>,
        y: Tensor<T, B>,
    },
    Sum {
        in_shape: Shape,
        axis: Option<usize>,
    },
    Reshape {
        in_shape: Shape,
    },
    BroadcastTo {
        in_shape: Shape,
    },
    Narrow {
        in_shape: Shape,
        axis: usize,
        start: usize,
    },
    Concat {
        axis: usize,
        sizes: Vec<usize>,
    },
    GatherRows {
        idx: Indices<T, B>,
        rows: usize,
    },
    Conv2d {
        x: Tensor<T, B>,
        w: Tensor<T, B>,
        g: Conv2dGeometry,
    },
    MaxPool2d {
        argmax: Indices<T, B>,
        g: Pool2dGeometry,
        in_dims: Vec<usize>,
    },
    AvgPool2d {
        g: Pool2dGeometry,
        in_dims: Vec<usize>,
    },
    BatchNorm {
        x: Tensor<T, B>,
        weight: Tensor<T, B>,
        mean: Tensor<T, B>,
        var: Tensor<T, B>,
        g: BatchNormGeometry,
    },
    Softmax {
        y: Tensor<T, B>,
        log: bool,
    },
    RankSum {
        f: Arc<dyn RankSum<T, B>>,
        weight: f64,
    },
    CrossEntropy {
        probs: Tensor<T, B>,
        labels: Indices<T, B>,
    },
    /// Already spent by a backward pass.
    Done,
}

struct Node<T: Element, B: Backend<T>> {
    op: Op<T, B>,
    /// Tape position of each input, `None` for constants.
    inputs: Vec<Option<usize>>,
}

pub struct Tape<T: Element, B: Backend<T>> {
    backend: B,
    grad_enabled: bool,
    nodes: RefCell<Vec<Node<T, B>>>,
    /// Nodes released by earlier backward passes. Node ids keep counting past
    /// them (node `id` lives at `nodes[id - spent]`), so a var from a spent
    /// graph can never be mistaken for a newer one.
    spent: Cell<usize>,
}

/// A value on a tape. Ops on vars record themselves; constants and vars of a
/// no-grad tape record nothing.
pub struct Var<'t, T: Element, B: Backend<T>> {
    tape: &'t Tape<T, B>,
    node: Option<usize>,
    value: Tensor<T, B>,
}

impl<T: Element, B: Backend<T>> Clone for Var<'_, T, B> {
    fn clone(&self) -> Self {
        Var {
            tape: self.tape,
            node: self.node,
            value: self.value.clone(),
        }
    }
}

impl<T: Element, B: Backend<T>> std::fmt::Debug for Var<'_, T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({:?}, node {:?})", self.value, self.node)
    }
}

/// Gradients of the leaves that required them, by leaf.
pub struct Gradients<T: Element, B: Backend<T>> {
    grads: HashMap<usize, Tensor<T, B>>,
}

impl<T: Element, B: Backend<T>> Gradients<T, B> {
    pub fn get(&self, var: &Var<'_, T, B>) -> Option<&Tensor<T, B>> {
        var.node.and_then(|n| self.grads.get(&n))
    }
    pub fn remove(&mut self, var: &Var<'_, T, B>) -> Option<Tensor<T, B>> {
        var.node.and_then(|n| self.grads.remove(&n))
    }
}

impl<T: Element, B: Backend<T>> Tape<T, B> {
    pub fn new(backend: &B) -> Self {
        Tape {
            backend: backend.clone(),
            grad_enabled: true,
            nodes: RefCell::new(Vec::new()),
            spent: Cell::new(0),
        }
    }

    /// A tape that records nothing: inference.
    pub fn no_grad(backend: &B) -> Self {
        Tape {
            backend: backend.clone(),
            grad_enabled: false,
            nodes: RefCell::new(Vec::new()),
            spent: Cell::new(0),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }
    /// Nodes recorded and not yet spent by `backward` (a no-grad tape stays at 0).
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A leaf whose gradient `backward` will return (a parameter, or an input under test).
    pub fn var(&self, value: Tensor<T, B>) -> Var<'_, T, B> {
        let node = self.push(Op::Leaf, vec![]);
        Var {
            tape: self,
            node,
            value,
        }
    }

    /// A value with no gradient (data, labels, detached features).
    pub fn constant(&self, value: Tensor<T, B>) -> Var<'_, T, B> {
        Var {
            tape: self,
            node: None,
            value,
        }
    }

    fn push(&self, op: Op<T, B>, inputs: Vec<Option<usize>>) -> Option<usize> {
        if !self.grad_enabled {
            return None;
        }
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node { op, inputs });
        Some(self.spent.get() + nodes.len() - 1)
    }

    /// Records an op whose output is `value`, if any input is tracked.
    fn record<'t>(
        &'t self,
        value: Tensor<T, B>,
        inputs: &[Option<usize>],
        op: impl FnOnce() -> Op<T, B>,
    ) -> Var<'t, T, B> {
        let node = if self.grad_enabled && inputs.iter().any(|i| i.is_some()) {
            self.push(op(), inputs.to_vec())
        } else {
            None
        };
        Var {
            tape: self,
            node,
            value,
        }
    }

    /// Reverse pass from a one-element `loss`. Spends the tape: saved values are
    /// released node by node as the walk passes them, and the whole recorded
    /// graph is gone afterwards (also when the pass fails).
    pub fn backward(&self, loss: &Var<'_, T, B>) -> Result<Gradients<T, B>> {
        if !self.grad_enabled {
            return Err(Error::Autodiff("backward called on a no-grad tape".into()));
        }
        if !std::ptr::eq(loss.tape, self) {
            return Err(Error::Autodiff("the loss belongs to another tape".into()));
        }
        if loss.value.elem_count() != 1 {
            return Err(Error::Autodiff(format!(
                "backward needs a one-element loss, got shape {:?}",
                loss.value.dims()
            )));
        }
        let Some(root) = loss.node else {
            return Err(Error::Autodiff(
                "the loss does not depend on any tracked variable".into(),
            ));
        };
        let base = self.spent.get();
        if root < base {
            return Err(Error::Autodiff(
                "backward called twice: this graph was spent by an earlier backward".into(),
            ));
        }
        let mut nodes = self.nodes.borrow_mut();
        let result = self.walk(&mut nodes, base, root - base, loss);
        self.spent.set(base + nodes.len());
        nodes.clear();
        result
    }

    fn walk(
        &self,
        nodes: &mut [Node<T, B>],
        base: usize,
        root: usize,
        loss: &Var<'_, T, B>,
    ) -> Result<Gradients<T, B>> {
        let mut grads: Vec<Option<Tensor<T, B>>> = (0..nodes.len()).map(|_| None).collect();
        grads[root] = Some(Tensor::full(
            &self.backend,
            T::one(),
            loss.value.shape().clone(),
        )?);
        let mut leaves = HashMap::new();
        for id in (0..=root).rev() {
            let Some(grad) = grads[id].take() else {
                continue;
            };
            let node = &mut nodes[id];
            let op = std::mem::replace(&mut node.op, Op::Done);
            let needs: Vec<bool> = node.inputs.iter().map(|i| i.is_some()).collect();
            let input_grads = match op {
                Op::Leaf => {
                    leaves.insert(base + id, grad);
                    continue;
                }
                Op::Done => {
                    return Err(Error::Autodiff(
                        "backward called twice on the same tape".into(),
                    ))
                }
                op => backward_rule(op, &grad, &needs)?,
            };
            for (input, g) in node.inputs.iter().zip(input_grads) {
                let (Some(i), Some(g)) = (input, g) else {
                    continue;
                };
                let i = i.checked_sub(base).ok_or_else(|| {
                    Error::Autodiff("the graph uses a var spent by an earlier backward; create it again on this step".into())
                })?;
                grads[i] = Some(match grads[i].take() {
                    Some(acc) => acc.add(&g)?,
                    None => g,
                });
            }
        }
        Ok(Gradients { grads: leaves })
    }
}

fn backward_rule<T: Element, B: Backend<T>>(
    op: Op<T, B>,
    grad: &Tensor<T, B>,
    needs: &[bool],
) -> Result<Vec<Option<Tensor<T, B>>>> {
    Ok(match op {
        Op::MatMul { a, b, ta, tb } => ops::matmul::matmul_backward(&a, &b, ta, tb, grad, needs)?,
        Op::Binary { op, a, b } => ops::binary::binary_backward(op, &a, &b, grad, needs)?,
        Op::Unary { op, x, y } => vec![Some(ops::unary::unary_backward(op, &x, &y, grad)?)],
        Op::Sum { in_shape, axis } => {
            vec![Some(ops::reduce::sum_axis_backward(&in_shape, axis, grad)?)]
        }
        Op::Reshape { in_shape } => vec![Some(grad.reshape(in_shape)?)],
        Op::BroadcastTo { in_shape } => vec![Some(grad.sum_to_shape(&in_shape)?)],
        Op::Narrow {
            in_shape,
            axis,
            start,
        } => vec![Some(ops::layout::narrow_backward(
            &in_shape, axis, start, grad,
        )?)],
        Op::Concat { axis, sizes } => ops::layout::concat_backward(axis, &sizes, grad, needs)?,
        Op::GatherRows { idx, rows } => {
            vec![Some(ops::gather::gather_rows_backward(&idx, rows, grad)?)]
        }
        Op::Conv2d { x, w, g } => ops::conv::conv2d_backward(&x, &w, &g, grad, needs)?,
        Op::MaxPool2d { argmax, g, in_dims } => vec![Some(ops::pool::max_pool2d_backward(
            &argmax, &g, &in_dims, grad,
        )?)],
        Op::AvgPool2d { g, in_dims } => {
            vec![Some(ops::pool::avg_pool2d_backward(&g, &in_dims, grad)?)]
        }
        Op::BatchNorm {
            x,
            weight,
            mean,
            var,
            g,
        } => ops::batch_norm::batch_norm_backward(&x, &weight, &mean, &var, &g, grad, needs)?,
        Op::Softmax { y, log } => vec![Some(ops::softmax::softmax_backward(&y, log, grad)?)],
        Op::RankSum { f, weight } => vec![Some(ops::rank_sum::rank_sum_backward(
            f.as_ref(),
            weight,
            grad,
        )?)],
        Op::CrossEntropy { probs, labels } => vec![Some(ops::softmax::cross_entropy_backward(
            &probs, &labels, grad,
        )?)],
        Op::Leaf | Op::Done => unreachable!("handled by the caller"),
    })
}

impl<'t, T: Element, B: Backend<T>> Var<'t, T, B> {
    pub fn value(&self) -> &Tensor<T, B> {
        &self.value
    }
    pub fn into_value(self) -> Tensor<T, B> {
        self.value
    }
    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }
    pub fn tape(&self) -> &'t Tape<T, B> {
        self.tape
    }
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }
    /// The same value cut off from the graph (no gradient flows through it).
    pub fn detach(&self) -> Var<'t, T, B> {
        self.tape.constant(self.value.clone())
    }

    fn same_tape(&self, op: &'static str, other: &Self) -> Result<()> {
        if std::ptr::eq(self.tape, other.tape) {
            Ok(())
        } else {
            Err(Error::invalid(
                op,
                "operands belong to different tapes",
                &[self.dims(), other.dims()],
            ))
        }
    }

    pub fn matmul_t(&self, rhs: &Self, ta: bool, tb: bool) -> Result<Self> {
        self.same_tape("matmul", rhs)?;
        let v = self.value.matmul_t(&rhs.value, ta, tb)?;
        Ok(self.tape.record(v, &[self.node, rhs.node], || Op::MatMul {
            a: self.value.clone(),
            b: rhs.value.clone(),
            ta,
            tb,
        }))
    }
    pub fn matmul(&self, rhs: &Self) -> Result<Self> {
        self.matmul_t(rhs, false, false)
    }

    pub fn binary(&self, op: BinaryOp, rhs: &Self) -> Result<Self> {
        self.same_tape(ops::binary::op_name(op), rhs)?;
        let v = self.value.binary(op, &rhs.value)?;
        Ok(self.tape.record(v, &[self.node, rhs.node], || Op::Binary {
            op,
            a: self.value.clone(),
            b: rhs.value.clone(),
        }))
    }
    pub fn add(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Add, rhs)
    }
    pub fn sub(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Sub, rhs)
    }
    pub fn mul(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Mul, rhs)
    }
    pub fn div(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Div, rhs)
    }

    pub fn unary(&self, op: UnaryOp) -> Result<Self> {
        let y = self.value.unary(op)?;
        Ok(self.tape.record(y.clone(), &[self.node], || Op::Unary {
            op,
            x: self.value.clone(),
            y,
        }))
    }
    crate::ops::unary::unary_shorthands!();

    pub fn sum_all(&self) -> Result<Self> {
        let v = self.value.sum_all()?;
        Ok(self.tape.record(v, &[self.node], || Op::Sum {
            in_shape: self.value.shape().clone(),
            axis: None,
        }))
    }
    pub fn mean_all(&self) -> Result<Self> {
        let n = self.value.elem_count().max(1);
        self.sum_all()?.scale(1.0 / n as f64)
    }
    pub fn sum_axis(&self, axis: usize, keepdim: bool) -> Result<Self> {
        let v = self.value.sum_axis(axis, keepdim)?;
        Ok(self.tape.record(v, &[self.node], || Op::Sum {
            in_shape: self.value.shape().clone(),
            axis: Some(axis),
        }))
    }
    pub fn mean_axis(&self, axis: usize, keepdim: bool) -> Result<Self> {
        let len = self.value.shape().dim("mean_axis", axis)?;
        self.sum_axis(axis, keepdim)?.scale(1.0 / len.max(1) as f64)
    }

    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let v = self.value.reshape(shape)?;
        Ok(self.tape.record(v, &[self.node], || Op::Reshape {
            in_shape: self.value.shape().clone(),
        }))
    }
    pub fn flatten(&self) -> Result<Self> {
        let v = self.value.flatten()?;
        Ok(self.tape.record(v, &[self.node], || Op::Reshape {
            in_shape: self.value.shape().clone(),
        }))
    }
    pub fn broadcast_to(&self, shape: &Shape) -> Result<Self> {
        let v = self.value.broadcast_to(shape)?;
        Ok(self.tape.record(v, &[self.node], || Op::BroadcastTo {
            in_shape: self.value.shape().clone(),
        }))
    }
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        let v = self.value.narrow(axis, start, len)?;
        Ok(self.tape.record(v, &[self.node], || Op::Narrow {
            in_shape: self.value.shape().clone(),
            axis,
            start,
        }))
    }
    pub fn concat(parts: &[&Self], axis: usize) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("concat", "no tensors to concatenate", &[]))?;
        for p in parts {
            first.same_tape("concat", p)?;
        }
        let values: Vec<&Tensor<T, B>> = parts.iter().map(|p| &p.value).collect();
        let v = Tensor::concat(&values, axis)?;
        let inputs: Vec<Option<usize>> = parts.iter().map(|p| p.node).collect();
        Ok(first.tape.record(v, &inputs, || Op::Concat {
            axis,
            sizes: parts.iter().map(|p| p.dims()[axis]).collect(),
        }))
    }
    pub fn gather_rows(&self, idx: &Indices<T, B>) -> Result<Self> {
        let v = self.value.gather_rows(idx)?;
        Ok(self.tape.record(v, &[self.node], || Op::GatherRows {
            idx: idx.clone(),
            rows: self.dims()[0],
        }))
    }

    /// 2-D convolution of this NCHW input with an `[oc, c, kh, kw]` weight (no bias).
    pub fn conv2d(&self, w: &Self, stride: usize, pad: usize) -> Result<Self> {
        self.same_tape("conv2d", w)?;
        let out = self.value.conv2d_full(&w.value, stride, pad)?;
        let g = out.geometry;
        Ok(self
            .tape
            .record(out.out, &[self.node, w.node], || Op::Conv2d {
                x: self.value.clone(),
                w: w.value.clone(),
                g,
            }))
    }
    /// 2-D convolution with an optional `[oc]` bias added per output channel.
    pub fn conv2d_bias(
        &self,
        w: &Self,
        bias: Option<&Self>,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        // The bias is checked first, so a bad one records nothing on the tape;
        // a weight that is not `[oc, c, kh, kw]` is left to conv2d's own check.
        if let (Some(b), &[oc, _, _, _]) = (bias, w.dims()) {
            self.same_tape("conv2d", b)?;
            if b.dims() != [oc] {
                return Err(Error::invalid(
                    "conv2d",
                    format!("bias must have shape [{oc}] (one value per output channel)"),
                    &[self.dims(), w.dims(), b.dims()],
                ));
            }
        }
        let out = self.conv2d(w, stride, pad)?;
        match bias {
            None => Ok(out),
            Some(b) => out.add(&b.reshape([w.dims()[0], 1, 1])?),
        }
    }
    pub fn max_pool2d(&self, k: usize, stride: usize) -> Result<Self> {
        self.max_pool2d_pad(k, stride, 0)
    }
    /// Max pooling with `pad` on every side; padding never wins (PyTorch's -inf).
    pub fn max_pool2d_pad(&self, k: usize, stride: usize, pad: usize) -> Result<Self> {
        let (v, argmax, g) = self.value.max_pool2d_full(k, stride, pad)?;
        Ok(self.tape.record(v, &[self.node], || Op::MaxPool2d {
            argmax,
            g,
            in_dims: self.dims().to_vec(),
        }))
    }
    pub fn avg_pool2d(&self, k: usize, stride: usize) -> Result<Self> {
        let (v, g) = self.value.avg_pool2d_full(k, k, stride)?;
        Ok(self.tape.record(v, &[self.node], || Op::AvgPool2d {
            g,
            in_dims: self.dims().to_vec(),
        }))
    }
    /// Average over each whole plane: `[n, c, h, w] -> [n, c, 1, 1]`.
    pub fn global_avg_pool2d(&self) -> Result<Self> {
        let d = self.dims();
        if d.len() != 4 || d[2] == 0 || d[3] == 0 {
            return Err(Error::invalid(
                "global_avg_pool2d",
                "expected input [n, c, h, w] with a non-empty plane",
                &[d],
            ));
        }
        let (v, g) = self.value.avg_pool2d_full(d[2], d[3], 1)?;
        Ok(self.tape.record(v, &[self.node], || Op::AvgPool2d {
            g,
            in_dims: d.to_vec(),
        }))
    }

    /// Training-mode batch normalisation of `[n, c, ...]` with `[c]` weight and
    /// bias (gradients for all three); returns the output and the running
    /// statistics updated with this batch (buffers, outside the graph).
    pub fn batch_norm_train(
        &self,
        weight: &Self,
        bias: &Self,
        running: &BatchNormStats<T, B>,
        cfg: &BatchNormConfig,
    ) -> Result<(Self, BatchNormStats<T, B>)> {
        self.same_tape("batch_norm", weight)?;
        self.same_tape("batch_norm", bias)?;
        let t = self
            .value
            .batch_norm_train(&weight.value, &bias.value, running, cfg)?;
        let (mean, var, g) = (t.mean, t.var, t.geometry);
        let y = self
            .tape
            .record(t.out, &[self.node, weight.node, bias.node], || {
                Op::BatchNorm {
                    x: self.value.clone(),
                    weight: weight.value.clone(),
                    mean,
                    var,
                    g,
                }
            });
        Ok((y, t.running))
    }

    /// Evaluation-mode batch normalisation with the running statistics: a
    /// per-channel affine map (same ops as `Tensor::batch_norm_eval`), with
    /// gradients for the input, the weight and the bias.
    pub fn batch_norm_eval(
        &self,
        weight: &Self,
        bias: &Self,
        running: &BatchNormStats<T, B>,
        cfg: &BatchNormConfig,
    ) -> Result<Self> {
        self.same_tape("batch_norm", weight)?;
        self.same_tape("batch_norm", bias)?;
        let params = [
            weight.dims(),
            bias.dims(),
            running.mean.dims(),
            running.var.dims(),
        ];
        let g = ops::batch_norm::batch_norm_geometry(self.dims(), &params, cfg, false)?;
        let sd = self
            .tape
            .constant(running.var.affine(1.0, cfg.eps)?.sqrt()?);
        let mean = self.tape.constant(running.mean.clone());
        let scale = weight.div(&sd)?;
        let shift = bias.sub(&mean.mul(&scale)?)?;
        let dims = ops::batch_norm::channel_dims(self.value.rank(), g.c);
        self.mul(&scale.reshape(dims.clone())?)?
            .add(&shift.reshape(dims)?)
    }

    /// Element-wise sum of this value over the ranks of a data-parallel job
    /// (`f` carries it; every rank calls it in the same order with the same
    /// shapes). `weight` is this rank's share of the weight its gradients get
    /// when the ranks' gradients are combined (`n_r` rows for a mean over
    /// them): the backward pass sends `sum_r(grad * weight) / weight` back
    /// (see `ops::rank_sum`).
    pub fn rank_sum(&self, f: &Arc<dyn RankSum<T, B>>, weight: f64) -> Result<Self> {
        let y = ops::rank_sum::rank_sum_forward(f.as_ref(), &self.value, weight)?;
        Ok(self.tape.record(y, &[self.node], || Op::RankSum {
            f: f.clone(),
            weight,
        }))
    }

    /// Dropout with drop probability `p` in training (mask drawn from
    /// `uniform`, a seeded stream of draws in `[0, 1)`); the identity otherwise.
    pub fn dropout(
        &self,
        p: f64,
        training: bool,
        uniform: &mut dyn FnMut() -> f64,
    ) -> Result<Self> {
        ops::dropout::check_p(p, self.dims())?;
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        let mask = ops::dropout::dropout_mask(
            self.value.backend(),
            self.value.shape().clone(),
            p,
            uniform,
        )?;
        self.mul(&self.tape.constant(mask))
    }

    pub fn softmax(&self) -> Result<Self> {
        let y = self.value.softmax()?;
        Ok(self
            .tape
            .record(y.clone(), &[self.node], || Op::Softmax { y, log: false }))
    }
    pub fn log_softmax(&self) -> Result<Self> {
        let y = self.value.log_softmax()?;
        Ok(self
            .tape
            .record(y.clone(), &[self.node], || Op::Softmax { y, log: true }))
    }
    /// Fused mean cross-entropy of logits against integer labels.
    pub fn cross_entropy(&self, labels: &Indices<T, B>) -> Result<Self> {
        let (loss, probs) = self.value.cross_entropy_full(labels)?;
        Ok(self.tape.record(loss, &[self.node], || Op::CrossEntropy {
            probs,
            labels: labels.clone(),
        }))
    }
    /// Entropy of the softmax of each row: `[rows, classes] -> [rows]`.
    pub fn entropy(&self) -> Result<Self> {
        let last = match self.dims().last() {
            Some(&classes) if classes > 0 => self.value.rank() - 1,
            _ => {
                return Err(Error::invalid(
                    "entropy",
                    "expected [rows, classes] with at least one class",
                    &[self.dims()],
                ))
            }
        };
        let ls = self.log_softmax()?;
        ls.exp()?.mul(&ls)?.sum_axis(last, false)?.neg()
    }
}
