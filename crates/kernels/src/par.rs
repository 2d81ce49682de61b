//! Parallel tasks writing disjoint parts of one output (leaf module).

/// An output buffer's pointer shared by parallel tasks that each write their own disjoint
/// elements of it (the GEMM's blocks, the tiled attention's rows).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<T>(pub *mut T);
// SAFETY: the users write disjoint elements (each says why at its use).
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// (A method, so that closures capture the `Sync` wrapper rather than its raw field.)
    pub fn ptr(&self) -> *mut T {
        self.0
    }
}
