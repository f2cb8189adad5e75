//! A spinning hand-off for splitting one GEMM over the cores.
//!
//! A lone GEMM of the encoder shapes takes 100-500 us. Handing half of it to a
//! sleeping rayon worker costs a wake-up (an inter-processor interrupt, tens of
//! microseconds on a virtual machine), and the caller then sleeps on a latch
//! and pays a second wake-up when the worker finishes late. Back-to-back GEMMs
//! (a backward pass, a benchmark loop) pay both every time, which halved the
//! second core's benefit on the 2-core machine. BLAS libraries avoid this by
//! letting their threads poll for a while after each job; so do these workers:
//! after a job they poll for new work for [`SPIN`], yielding the core to
//! anything else that wants it, and only then park. The caller computes the
//! first part itself and polls for the rest.
//!
//! The pool has `threads - 1` workers, created on first use. It serves one
//! GEMM at a time; a second caller that finds it busy (tests run GEMMs from
//! several threads) uses rayon instead.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle worker keeps polling before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// One parallel call: task indices `0..t` handed out through `next`.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    t: usize,
    next: AtomicUsize,
    /// Tasks not finished yet.
    left: AtomicUsize,
    panicked: AtomicBool,
}

struct Pool {
    /// The current job, null between jobs.
    job: AtomicPtr<Job>,
    /// Bumped for every job, so a worker can tell a new one from the last.
    epoch: AtomicU64,
    /// Workers that may be reading `job`: the caller waits for zero before the job goes away.
    readers: AtomicUsize,
    /// Workers parked (or about to park): the caller unparks them.
    parked: AtomicUsize,
    /// One caller at a time.
    busy: Mutex<()>,
}

static POOL: Pool = Pool {
    job: AtomicPtr::new(std::ptr::null_mut()),
    epoch: AtomicU64::new(0),
    readers: AtomicUsize::new(0),
    parked: AtomicUsize::new(0),
    busy: Mutex::new(()),
};
/// The workers, started on first use (`threads - 1` of them; none on one thread).
static WORKERS: OnceLock<Vec<Thread>> = OnceLock::new();

impl Job {
    /// Runs tasks until none is left to start.
    ///
    /// # Safety
    /// `self.f` is alive (the caller keeps it alive until `left` is zero).
    unsafe fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.t {
                return;
            }
            let f = &*self.f;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.left.fetch_sub(1, SeqCst);
        }
    }
}

fn worker() {
    let pool = &POOL;
    let mut seen = 0u64;
    let mut idle_since = Instant::now();
    loop {
        let epoch = pool.epoch.load(SeqCst);
        if epoch != seen {
            seen = epoch;
            pool.readers.fetch_add(1, SeqCst);
            let job = pool.job.load(SeqCst);
            if !job.is_null() {
                // SAFETY: the caller clears `job` and then waits for `readers` to drop to
                // zero before the job (and the closure it points to) goes away.
                unsafe { (*job).work() };
            }
            pool.readers.fetch_sub(1, SeqCst);
            idle_since = Instant::now();
        } else if idle_since.elapsed() < SPIN {
            std::hint::spin_loop();
            std::thread::yield_now();
        } else {
            pool.parked.fetch_add(1, SeqCst);
            // Re-check after announcing: a caller that bumped the epoch before it could
            // see `parked` did not unpark us.
            if pool.epoch.load(SeqCst) == seen {
                // The timeout only bounds the cost of a lost wake-up; waking without a
                // job goes straight back to sleep (`idle_since` is not reset).
                std::thread::park_timeout(Duration::from_millis(50));
            }
            pool.parked.fetch_sub(1, SeqCst);
        }
    }
}

fn workers() -> &'static [Thread] {
    WORKERS.get_or_init(|| {
        let n = rayon::current_num_threads().saturating_sub(1);
        // A worker that cannot be started just leaves the pool smaller (rayon covers the rest).
        (0..n)
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("mla-gemm-{i}"))
                    .spawn(worker)
                    .ok()
            })
            .map(|h| h.thread().clone())
            .collect()
    })
}

/// Runs `f(i)` for every `i < t` on the calling thread and the pool's workers,
/// returning when all are done. Returns `false` without running anything when
/// the pool cannot take the job (no workers, or another caller is using it);
/// the caller then runs the tasks some other way.
pub(crate) fn run(t: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
    let threads = workers();
    if threads.is_empty() {
        return false;
    }
    let Ok(_guard) = POOL.busy.try_lock() else {
        return false;
    };
    // SAFETY (lifetime erasure): the job is unpublished and every reader gone before
    // this function returns, so no worker touches `f` after it.
    let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    let job = Job {
        f,
        t,
        next: AtomicUsize::new(0),
        left: AtomicUsize::new(t),
        panicked: AtomicBool::new(false),
    };
    POOL.job.store(&job as *const Job as *mut Job, SeqCst);
    POOL.epoch.fetch_add(1, SeqCst);
    if POOL.parked.load(SeqCst) > 0 {
        for th in threads {
            th.unpark();
        }
    }
    // SAFETY: `f` is alive for this whole call.
    unsafe { job.work() };
    let mut spins = 0u32;
    while job.left.load(SeqCst) > 0 {
        spins += 1;
        if spins < 1 << 16 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    POOL.job.store(std::ptr::null_mut(), SeqCst);
    while POOL.readers.load(SeqCst) > 0 {
        std::hint::spin_loop();
    }
    if job.panicked.load(SeqCst) {
        panic!("a GEMM task panicked on a worker thread");
    }
    true
}
