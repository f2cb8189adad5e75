use crate::{el, CpuFloat};
use mla_core::{AdamConfig, SgdConfig};

pub(crate) fn sgd_step<T: CpuFloat>(
    param: &mut [T],
    grad: &[T],
    velocity: Option<&mut Vec<T>>,
    cfg: &SgdConfig,
) {
    let (lr, mu, wd) = (
        el::<T>(cfg.lr),
        el::<T>(cfg.momentum),
        el::<T>(cfg.weight_decay),
    );
    match velocity {
        Some(v) => {
            for ((p, &g), v) in param.iter_mut().zip(grad).zip(v.iter_mut()) {
                let g = g + wd * *p;
                *v = mu * *v + g;
                let step = if cfg.nesterov { g + mu * *v } else { *v };
                *p = *p - lr * step;
            }
        }
        None => {
            for (p, &g) in param.iter_mut().zip(grad) {
                *p = *p - lr * (g + wd * *p);
            }
        }
    }
}

pub(crate) fn adam_step<T: CpuFloat>(
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
    cfg: &AdamConfig,
    step: u64,
) {
    let (b1, b2) = (el::<T>(cfg.beta1), el::<T>(cfg.beta2));
    let bc1 = el::<T>(1.0 - cfg.beta1.powi(step as i32));
    let bc2 = el::<T>(1.0 - cfg.beta2.powi(step as i32));
    let (lr, eps, wd) = (el::<T>(cfg.lr), el::<T>(cfg.eps), el::<T>(cfg.weight_decay));
    for i in 0..param.len() {
        let mut g = grad[i];
        if cfg.decoupled {
            param[i] = param[i] - lr * wd * param[i];
        } else {
            g = g + wd * param[i];
        }
        m[i] = b1 * m[i] + (T::one() - b1) * g;
        v[i] = b2 * v[i] + (T::one() - b2) * g * g;
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        param[i] = param[i] - lr * mhat / (vhat.sqrt() + eps);
    }
}
