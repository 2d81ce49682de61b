//! Which launcher started this process, from its environment variables: the decision between
//! one process, MPI and NCCL, made before any MPI or NCCL call (initialising MPI in a plain
//! `sightline train` would make every run depend on a working MPI installation).
//!
//! With `--ddp-backend auto` (the default):
//!
//! | variables | launcher | result |
//! | --- | --- | --- |
//! | `OMPI_COMM_WORLD_SIZE` | Open MPI's `mpirun`/`mpiexec` | MPI, that many ranks |
//! | `PMI_SIZE` | MPICH/Intel MPI (Hydra), `srun --mpi=pmi2` | MPI, that many ranks |
//! | `PMIX_RANK` | `srun --mpi=pmix`, PRRTE | MPI (MPI says how many) |
//! | `WORLD_SIZE` > 1 (`RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) | `torchrun`, Kubernetes' PyTorchJob, `accelerate launch` | NCCL, that many GPU ranks |
//! | `SLURM_STEP_NUM_TASKS` > 1 with `MASTER_ADDR` and `MASTER_PORT` | `srun` with no MPI plugin | NCCL (`SLURM_PROCID`, `SLURM_LOCALID`) |
//! | `SLURM_STEP_NUM_TASKS` > 1 without those | `srun` with no MPI plugin | refused: the ranks could not find each other |
//! | none of these, or a size of 1 | a plain command | one process |
//!
//! `--ddp-backend nccl` asks for NCCL whatever the launcher (one rank when no variable says
//! more: how a one-GPU machine runs the NCCL path), `--ddp-backend mpi` for MPI.
//!
//! NCCL's ranks meet through NCCL's own bootstrap, `NCCL_COMM_ID=host:port`: rank 0 listens
//! there and the others connect (NCCL reads the variable in `ncclGetUniqueId` and
//! `ncclCommInitRank`), so no id has to be passed around by a transport of ours. The address is
//! the user's `NCCL_COMM_ID` when set, else `MASTER_ADDR:MASTER_PORT`, except under torchrun
//! (`TORCHELASTIC_RUN_ID` set), whose agent already listens on `MASTER_PORT` with its own
//! store: there it is `MASTER_ADDR:MASTER_PORT+1`.

use crate::{Error, Result};

/// Which collective library `--ddp-backend` asks for (HF Trainer's `ddp_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Decided by the launcher's variables (the table above).
    #[default]
    Auto,
    /// MPI, also without an MPI launcher (then one rank: MPI's singleton start).
    Mpi,
    /// NCCL, also without a launcher (then one rank).
    Nccl,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "mpi" => Ok(Self::Mpi),
            "nccl" => Ok(Self::Nccl),
            _ => Err(format!("`{s}`: expected auto, mpi or nccl")),
        }
    }
}

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// One process.
    Single,
    /// An MPI launcher started this process; `size` when its variables say it, `var` names
    /// the variable seen (for messages).
    Mpi { size: Option<usize>, var: String },
    /// A rank of a GPU job whose ranks meet through NCCL.
    Nccl(NcclLaunch),
}

/// One rank of an NCCL launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NcclLaunch {
    /// This process's rank, `0..size`.
    pub rank: usize,
    /// Number of ranks.
    pub size: usize,
    /// The rank's index among the ranks on its machine: the GPU it takes by default.
    pub local_rank: usize,
    /// The GPU (CUDA ordinal) the rank computes on: `local_rank` unless the caller opened
    /// another one (`--device cuda:N`).
    pub gpu: usize,
    /// `host:port` where NCCL's bootstrap root (rank 0) listens, given to NCCL as
    /// `NCCL_COMM_ID`; `None` for a single rank with no address set (NCCL then makes a private
    /// one).
    pub comm_id: Option<String>,
    /// The variables the rank numbers came from, for messages.
    pub var: String,
}

/// [`detect_for`] with [`Backend::Auto`].
pub fn detect(env: impl Fn(&str) -> Option<String>) -> Result<Launch> {
    detect_for(Backend::Auto, env)
}

/// Reads the launcher's variables through `env` (`std::env::var` in the binary, a map in
/// tests). A size or rank that is not a number is an error naming the variable.
pub fn detect_for(backend: Backend, env: impl Fn(&str) -> Option<String>) -> Result<Launch> {
    match backend {
        Backend::Auto => auto(&env),
        Backend::Mpi => Ok(mpi_launch(&env)?.unwrap_or(Launch::Mpi {
            size: None,
            var: "--ddp-backend mpi".into(),
        })),
        Backend::Nccl => {
            let ranks = nccl_ranks(&env)?.unwrap_or(Ranks {
                rank: 0,
                size: 1,
                local_rank: 0,
                var: "--ddp-backend nccl".into(),
            });
            nccl_launch(ranks, &env).map(Launch::Nccl)
        }
    }
}

