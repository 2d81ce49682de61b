//! `sightline-collective`: the few collective operations data-parallel training needs, behind
//! one small trait, so the training loop does not care which library moves the numbers.
//!
//! - [`Collective`]: rank, world size, sums of `f32`/`f64` buffers over all ranks (and their
//!   mean), broadcast from rank 0 or any rank, barrier, abort.
//! - [`Single`]: one process; every operation is the identity. What `sightline train` uses when
//!   no launcher asked for several ranks.
//! - [`mpi::Mpi`] (feature `mpi`): MPI through rsmpi, for `mpirun -np N` / `srun --mpi=pmix`.
//!   Behind a feature because building it needs an MPI library and libclang installed.
//! - [`nccl::Nccl`] (feature `nccl`): NCCL through cudarc, for GPU ranks started by
//!   `torchrun`, a Kubernetes PyTorchJob or `srun`. Behind a feature because it links
//!   `libnccl` and the CUDA driver; the CUDA build (`scripts/cuda/build.sh`) turns it on.
//! - [`launch`]: reads the launcher's environment variables (Open MPI, MPICH/PMI, PMIx, Slurm,
//!   torchrun) to decide which of these a process needs, and refuses the launches it cannot
//!   serve instead of silently running N independent copies.
//!
//! Module order: `launch` uses the trait and `Single`; `mpi` and `nccl` use the trait.

pub mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

/// Errors of connecting to the other ranks and of collective operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The launcher's environment asks for something this build cannot do (one line, saying
    /// what to do instead).
    #[error("{0}")]
    Launch(String),
    /// The MPI library failed (initialisation, or a size the launcher contradicts).
    #[error("MPI: {0}")]
    Mpi(String),
    /// NCCL or the CUDA driver under it failed (the GPU, the bootstrap, a collective).
    #[error("NCCL: {0}")]
    Nccl(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The operations data-parallel training uses. Every rank must call the same operations in
/// the same order with buffers of the same length (as MPI requires); a rank that cannot go on
/// calls [`Collective::abort`] so the others do not wait forever.
pub trait Collective {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Which implementation this is (`single`, `mpi`), for logs.
    fn name(&self) -> &'static str;

    /// Replaces `buf` by its element-wise sum over all ranks. Every rank ends with the same
    /// bits (implementations must guarantee it: ranks that apply the same AdamW step to
    /// gradients differing in the last bit would drift apart).
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;

    /// [`Collective::all_reduce_sum`] for `f64` (counts and loss sums, exact in `f64`).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;

    /// Replaces `buf` by its element-wise mean over all ranks (the sum, scaled by 1/size).
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum(buf)?;
        let n = self.size();
        if n > 1 {
            let inv = 1.0 / n as f32;
            buf.iter_mut().for_each(|x| *x *= inv);
        }
        Ok(())
    }

    /// Replaces `buf` on every rank by rank 0's (lengths must agree).
    fn broadcast(&self, buf: &mut [f32]) -> Result<()> {
        self.broadcast_from(0, buf)
    }

    /// Replaces `buf` on every rank by rank `root`'s (lengths must agree): how a parameter
    /// updated by the one rank that holds its optimizer state reaches the others.
    fn broadcast_from(&self, root: usize, buf: &mut [f32]) -> Result<()>;

    /// Replaces `buf` on every rank by rank 0's bytes (any length on the other ranks).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<()>;

    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Ends every rank's process with `code` (MPI_Abort); for an error on one rank.
    fn abort(&self, code: i32) -> !;
}

/// One process: rank 0 of 1, every operation the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_from(&self, _root: usize, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Whether this build has MPI (the `mpi` feature).
pub const HAS_MPI: bool = cfg!(feature = "mpi");

/// Whether this build has NCCL (the `nccl` feature).
pub const HAS_NCCL: bool = cfg!(feature = "nccl");

/// The collective of a launch ([`launch::detect_for`]): [`Single`], MPI (initialised here, once
/// per process) or NCCL (joined on the launch's `gpu`, which the caller sets to the device it
/// opened). Launches this build cannot serve are refused in one line.
pub fn connect_to(l: launch::Launch) -> Result<Box<dyn Collective>> {
    match l {
        launch::Launch::Single => Ok(Box::new(Single)),
        launch::Launch::Mpi { size, var } => mpi_for(size, &var),
        launch::Launch::Nccl(n) => nccl_for(n),
    }
}

#[cfg(feature = "nccl")]
fn nccl_for(n: launch::NcclLaunch) -> Result<Box<dyn Collective>> {
    Ok(Box::new(nccl::Nccl::init(&n)?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_for(n: launch::NcclLaunch) -> Result<Box<dyn Collective>> {
    Err(Error::Launch(format!(
        "{} asks for {} GPU ranks over NCCL, but this sightline was built without NCCL, so \
         the ranks would train {} independent copies: on GPUs use the CUDA build \
         (scripts/cuda/build.sh, which has NCCL); on CPUs launch with `mpirun -np {}` and a \
         build with `--features mpi`",
        n.var, n.size, n.size, n.size
    )))
}

#[cfg(feature = "mpi")]
fn mpi_for(size: Option<usize>, var: &str) -> Result<Box<dyn Collective>> {
    let m = mpi::Mpi::init()?;
    if let Some(s) = size {
        if s != m.size() {
            return Err(Error::Mpi(format!(
                "{var} says {s} ranks but MPI_COMM_WORLD has {}",
                m.size()
            )));
        }
    }
    Ok(Box::new(m))
}

#[cfg(not(feature = "mpi"))]
fn mpi_for(size: Option<usize>, var: &str) -> Result<Box<dyn Collective>> {
    if size == Some(1) {
        return Ok(Box::new(Single));
    }
    let ranks = size.map_or("its ranks".to_string(), |s| format!("{s} ranks"));
    Err(Error::Launch(format!(
        "MPI was asked for ({var}) for {ranks}, but this sightline was built without MPI, so \
         they would train independent copies: build with `cargo build --release --features \
         mpi` (needs Open MPI and libclang: `apt-get install openmpi-bin libopenmpi-dev \
         libclang-dev`)"
    )))
}
