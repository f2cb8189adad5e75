//! Data-parallel training: what ranks exchange, behind one [`Collective`]
//! trait so the trainer never names a transport (the `mla` binary brings
//! MPI under its `mpi` feature; tests use [`InProcess`], ranks as threads).
//!
//! Semantics (README, "Distributed training"): every rank draws the same
//! global batch order and trains on its share of each global batch
//! ([`share`]). A step's gradients are the local means scaled back to sums,
//! summed over ranks in one call per step and divided by the global row
//! count, so each rank applies the gradient one process would compute on
//! the whole global batch (up to summation order). HGM's batch-mean feature
//! r and OGM's scores travel in the same call, so every rank updates P and
//! picks its coefficients identically. Evaluation is sharded the same way
//! and gathered (`SplitOutputs::gathered`).
//! Batch-norm buffers are local during an epoch and rank 0's are broadcast
//! at its end, which is what PyTorch DDP's buffer broadcast leaves; with
//! `--sync-bn` (the model's batch norm sums through [`Dist`]) batch norm uses the global batch's
//! statistics, so every rank's buffers are one process's.

use crate::params::StateDict;
use crate::trainer::{Result, TrainError};
use mla_core::{Backend, RankSum, Tensor};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

type T32<B> = Tensor<f32, B>;

/// Element-wise sums across the ranks of one job. Every rank calls the same
/// sequence of operations with buffers of the same lengths. `Send + Sync`:
/// a model holds the job's [`Dist`] for synchronised batch norm; a transport
/// bound to one thread refuses calls from others.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank by its sum over ranks.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> std::result::Result<(), String>;
    /// As [`Collective::all_reduce_sum`], in f64 (counts, checksums).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> std::result::Result<(), String>;
}

/// Positions `[a, b)` of a global batch of `n` rows that rank `rank` of
/// `world` trains on: contiguous, sizes differ by at most one, together
/// they cover the batch exactly once (a share may be empty when n < world).
pub fn share(n: usize, rank: usize, world: usize) -> Range<usize> {
    (rank * n / world)..((rank + 1) * n / world)
}

/// The trainer's handle on the job: the collective and what it cost.
pub struct Dist {
    comm: Arc<dyn Collective>,
    /// Behind a lock because the model's synchronised batch norm sums
    /// through the same handle ([`RankSum`]) and counts with the rest.
    traffic: Mutex<Traffic>,
}

