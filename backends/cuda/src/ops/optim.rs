//! In-place SGD (momentum, Nesterov, weight decay) and Adam / AdamW steps,
//! the same update rules as the CPU backend; bias corrections are computed
//! on the host from the step number.

use super::{need_len, u, BLOCK};
use crate::device::{arg, Device};
use crate::kernels::KernelModule;
use crate::memory::DeviceBuffer;
use crate::CudaFloat;
use mla_core::{AdamConfig, Error, Result, SgdConfig};
use std::sync::Arc;

pub(crate) static MODULE: KernelModule = KernelModule {
    slot: 9,
    name: "optim",
    source: SOURCE,
    functions: &["sgd_step", "adam_step"],
};

const SOURCE: &str = r#"
extern "C" __global__ void sgd_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, u64 n,
                                    T lr, T mu, T wd, int nesterov) {
    GRID_STRIDE(i, n) {
        T gi = g[i] + wd * p[i];
        if (v) {
            T vi = mu * v[i] + gi;
            v[i] = vi;
            p[i] = p[i] - lr * (nesterov ? gi + mu * vi : vi);
        } else {
            p[i] = p[i] - lr * gi;
        }
    }
}
extern "C" __global__ void adam_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, u64 n,
                                     T lr, T b1, T b2, T bc1, T bc2, T eps, T wd, int decoupled) {
    GRID_STRIDE(i, n) {
        T pi = p[i], gi = g[i];
        if (decoupled) pi = pi - lr * wd * pi;
        else gi = gi + wd * pi;
        T mi = b1 * m[i] + ((T)1 - b1) * gi;
        T vi = b2 * v[i] + ((T)1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - lr * (mi / bc1) / (t_sqrt(vi / bc2) + eps);
    }
}
"#;

fn same_len(op: &'static str, what: &str, have: usize, n: usize) -> Result<()> {
    if have != n {
        return Err(Error::invalid(
            op,
            format!("{what} has {have} elements, the parameter {n}"),
            &[&[have], &[n]],
        ));
    }
    Ok(())
}

pub(crate) fn sgd_step<T: CudaFloat>(
    dev: &Arc<Device>,
    param: &mut DeviceBuffer<T>,
    grad: &DeviceBuffer<T>,
    velocity: Option<&mut DeviceBuffer<T>>,
    cfg: &SgdConfig,
) -> Result<()> {
    let op = "sgd_step";
    let n = param.len();
    need_len(op, "grad", grad.len(), n)?;
    if let Some(v) = &velocity {
        same_len(op, "velocity", v.len(), n)?;
    }
    if n == 0 {
        return Ok(());
    }
    dev.enter(op)?;
    let f = dev.kernel::<T>(&MODULE, "sgd_step", op)?;
    let (pp, gp, vp, nn) = (
        param.ptr(),
        grad.ptr(),
        velocity.map_or(0, |v| v.ptr()),
        u(n),
    );
    let (lr, mu, wd, nes) = (
        T::lit(cfg.lr),
        T::lit(cfg.momentum),
        T::lit(cfg.weight_decay),
        cfg.nesterov as i32,
    );
    dev.launch(
        f,
        (dev.grid_for(n, BLOCK), 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [
            arg(&pp),
            arg(&gp),
            arg(&vp),
            arg(&nn),
            arg(&lr),
            arg(&mu),
            arg(&wd),
            arg(&nes),
        ],
        op,
    )
}

pub(crate) fn adam_step<T: CudaFloat>(
    dev: &Arc<Device>,
    param: &mut DeviceBuffer<T>,
    grad: &DeviceBuffer<T>,
    m: &mut DeviceBuffer<T>,
    v: &mut DeviceBuffer<T>,
    cfg: &AdamConfig,
    step: u64,
) -> Result<()> {
    let op = "adam_step";
    let n = param.len();
    need_len(op, "grad", grad.len(), n)?;
    same_len(op, "first moment", m.len(), n)?;
    same_len(op, "second moment", v.len(), n)?;
    if step == 0 {
        return Err(Error::invalid(
            op,
            "step numbers start at 1 (bias correction divides by 1 - beta^step)",
            &[&[n]],
        ));
    }
    if n == 0 {
        return Ok(());
    }
    dev.enter(op)?;
    let f = dev.kernel::<T>(&MODULE, "adam_step", op)?;
    let steps = i32::try_from(step).unwrap_or(i32::MAX);
    let bc1 = T::lit(1.0 - cfg.beta1.powi(steps));
    let bc2 = T::lit(1.0 - cfg.beta2.powi(steps));
    let (lr, b1, b2, eps, wd, dec) = (
        T::lit(cfg.lr),
        T::lit(cfg.beta1),
        T::lit(cfg.beta2),
        T::lit(cfg.eps),
        T::lit(cfg.weight_decay),
        cfg.decoupled as i32,
    );
    let (pp, gp, mp, vp, nn) = (param.ptr(), grad.ptr(), m.ptr(), v.ptr(), u(n));
    dev.launch(
        f,
        (dev.grid_for(n, BLOCK), 1, 1),
        (BLOCK, 1, 1),
        0,
        &mut [
            arg(&pp),
            arg(&gp),
            arg(&mp),
            arg(&vp),
            arg(&nn),
            arg(&lr),
            arg(&b1),
            arg(&b2),
            arg(&bc1),
            arg(&bc2),
            arg(&eps),
            arg(&wd),
            arg(&dec),
        ],
        op,
    )
}