fn auto(env: &impl Fn(&str) -> Option<String>) -> Result<Launch> {
    if let Some(l) = mpi_launch(env)? {
        return Ok(l);
    }
    if let Some(v) = env("SLURM_STEP_NUM_TASKS") {
        let n = parse_size("SLURM_STEP_NUM_TASKS", &v)?;
        if n > 1 && (env("MASTER_ADDR").is_none() || env("MASTER_PORT").is_none()) {
            return Err(Error::Launch(format!(
                "srun started {n} tasks (SLURM_STEP_NUM_TASKS={n}) without an MPI \
                 process-management interface (no PMI_SIZE or PMIX_RANK) and without \
                 MASTER_ADDR/MASTER_PORT, so they cannot find each other: on CPUs launch \
                 with `srun --mpi=pmix` (or `--mpi=pmi2`) and a sightline built with \
                 `--features mpi`; on GPUs export MASTER_ADDR (the first node) and \
                 MASTER_PORT for NCCL"
            )));
        }
    }
    match nccl_ranks(env)? {
        Some(r) if r.size > 1 => nccl_launch(r, env).map(Launch::Nccl),
        _ => Ok(Launch::Single),
    }
}

/// An MPI launcher's variables, if any.
fn mpi_launch(env: &impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        if let Some(v) = env(var) {
            let size = parse_size(var, &v)?;
            return Ok(Some(Launch::Mpi {
                size: Some(size),
                var: format!("{var}={size}"),
            }));
        }
    }
    if env("PMIX_RANK").is_some() {
        return Ok(Some(Launch::Mpi {
            size: None,
            var: "PMIX_RANK".into(),
        }));
    }
    Ok(None)
}

/// Rank numbers read off a launcher.
struct Ranks {
    rank: usize,
    size: usize,
    local_rank: usize,
    var: String,
}

/// The rank numbers from torchrun-style variables, else Slurm's, else Open MPI's; `None` when
/// no launcher set any.
fn nccl_ranks(env: &impl Fn(&str) -> Option<String>) -> Result<Option<Ranks>> {
    let sets = [
        ("WORLD_SIZE", "RANK", "LOCAL_RANK"),
        ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID"),
        (
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        ),
    ];
    for (size_var, rank_var, local_var) in sets {
        let Some(v) = env(size_var) else { continue };
        let size = parse_size(size_var, &v)?;
        let index = |var: &str| -> Result<Option<usize>> {
            env(var)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| Error::Launch(format!("{var}={v:?} is not a rank number")))
                })
                .transpose()
        };
        let rank = match index(rank_var)? {
            Some(r) => r,
            None if size == 1 => 0,
            None => {
                return Err(Error::Launch(format!(
                    "{size_var}={size} but {rank_var} is not set: which rank is this process?"
                )))
            }
        };
        if rank >= size {
            return Err(Error::Launch(format!(
                "{rank_var}={rank} is not a rank of {size_var}={size}"
            )));
        }
        // One process per machine (Kubernetes' PyTorchJob) sets no local rank.
        let local_rank = index(local_var)?.unwrap_or(0);
        return Ok(Some(Ranks {
            rank,
            size,
            local_rank,
            var: format!("{size_var}={size} {rank_var}={rank}"),
        }));
    }
    Ok(None)
}

