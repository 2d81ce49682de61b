//! [`Nccl`]: the [`Collective`] of GPU ranks through NCCL (cudarc's binding), for processes
//! started by `torchrun`, a Kubernetes PyTorchJob, `srun` or `--ddp-backend nccl`.
//!
//! - **Meeting.** NCCL's own bootstrap: [`NcclLaunch::comm_id`] is handed to NCCL as
//!   `NCCL_COMM_ID`; rank 0 listens there and every rank derives the same id from it in
//!   `ncclGetUniqueId` (see [`crate::launch`]). No id travels through a transport of ours.
//! - **Host buffers.** The trait sums host `f32` buffers, because the trainer accumulates its
//!   gradients and keeps its AdamW state in host memory on every device. Each collective copies
//!   the buffer to the rank's GPU, runs there, and copies it back: correct, and as fast as the
//!   host copies allow, not as fast as device-resident gradients would be (not built).
//! - **Same bits on every rank.** Sums are `ncclReduce` to rank 0 followed by `ncclBroadcast`,
//!   as the MPI backend does with `MPI_Reduce` + `MPI_Bcast`: the sum is computed once, so
//!   replicas cannot apply AdamW to gradients that differ in the last bit. (`ncclAllReduce`
//!   computes each element once in its ring and tree algorithms, but NCCL does not promise it
//!   for every algorithm it may pick.)
//! - **Ending the others.** NCCL cannot end other processes as `MPI_Abort` does: a failing rank
//!   exits, and the launcher ends the rest (torchrun does; with `srun` pass
//!   `--kill-on-bad-exit=1`).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};

use crate::launch::NcclLaunch;
use crate::{Collective, Error, Result};

/// Elements per collective call: 1 GiB of `f32` on the device at a time.
const CHUNK: usize = 1 << 28;

/// One rank's NCCL communicator, on its own stream of the GPU it computes on.
pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
}

fn nccl_err(what: &str, e: cudarc::nccl::result::NcclError) -> Error {
    Error::Nccl(format!("{what}: {:?}", e.0))
}

fn cuda_err(what: &str, e: cudarc::driver::DriverError) -> Error {
    Error::Nccl(format!("{what}: {e}"))
}

impl Nccl {
    /// Joins the other ranks of `l` (blocks until all have arrived).
    pub fn init(l: &NcclLaunch) -> Result<Self> {
        let ctx = CudaContext::new(l.gpu)
            .map_err(|e| cuda_err(&format!("opening GPU {} for rank {}", l.gpu, l.rank), e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err("creating NCCL's stream", e))?;
        if let Some(id) = &l.comm_id {
            // Read by NCCL in ncclGetUniqueId and ncclCommInitRank below. Set before the
            // trainer starts any thread of its own.
            std::env::set_var("NCCL_COMM_ID", id);
        }
        let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        // ncclCommInitRank joins on the calling thread's current device.
        ctx.bind_to_thread()
            .map_err(|e| cuda_err(&format!("making GPU {} current", l.gpu), e))?;
        let comm = Comm::from_rank(stream.clone(), l.rank, l.size, id).map_err(|e| {
            nccl_err(
                &format!(
                    "rank {} of {} joining at {}",
                    l.rank,
                    l.size,
                    l.comm_id.as_deref().unwrap_or("a private address")
                ),
                e,
            )
        })?;
        Ok(Self { comm, stream })
    }

    /// Runs `op` on a device copy of each chunk of `buf`, then copies the chunk back.
    fn on_device<T>(
        &self,
        buf: &mut [T],
        what: &str,
        op: impl Fn(&mut cudarc::driver::CudaSlice<T>) -> Result<()>,
    ) -> Result<()>
    where
        T: DeviceRepr + ValidAsZeroBits + NcclType,
    {
        for chunk in buf.chunks_mut(CHUNK) {
            let mut d = self
                .stream
                .clone_htod(&*chunk)
                .map_err(|e| cuda_err(&format!("{what}: copy to the GPU"), e))?;
            op(&mut d)?;
            self.stream
                .memcpy_dtoh(&d, chunk)
                .map_err(|e| cuda_err(&format!("{what}: copy from the GPU"), e))?;
            self.stream.synchronize().map_err(|e| cuda_err(what, e))?;
        }
        Ok(())
    }

    fn sum_in_place<T>(&self, buf: &mut [T]) -> Result<()>
    where
        T: DeviceRepr + ValidAsZeroBits + NcclType,
    {
        self.on_device(buf, "sum", |d| {
            self.comm
                .reduce_in_place(d, &ReduceOp::Sum, 0)
                .map_err(|e| nccl_err("ncclReduce", e))?;
            self.comm
                .broadcast_in_place(d, 0)
                .map_err(|e| nccl_err("ncclBroadcast", e))?;
            Ok(())
        })
    }

    fn broadcast_in_place<T>(&self, root: usize, buf: &mut [T]) -> Result<()>
    where
        T: DeviceRepr + ValidAsZeroBits + NcclType,
    {
        let r = i32::try_from(root)
            .ok()
            .filter(|&r| (r as usize) < self.size())
            .ok_or_else(|| {
                Error::Nccl(format!("a broadcast from rank {root} of {}", self.size()))
            })?;
        self.on_device(buf, "broadcast", |d| {
            self.comm
                .broadcast_in_place(d, r)
                .map(|_| ())
                .map_err(|e| nccl_err("ncclBroadcast", e))
        })
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn size(&self) -> usize {
        self.comm.world_size()
    }
    fn name(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.sum_in_place(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.sum_in_place(buf)
    }
    fn broadcast_from(&self, root: usize, buf: &mut [f32]) -> Result<()> {
        self.broadcast_in_place(root, buf)
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<()> {
        let mut len = [buf.len() as u64];
        self.broadcast_in_place(0, &mut len[..])?;
        let len = usize::try_from(len[0])
            .map_err(|_| Error::Nccl(format!("a broadcast of {} bytes", len[0])))?;
        buf.resize(len, 0);
        if len > 0 {
            self.broadcast_in_place(0, &mut buf[..])?;
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        // NCCL has no barrier: a one-element sum returns on no rank before all have joined.
        self.sum_in_place(&mut [0f32][..])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
