//! Times `Backend::gemm` of the CPU backend in short bursts on request, so a
//! driver (`benches/reference/gemm_vs_ref.py --burst`) can alternate mla with
//! numpy and torch every few tens of milliseconds: on a VM whose speed drifts
//! by 20-30% over minutes, only measurements taken that close together compare.
//!
//! Reads lines `m k n trans_a trans_b seconds` on stdin (trans as 0/1) and, for
//! each, calls the GEMM back to back for about `seconds` after one untimed
//! warm-up call, timing every call, and answers `calls median_s min_s`.
//! Operands are made once per shape and reused.
//!
//!     cargo run --release -p mla-benches --example gemm_burst
//!
//! `RAYON_NUM_THREADS` sets the thread count, `MLA_CPU_ISA` the kernels.

use mla_benches::values;
use mla_core::{Backend, GemmConfig};
use mla_cpu::Cpu;
use std::io::{BufRead, Write};
use std::time::Instant;

fn parse(line: &str) -> Result<(GemmConfig, f64), String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 6 {
        return Err(format!(
            "expected `m k n trans_a trans_b seconds`, got {line:?}"
        ));
    }
    let num = |i: usize| {
        f[i].parse::<usize>()
            .map_err(|e| format!("field {} ({:?}) of {line:?}: {e}", i + 1, f[i]))
    };
    let flag = |i: usize| match f[i] {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(format!(
            "field {} of {line:?} must be 0 or 1, got {other:?}",
            i + 1
        )),
    };
    let seconds: f64 = f[5]
        .parse()
        .map_err(|e| format!("seconds ({:?}) of {line:?}: {e}", f[5]))?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!(
            "seconds must be positive, got {seconds} in {line:?}"
        ));
    }
    let cfg = GemmConfig {
        batch: 1,
        m: num(0)?,
        k: num(1)?,
        n: num(2)?,
        trans_a: flag(3)?,
        trans_b: flag(4)?,
        stride_a: 0,
        stride_b: 0,
    };
    Ok((cfg, seconds))
}

fn main() {
    // MLA_CPU_ISA forces a slower kernel set (the AVX2 path on an AVX-512 CPU).
    mla_cpu::isa_from_env().unwrap_or_else(|e| fail(&e));
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut current: Option<(GemmConfig, Vec<f32>, Vec<f32>)> = None;
    for line in stdin.lock().lines() {
        let line = line.unwrap_or_else(|e| fail(&format!("reading stdin: {e}")));
        if line.trim().is_empty() {
            continue;
        }
        let (cfg, seconds) = parse(&line).unwrap_or_else(|e| fail(&e));
        let same = matches!(&current, Some((c, ..)) if (c.m, c.k, c.n, c.trans_a, c.trans_b)
            == (cfg.m, cfg.k, cfg.n, cfg.trans_a, cfg.trans_b));
        if !same {
            current = Some((
                cfg,
                values(1, cfg.lhs_len(), 1.0),
                values(2, cfg.rhs_len(), 1.0),
            ));
        }
        let (cfg, a, b) = current.as_ref().expect("set above");
        let run = || {
            Backend::<f32>::gemm(&Cpu, cfg, a, b)
                .unwrap_or_else(|e| fail(&format!("gemm {line:?}: {e}")))
        };
        drop(run());
        let mut times = Vec::new();
        let start = Instant::now();
        while times.is_empty() || start.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            drop(std::hint::black_box(run()));
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        writeln!(out, "{} {median:e} {:e}", times.len(), times[0])
            .and_then(|_| out.flush())
            .unwrap_or_else(|e| fail(&format!("writing stdout: {e}")));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("gemm_burst: {msg}");
    std::process::exit(2)
}