/// Where NCCL's ranks meet: the user's `NCCL_COMM_ID`, else `MASTER_ADDR:MASTER_PORT` (`+1`
/// under torchrun, whose agent listens on `MASTER_PORT`).
fn nccl_launch(r: Ranks, env: &impl Fn(&str) -> Option<String>) -> Result<NcclLaunch> {
    let comm_id = match (env("NCCL_COMM_ID"), env("MASTER_ADDR"), env("MASTER_PORT")) {
        (Some(id), _, _) => Some(id),
        (None, Some(addr), Some(port)) => {
            let p = port
                .trim()
                .parse::<u16>()
                .map_err(|_| Error::Launch(format!("MASTER_PORT={port:?} is not a port number")))?;
            let p = if env("TORCHELASTIC_RUN_ID").is_some() {
                p.checked_add(1).ok_or_else(|| {
                    Error::Launch(format!(
                        "MASTER_PORT={p}: under torchrun NCCL's ranks meet on MASTER_PORT+1, \
                         which does not exist; choose a lower --master-port"
                    ))
                })?
            } else {
                p
            };
            let addr = addr.trim();
            // An IPv6 address needs brackets before its port.
            Some(if addr.contains(':') && !addr.starts_with('[') {
                format!("[{addr}]:{p}")
            } else {
                format!("{addr}:{p}")
            })
        }
        _ if r.size > 1 => {
            return Err(Error::Launch(format!(
                "{} asks for {} NCCL ranks, but they have no address to meet at: set \
                 MASTER_ADDR and MASTER_PORT (rank 0's machine and a free port), or \
                 NCCL_COMM_ID=host:port",
                r.var, r.size
            )))
        }
        _ => None,
    };
    Ok(NcclLaunch {
        rank: r.rank,
        size: r.size,
        local_rank: r.local_rank,
        gpu: r.local_rank,
        comm_id,
        var: r.var,
    })
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

    fn err(vars: &[(&str, &str)]) -> String {
        with(vars).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn launches_that_cannot_meet_are_refused_in_one_line() {
        let e = err(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")]);
        assert!(
            e.contains("WORLD_SIZE=2") && e.contains("MASTER_ADDR"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = err(&[("SLURM_STEP_NUM_TASKS", "3")]);
        assert!(e.contains("--mpi=pmix") && e.contains("MASTER_ADDR"), "{e}");
        let e = err(&[("OMPI_COMM_WORLD_SIZE", "two")]);
        assert!(e.contains("OMPI_COMM_WORLD_SIZE=\"two\""), "{e}");
        let e = err(&[
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ]);
        assert!(e.contains("RANK is not set"), "{e}");
        let e = err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("NCCL_COMM_ID", "h:1")]);
        assert!(e.contains("RANK=2 is not a rank of WORLD_SIZE=2"), "{e}");
        let e = err(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "http"),
        ]);
        assert!(e.contains("MASTER_PORT=\"http\""), "{e}");
    }

    #[test]
    fn gpu_launchers_become_nccl_ranks() {
        // torchrun: its agent holds MASTER_PORT, so NCCL's root takes the next port.
        let l = with(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "x"),
        ]);
        let Ok(Launch::Nccl(n)) = l else {
            panic!("{l:?}")
        };
        assert_eq!((n.rank, n.size, n.local_rank, n.gpu), (3, 4, 1, 1));
        assert_eq!(n.comm_id.as_deref(), Some("node0:29501"));
        // Kubernetes' PyTorchJob: no agent, no LOCAL_RANK (one process per pod).
        let l = with(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "fd00::1"),
            ("MASTER_PORT", "23456"),
        ]);
        let Ok(Launch::Nccl(n)) = l else {
            panic!("{l:?}")
        };
        assert_eq!((n.rank, n.local_rank), (1, 0));
        assert_eq!(n.comm_id.as_deref(), Some("[fd00::1]:23456"));
        // srun without an MPI plugin, given an address; the user's NCCL_COMM_ID wins.
        let l = with(&[
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "n1"),
            ("MASTER_PORT", "6000"),
            ("NCCL_COMM_ID", "10.0.0.1:7000"),
        ]);
        let Ok(Launch::Nccl(n)) = l else {
            panic!("{l:?}")
        };
        assert_eq!((n.rank, n.size, n.local_rank), (5, 8, 1));
        assert_eq!(n.comm_id.as_deref(), Some("10.0.0.1:7000"));
    }

    #[test]
    fn a_named_backend_overrides_the_guess() {
        let map = |vars: &[(&str, &str)]| {
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        // NCCL with no launcher: one rank with a private address.
        let none = map(&[]);
        let l = detect_for(Backend::Nccl, |k| none.get(k).cloned());
        assert_eq!(
            l.ok(),
            Some(Launch::Nccl(NcclLaunch {
                rank: 0,
                size: 1,
                local_rank: 0,
                gpu: 0,
                comm_id: None,
                var: "--ddp-backend nccl".into()
            }))
        );
        // NCCL under mpirun takes Open MPI's rank numbers.
        let ompi = map(&[
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "9"),
        ]);
        let l = detect_for(Backend::Nccl, |k| ompi.get(k).cloned());
        assert!(
            matches!(&l, Ok(Launch::Nccl(n)) if n.rank == 1 && n.gpu == 1 && n.comm_id.as_deref() == Some("a:9")),
            "{l:?}"
        );
        // MPI with no launcher: MPI's own count.
        assert!(matches!(
            detect_for(Backend::Mpi, |k| none.get(k).cloned()),
            Ok(Launch::Mpi { size: None, .. })
        ));
        assert_eq!("nccl".parse::<Backend>(), Ok(Backend::Nccl));
        assert!("gloo"
            .parse::<Backend>()
            .unwrap_err()
            .contains("auto, mpi or nccl"));
    }
}
