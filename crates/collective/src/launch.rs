//! Which launcher started this process, from its environment variables: the decision between
//! one process and MPI, made before any MPI call (initialising MPI in a plain `sightline train`
//! would make every run depend on a working MPI installation).
//!
//! | variables | launcher | result |
//! | --- | --- | --- |
//! | `OMPI_COMM_WORLD_SIZE` | Open MPI's `mpirun`/`mpiexec` | MPI, that many ranks |
//! | `PMI_SIZE` | MPICH/Intel MPI (Hydra), `srun --mpi=pmi2` | MPI, that many ranks |
//! | `PMIX_RANK` | `srun --mpi=pmix`, PRRTE | MPI (MPI says how many) |
//! | `SLURM_STEP_NUM_TASKS` > 1 without the above | `srun` with no MPI plugin | refused: the ranks could not find each other |
//! | `WORLD_SIZE` > 1 without the above | `torchrun` and the like | refused: that needs NCCL's rendezvous (`MASTER_ADDR`), which is not built |
//! | none of these, or a size of 1 | a plain command | one process |

use crate::{Error, Result};

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// One process.
    Single,
    /// An MPI launcher started this process; `size` when its variables say it, `var` names
    /// the variable seen (for messages).
    Mpi { size: Option<usize>, var: String },
}

/// Reads the launcher's variables through `env` (`std::env::var` in the binary, a map in
/// tests). A size that is not a positive number is an error naming the variable.
pub fn detect(env: impl Fn(&str) -> Option<String>) -> Result<Launch> {
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        if let Some(v) = env(var) {
            let size = parse_size(var, &v)?;
            return Ok(Launch::Mpi {
                size: Some(size),
                var: format!("{var}={size}"),
            });
        }
    }
    if env("PMIX_RANK").is_some() {
        return Ok(Launch::Mpi {
            size: None,
            var: "PMIX_RANK".into(),
        });
    }
    if let Some(v) = env("SLURM_STEP_NUM_TASKS") {
        let n = parse_size("SLURM_STEP_NUM_TASKS", &v)?;
        if n > 1 {
            return Err(Error::Launch(format!(
                "srun started {n} tasks (SLURM_STEP_NUM_TASKS={n}) without an MPI \
                 process-management interface (no PMI_SIZE or PMIX_RANK), so they cannot find \
                 each other: launch with `srun --mpi=pmix` (or `--mpi=pmi2`) and a sightline \
                 built with `--features mpi`"
            )));
        }
    }
    if let Some(v) = env("WORLD_SIZE") {
        let n = parse_size("WORLD_SIZE", &v)?;
        if n > 1 {
            return Err(Error::Launch(format!(
                "WORLD_SIZE={n} (a torchrun-style launcher) asks for {n} ranks, but sightline's \
                 only multi-process backend is MPI (NCCL is not built): launch with `mpirun -np \
                 {n} sightline train ...` (a build with `--features mpi`), or unset WORLD_SIZE \
                 for one process"
            )));
        }
    }
    Ok(Launch::Single)
}

fn parse_size(var: &str, v: &str) -> Result<usize> {
    match v.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Error::Launch(format!(
            "{var}={v:?} is not a positive number of ranks"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Launch> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect(|k| map.get(k).cloned())
    }

    #[test]
    fn launchers_are_told_apart() {
        assert_eq!(with(&[]).ok(), Some(Launch::Single));
        assert_eq!(
            with(&[("OMPI_COMM_WORLD_SIZE", "4"), ("WORLD_SIZE", "4")]).ok(),
            Some(Launch::Mpi {
                size: Some(4),
                var: "OMPI_COMM_WORLD_SIZE=4".into()
            })
        );
        assert!(matches!(
            with(&[("PMI_SIZE", "2")]),
            Ok(Launch::Mpi { size: Some(2), .. })
        ));
        assert!(matches!(
            with(&[("PMIX_RANK", "0"), ("SLURM_STEP_NUM_TASKS", "8")]),
            Ok(Launch::Mpi { size: None, .. })
        ));
        // One task or one rank is one process.
        assert_eq!(
            with(&[
                ("WORLD_SIZE", "1"),
                ("RANK", "0"),
                ("SLURM_STEP_NUM_TASKS", "1")
            ])
            .ok(),
            Some(Launch::Single)
        );
    }

    #[test]
    fn launches_without_mpi_are_refused_in_one_line() {
        let e = with(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("WORLD_SIZE=2") && e.contains("mpirun -np 2"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = with(&[("SLURM_STEP_NUM_TASKS", "3")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--mpi=pmix"), "{e}");
        let e = with(&[("OMPI_COMM_WORLD_SIZE", "two")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("OMPI_COMM_WORLD_SIZE=\"two\""), "{e}");
    }
}
