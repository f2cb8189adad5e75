//! Opt-in per-op device time (`MLA_CUDA_PROFILE=1`): two CUDA events around
//! every kernel launch, cuBLAS call and copy, summed by op name. Costs two
//! event records per launch, so the totals are for finding where the time
//! goes, not for quoting step times.

use cudarc::driver::{result, sys, DriverError};
use std::collections::HashMap;

/// A `'static` copy of `label`, made once per distinct label (profiling
/// labels with shapes in them; there are few distinct ones per run).
pub(crate) fn intern(label: String) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<std::collections::HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(&n) = names.get(label.as_str()) {
        return n;
    }
    let n: &'static str = Box::leak(label.into_boxed_str());
    names.insert(n);
    n
}

/// Pending spans are resolved (with a wait for the stream) beyond this many.
const MAX_PENDING: usize = 8192;

/// Device time of one op name over the profiled run.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    pub op: String,
    pub calls: usize,
    pub seconds: f64,
}

#[derive(Default)]
pub(crate) struct Profile {
    pending: Vec<(&'static str, sys::CUevent, sys::CUevent)>,
    totals: HashMap<&'static str, (usize, f64)>,
}

// SAFETY: events are plain handles used only with the device's context bound, under its mutex.
unsafe impl Send for Profile {}

impl Profile {
    /// Whether the environment asks for profiling.
    pub(crate) fn wanted() -> bool {
        std::env::var("MLA_CUDA_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0")
    }

    /// Records an event on `stream` before `f` and one after it.
    pub(crate) fn span<R>(
        &mut self,
        op: &'static str,
        stream: sys::CUstream,
        f: impl FnOnce() -> R,
    ) -> Result<R, DriverError> {
        if self.pending.len() >= MAX_PENDING {
            self.resolve()?;
        }
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let (start, end) = (result::event::create(flags)?, result::event::create(flags)?);
        // SAFETY: fresh events, recorded on the caller's stream with its context bound.
        unsafe { result::event::record(start, stream)? };
        let out = f();
        unsafe { result::event::record(end, stream)? };
        self.pending.push((op, start, end));
        Ok(out)
    }

    /// Waits for every pending span and adds it to the totals.
    fn resolve(&mut self) -> Result<(), DriverError> {
        for (op, start, end) in self.pending.drain(..) {
            // SAFETY: both events were recorded in `span`; they are destroyed once read.
            let ms = unsafe {
                let ms = result::event::synchronize(end)
                    .and_then(|_| result::event::elapsed(start, end));
                let _ = result::event::destroy(start);
                let _ = result::event::destroy(end);
                ms?
            };
            let t = self.totals.entry(op).or_default();
            t.0 += 1;
            t.1 += ms as f64 * 1e-3;
        }
        Ok(())
    }

    /// Totals so far, largest first; clears them.
    pub(crate) fn take(&mut self) -> Result<Vec<OpTime>, DriverError> {
        self.resolve()?;
        let mut v: Vec<OpTime> = self
            .totals
            .drain()
            .map(|(op, (calls, seconds))| OpTime {
                op: op.to_string(),
                calls,
                seconds,
            })
            .collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(v)
    }
}
