//! [`Mpi`]: the [`Collective`] of `MPI_COMM_WORLD` through rsmpi (the `mpi` crate), for
//! processes started by `mpirun`, `mpiexec` or `srun --mpi=pmix`.
//!
//! Sums are `MPI_Reduce` to rank 0 followed by `MPI_Bcast`, not `MPI_Allreduce`: the MPI
//! standard lets `MPI_Allreduce` give different ranks results that differ in the last bit
//! (each may add in its own order), and replicas that apply AdamW to different bits drift
//! apart. Reduce + broadcast computes the sum once. Buffers go in chunks of 2^26 elements, well
//! inside MPI's `int` counts.

use ::mpi::collective::SystemOperation;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::{Communicator, Root};
use ::mpi::Threading;

use crate::{Collective, Error, Result};

const CHUNK: usize = 1 << 26;

/// `MPI_COMM_WORLD`, initialised with `MPI_THREAD_FUNNELED` (compute threads exist, only the
/// main thread calls MPI). Dropping it finalises MPI.
pub struct Mpi {
    // Dropped before the universe (fields drop in order): the world is a handle into it.
    world: SimpleCommunicator,
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI; an error if this process already did.
    pub fn init() -> Result<Self> {
        let (universe, _) = ::mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Mpi("MPI is already initialised in this process".into()))?;
        let world = universe.world();
        Ok(Self {
            world,
            _universe: universe,
        })
    }

    fn sum_in_place<T>(&self, buf: &mut [T]) -> Result<()>
    where
        T: ::mpi::datatype::Equivalence + Copy,
    {
        let root = self.world.process_at_rank(0);
        for chunk in buf.chunks_mut(CHUNK) {
            if self.world.rank() == 0 {
                let send = chunk.to_vec();
                root.reduce_into_root(&send[..], chunk, SystemOperation::sum());
            } else {
                root.reduce_into(&*chunk, SystemOperation::sum());
            }
            root.broadcast_into(chunk);
        }
        Ok(())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank().max(0) as usize
    }
    fn size(&self) -> usize {
        self.world.size().max(1) as usize
    }
    fn name(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.sum_in_place(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.sum_in_place(buf)
    }
    fn broadcast_from(&self, root: usize, buf: &mut [f32]) -> Result<()> {
        let rank = i32::try_from(root)
            .ok()
            .filter(|&r| r < self.world.size())
            .ok_or_else(|| {
                Error::Mpi(format!("a broadcast from rank {root} of {}", self.size()))
            })?;
        let root = self.world.process_at_rank(rank);
        for chunk in buf.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = [buf.len() as u64];
        root.broadcast_into(&mut len[..]);
        let len = usize::try_from(len[0])
            .map_err(|_| Error::Mpi(format!("a broadcast of {} bytes", len[0])))?;
        buf.resize(len, 0);
        for chunk in buf.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        ::mpi::traits::CommunicatorCollectives::barrier(&self.world);
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
