//! `mla train --distributed` under `mpirun`: the job (MPI through the `mpi`
//! crate, behind this package's `mpi` feature) and what a rank does when it
//! fails. The data-parallel semantics live in `mla_models::dist` and the
//! trainer; this file only joins the job and carries sums over MPI.

use crate::CliResult;
use mla_models::dist::Collective;
use std::sync::Arc;

/// This process's place in an MPI job.
pub struct Job {
    rank: usize,
    world: usize,
    comm: Arc<dyn Collective>,
    #[cfg(feature = "mpi")]
    _universe: mpi::environment::Universe,
}

impl Job {
    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world(&self) -> usize {
        self.world
    }
    pub fn collective(&self) -> Arc<dyn Collective> {
        self.comm.clone()
    }

    /// Ends the whole job at once: `mpirun` stops every other rank, so none
    /// waits forever in a collective for this one.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::Communicator;
            self._universe.world().abort(code)
        }
        #[cfg(not(feature = "mpi"))]
        std::process::exit(code)
    }

    /// Test hook (undocumented on purpose): `MLA_TEST_KILL=RANK:EPOCH` makes
    /// that rank kill itself with SIGKILL as it starts that epoch, as an
    /// out-of-memory kill would.
    pub fn kill_at(&self) -> Option<usize> {
        let v = std::env::var("MLA_TEST_KILL").ok()?;
        let (r, e) = v.split_once(':')?;
        (r.parse::<usize>().ok()? == self.rank).then(|| e.parse().ok())?
    }
}

#[cfg(feature = "mpi")]
mod over_mpi {
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, CommunicatorCollectives};

    pub struct Mpi {
        pub world: SimpleCommunicator,
        /// The thread that joined the job: the only one that calls MPI
        /// (`Threading::Funneled`).
        pub main: std::thread::ThreadId,
    }

    // SAFETY: MPI_COMM_WORLD's handle is valid until MPI_Finalize (the
    // Universe, which outlives every use) and dropping it calls nothing;
    // every MPI call checks it runs on the joining thread and refuses
    // otherwise, so sharing the value never makes MPI run on another thread.
    unsafe impl Send for Mpi {}
    unsafe impl Sync for Mpi {}

    impl Mpi {
        fn on_main(&self) -> Result<(), String> {
            if std::thread::current().id() == self.main {
                Ok(())
            } else {
                Err("MPI called from a thread other than the one that joined the job".into())
            }
        }
    }

    impl mla_models::dist::Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world(&self) -> usize {
            self.world.size() as usize
        }
        // Open MPI reports a failed collective by aborting the job (its
        // default error handler), so these return Ok or never return.
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), String> {
            self.on_main()?;
            let send = buf.to_vec();
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), String> {
            self.on_main()?;
            let send = buf.to_vec();
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
    }
}

/// Joins the MPI job this process was started in (`mpirun -np W mla train
/// --distributed ...`; a plain start is a job of one).
#[cfg(feature = "mpi")]
pub fn join() -> CliResult<Job> {
    use mpi::traits::Communicator;
    // Only the main thread calls MPI (the loader and rayon threads never do).
    let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        .ok_or("--distributed: MPI was initialised already")?;
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    Ok(Job {
        rank,
        world: size,
        comm: Arc::new(over_mpi::Mpi {
            world,
            main: std::thread::current().id(),
        }),
        _universe: universe,
    })
}

#[cfg(not(feature = "mpi"))]
pub fn join() -> CliResult<Job> {
    Err("--distributed: this mla was built without MPI; build it with `cargo build --release -p mla-cli --features mpi` (needs Open MPI: apt install openmpi-bin libopenmpi-dev libclang-dev) and start it with `mpirun -np W mla train --distributed ...`".into())
}
