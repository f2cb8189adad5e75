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

/// Two timing events around work on a stream; destroyed when dropped (the
/// driver releases an event that is still pending once it completes).
pub(crate) struct EventPair {
    start: sys::CUevent,
    end: sys::CUevent,
}

impl EventPair {
    pub(crate) fn new() -> Result<Self, DriverError> {
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = result::event::create(flags)?;
        match result::event::create(flags) {
            Ok(end) => Ok(EventPair { start, end }),
            Err(e) => {
                // SAFETY: created above, never recorded.
                let _ = unsafe { result::event::destroy(start) };
                Err(e)
            }
        }
    }

    /// # Safety
    /// `stream` belongs to the context bound to the calling thread.
    pub(crate) unsafe fn record_start(&self, stream: sys::CUstream) -> Result<(), DriverError> {
        result::event::record(self.start, stream)
    }

    /// # Safety
    /// As [`EventPair::record_start`].
    pub(crate) unsafe fn record_end(&self, stream: sys::CUstream) -> Result<(), DriverError> {
        result::event::record(self.end, stream)
    }

    /// Waits for the end event; the device time between the two, in seconds.
    pub(crate) fn seconds(&self) -> Result<f64, DriverError> {
        // SAFETY: both events are live; elapsed is read after `end` completed.
        unsafe {
            result::event::synchronize(self.end)?;
            Ok(result::event::elapsed(self.start, self.end)? as f64 * 1e-3)
        }
    }
}

impl Drop for EventPair {
    fn drop(&mut self) {
        // SAFETY: owned handles, destroyed once.
        unsafe {
            let _ = result::event::destroy(self.start);
            let _ = result::event::destroy(self.end);
        }
    }
}

#[derive(Default)]
pub(crate) struct Profile {
    pending: Vec<(&'static str, EventPair)>,
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
        let span = EventPair::new()?;
        // SAFETY: the caller's stream, with its context bound.
        unsafe { span.record_start(stream)? };
        let out = f();
        unsafe { span.record_end(stream)? };
        self.pending.push((op, span));
        Ok(out)
    }

    /// Waits for every pending span and adds it to the totals.
    fn resolve(&mut self) -> Result<(), DriverError> {
        for (op, span) in self.pending.drain(..) {
            let seconds = span.seconds()?;
            let t = self.totals.entry(op).or_default();
            t.0 += 1;
            t.1 += seconds;
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