/// All-reduce traffic of an epoch: calls, payload bytes per rank, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub calls: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Dist {
    pub fn new(comm: Arc<dyn Collective>) -> Self {
        Dist {
            comm,
            traffic: Mutex::new(Traffic::default()),
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world(&self) -> usize {
        self.comm.world()
    }

    /// The traffic since the last call, reset.
    pub fn take_traffic(&self) -> Traffic {
        std::mem::take(&mut *self.traffic.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn count(&self, bytes: usize, t0: Instant) {
        let mut t = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        t.calls += 1;
        t.bytes += bytes as u64;
        t.seconds += t0.elapsed().as_secs_f64();
    }

    pub fn sum(&self, buf: &mut [f32]) -> Result<()> {
        let t0 = Instant::now();
        self.comm.all_reduce_sum(buf).map_err(|e| {
            TrainError::Distributed(format!("rank {}: all-reduce: {e}", self.rank()))
        })?;
        self.count(buf.len() * 4, t0);
        Ok(())
    }

    pub fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let t0 = Instant::now();
        self.comm.all_reduce_sum_f64(buf).map_err(|e| {
            TrainError::Distributed(format!("rank {}: all-reduce: {e}", self.rank()))
        })?;
        self.count(buf.len() * 8, t0);
        Ok(())
    }

    /// One step's gradients averaged over the global batch.
    ///
    /// `names` are the parameters the step may train, with their shapes, in
    /// the same order on every rank; `local` is this rank's gradients
    /// (`None` when the rank's share had no rows for the step), combined as
    /// `weights` says; `rows` the rows of the step on this rank; `extra`
    /// values summed alongside (already sums, not means). Under
    /// [`Weights::MeanOver`] each gradient is divided by its own global row
    /// count, so a loss term over the rows that have one modality averages
    /// over the global batch's such rows; a rank's rows count for every
    /// tensor of `names`, also one its loss did not reach (a zero gradient
    /// there: a share without any row of one modality). Returns `None` when no rank had a row (the
    /// step does not happen), else the gradients some rank's loss reached,
    /// the global row count and the summed extras.
    pub fn mean_gradients<B: Backend<f32>>(
        &self,
        backend: &B,
        names: &[(String, Vec<usize>)],
        local: Option<&[(String, T32<B>)]>,
        weights: Weights<'_>,
        rows: usize,
        extra: &[f32],
    ) -> Result<Option<Reduced<B>>> {
        let sizes: Vec<usize> = names.iter().map(|(_, d)| d.iter().product()).collect();
        // Per tensor: the rows behind its mean, whether this rank's loss
        // reached it, then the values.
        let total: usize = sizes.iter().map(|s| s + 2).sum::<usize>() + 1 + extra.len();
        let mut buf = vec![0f32; total];
        let mut at = 0;
        for ((name, _), &size) in names.iter().zip(&sizes) {
            let mut k = match weights {
                Weights::MeanOver(rows_of) => rows_of(name) as f32,
                Weights::Sum => 1.0,
            };
            if local.is_some() {
                // A gradient this rank's loss did not reach is zero over the
                // rank's rows: they still count in the global mean (a share
                // with rows but without one modality).
                buf[at] = k;
            }
            if let Some(g) = local.and_then(|l| l.iter().find(|(n, _)| n == name)) {
                let v = g.1.to_vec()?;
                if v.len() != size {
                    return Err(TrainError::Distributed(format!(
                        "rank {}: gradient of {name} has {} values, the parameter {size}",
                        self.rank(),
                        v.len()
                    )));
                }
                // A gradient some loss reached has at least one row behind it.
                k = k.max(1.0);
                buf[at] = k;
                buf[at + 1] = 1.0;
                for (o, x) in buf[at + 2..at + 2 + size].iter_mut().zip(&v) {
                    *o = x * k;
                }
            }
            at += size + 2;
        }
        buf[at] = rows as f32;
        buf[at + 1..].copy_from_slice(extra);
        self.sum(&mut buf)?;
        let global = buf[at].round() as usize;
        if global == 0 {
            return Ok(None);
        }
        let mut grads = Vec::new();
        let mut at = 0;
        for ((name, dims), &size) in names.iter().zip(&sizes) {
            // Only gradients some rank's loss reached (the optimizer leaves
            // the others alone, as in one process).
            if buf[at + 1] > 0.0 {
                let inv = match weights {
                    Weights::MeanOver(_) => 1.0 / buf[at],
                    Weights::Sum => 1.0,
                };
                let v: Vec<f32> = buf[at + 2..at + 2 + size].iter().map(|x| x * inv).collect();
                grads.push((name.clone(), Tensor::from_slice(backend, &v, dims.clone())?));
            }
            at += size + 2;
        }
        Ok(Some(Reduced {
            grads,
            rows: global,
            extra: buf[at + 1..].to_vec(),
        }))
    }

    /// Replaces the tensors `names` selects by rank 0's (its batch-norm
    /// buffers at an epoch's end).
    pub fn broadcast_from_root<B: Backend<f32>>(
        &self,
        tensors: &mut [(String, T32<B>)],
    ) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (_, t) in tensors.iter() {
            let v = t.to_vec()?;
            if self.rank() == 0 {
                buf.extend_from_slice(&v);
            } else {
                buf.resize(buf.len() + v.len(), 0.0);
            }
        }
        self.sum(&mut buf)?;
        let mut at = 0;
        for (_, t) in tensors.iter_mut() {
            let n = t.elem_count();
            *t = Tensor::from_slice(t.backend(), &buf[at..at + n], t.dims().to_vec())?;
            at += n;
        }
        Ok(())
    }

    /// Every rank's `checksum`, in rank order (each rank fills its slot).
    pub fn gather_checksums(&self, checksum: u64) -> Result<Vec<u64>> {
        // Four 16-bit pieces per rank: each is exact in an f64 sum.
        let w = self.world();
        let mut buf = vec![0f64; 4 * w];
        for k in 0..4 {
            buf[4 * self.rank() + k] = ((checksum >> (16 * k)) & 0xffff) as f64;
        }
        self.sum_f64(&mut buf)?;
        Ok((0..w)
            .map(|r| (0..4).map(|k| (buf[4 * r + k] as u64) << (16 * k)).sum())
            .collect())
    }
}

/// Synchronised batch norm's sum over ranks (`--sync-bn`): the model's
/// batch-norm layers call the job's handle (one all-reduce of a `[c + 1]` or
/// `[c]` vector each), counted with the step's other all-reduces.
impl<B: Backend<f32>> RankSum<f32, B> for Dist {
    fn sum(&self, x: &T32<B>) -> mla_core::Result<T32<B>> {
        let mut v = x.to_vec()?;
        Dist::sum(self, &mut v).map_err(|e| mla_core::Error::Backend {
            op: "sync-bn all-reduce",
            backend: "distributed",
            msg: e.to_string(),
        })?;
        Tensor::from_slice(x.backend(), &v, x.dims().to_vec())
    }
}

/// How [`Dist::mean_gradients`] combines the ranks' gradients.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// Each gradient is a mean over `rows_of(name)` rows of its rank: the
    /// result is the mean over the global batch's such rows.
    MeanOver(&'a dyn Fn(&str) -> usize),
    /// Each rank's gradient is already its share of the global one (its
    /// loss was scaled by its rows over the global rows): the result is the
    /// plain sum.
    Sum,
}

/// What [`Dist::mean_gradients`] gives back.
pub struct Reduced<B: Backend<f32>> {
    pub grads: Vec<(String, T32<B>)>,
    pub rows: usize,
    pub extra: Vec<f32>,
}

/// FNV-1a over the names, shapes and f32 bits of `dicts`' tensors and
/// scalars: equal on two ranks only if their states are bitwise equal.
pub fn checksum<B: Backend<f32>>(dicts: &[&StateDict<B>]) -> Result<u64> {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for sd in dicts {
        for (name, t) in &sd.tensors {
            eat(name.as_bytes());
            for d in t.dims() {
                eat(&(*d as u64).to_le_bytes());
            }
            for x in t.to_vec()? {
                eat(&x.to_bits().to_le_bytes());
            }
        }
        for (name, v) in &sd.scalars {
            eat(name.as_bytes());
            eat(&v.to_bits().to_le_bytes());
        }
    }
    Ok(h)
}

/// Ranks as threads of one process, for tests of the data-parallel
/// semantics without an MPI installation: [`InProcess::group`] gives one
/// handle per rank; each call blocks until every rank has made it.
pub struct InProcess {
    rank: usize,
    shared: Arc<Group>,
}

struct Group {
    world: usize,
    state: Mutex<Round>,
    cv: Condvar,
}

#[derive(Default)]
struct Round {
    generation: u64,
    /// Each rank's buffer of the current call, by rank.
    parts: Vec<Option<Vec<f64>>>,
    result: Vec<f64>,
    failed: Option<String>,
}

impl InProcess {
    pub fn group(world: usize) -> Vec<InProcess> {
        let shared = Arc::new(Group {
            world,
            state: Mutex::new(Round {
                parts: vec![None; world],
                ..Round::default()
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| InProcess {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn reduce(&self, buf: &[f64]) -> std::result::Result<Vec<f64>, String> {
        let g = &self.shared;
        let mut s = g.state.lock().map_err(|_| "a rank panicked".to_string())?;
        if let Some(f) = &s.failed {
            return Err(f.clone());
        }
        if let Some(other) = s.parts.iter().flatten().find(|p| p.len() != buf.len()) {
            let msg = format!(
                "rank {} reduces {} values, another rank {}",
                self.rank,
                buf.len(),
                other.len()
            );
            s.failed = Some(msg.clone());
            g.cv.notify_all();
            return Err(msg);
        }
        s.parts[self.rank] = Some(buf.to_vec());
        let gen = s.generation;
        if s.parts.iter().all(Option::is_some) {
            // Summed in rank order, whatever the arrival order: runs repeat
            // bit for bit.
            let mut acc = vec![0f64; buf.len()];
            for p in s.parts.iter_mut() {
                for (a, x) in acc.iter_mut().zip(p.take().unwrap_or_default()) {
                    *a += x;
                }
            }
            s.result = acc;
            s.generation += 1;
            g.cv.notify_all();
        } else {
            while s.generation == gen && s.failed.is_none() {
                s = g.cv.wait(s).map_err(|_| "a rank panicked".to_string())?;
            }
            if let Some(f) = &s.failed {
                return Err(f.clone());
            }
        }
        Ok(s.result.clone())
    }

    /// Makes every waiting and later call fail (a rank that stopped).
    pub fn fail(&self, why: &str) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.failed = Some(format!("rank {} stopped: {why}", self.rank));
        }
        self.shared.cv.notify_all();
    }
}

impl Collective for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> std::result::Result<(), String> {
        let wide: Vec<f64> = buf.iter().map(|&x| x as f64).collect();
        let out = self.reduce(&wide)?;
        for (o, x) in buf.iter_mut().zip(out) {
            *o = x as f32;
        }
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> std::result::Result<(), String> {
        let out = self.reduce(buf)?;
        buf.copy_from_slice(&out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_each_batch_once() {
        for world in 1..=4 {
            for n in 0..=11 {
                let mut seen = vec![0; n];
                let mut prev_end = 0;
                for r in 0..world {
                    let s = share(n, r, world);
                    assert_eq!(s.start, prev_end);
                    prev_end = s.end;
                    assert!(s.len() <= n.div_ceil(world) && s.len() + 1 >= n / world.max(1));
                    for i in s {
                        seen[i] += 1;
                    }
                }
                assert_eq!(prev_end, n);
                assert!(seen.iter().all(|&c| c == 1), "n={n} world={world}");
            }
        }
    }

    #[test]
    fn in_process_sums_and_gathers() {
        let handles = InProcess::group(3);
        let out: Vec<(Vec<f32>, Vec<u64>)> = std::thread::scope(|s| {
            let joins: Vec<_> = handles
                .into_iter()
                .map(|h| {
                    s.spawn(move || {
                        let r = h.rank();
                        let d = Dist::new(Arc::new(h));
                        let mut v = vec![r as f32 + 1.0, 10.0 * r as f32];
                        d.sum(&mut v).unwrap();
                        let c = d
                            .gather_checksums(0xdead_beef_0000_0000 + r as u64)
                            .unwrap();
                        (v, c)
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        for (v, c) in out {
            assert_eq!(v, vec![6.0, 30.0]);
            assert_eq!(
                c,
                vec![
                    0xdead_beef_0000_0000,
                    0xdead_beef_0000_0001,
                    0xdead_beef_0000_0002
                ]
            );
        }
    }

    #[test]
    fn a_failed_rank_releases_the_others() {
        let mut handles = InProcess::group(2);
        let h1 = handles.pop().unwrap();
        let h0 = handles.pop().unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(move || h0.all_reduce_sum(&mut [1.0]));
            std::thread::sleep(std::time::Duration::from_millis(50));
            h1.fail("test");
            assert!(waiter
                .join()
                .unwrap()
                .unwrap_err()
                .contains("rank 1 stopped"));
        });
    }
}
