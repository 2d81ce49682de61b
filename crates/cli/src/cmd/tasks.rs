//! `sightline tasks`: every task with its version, size and request hash.

use anyhow::Result;
use sightline_eval::data::DataSource;
use sightline_eval::evaluator::{requests_hash, select_docs, EvalOptions};
use sightline_eval::tasks::{all, GROUPS};

pub fn run() -> Result<()> {
    let opts = EvalOptions {
        data: DataSource::default(),
        ..Default::default()
    };
    println!("| task | version | docs | requests | hash (sha256 of requests, first 16) |");
    println!("|---|---:|---:|---:|---|");
    for t in all() {
        // Tasks whose data the user supplies (vqav2, mathqa's training pool) have no documents
        // here.
        let (n, docs) = match select_docs(t.as_ref(), &opts) {
            Ok(x) => x,
            Err(e) if t.needs_images() || t.name() == "mathqa" => {
                println!(
                    "| {} | {} | user-supplied | – | – ({e}) |",
                    t.name(),
                    t.version()
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let reqs = docs
            .iter()
            .map(|(_, d)| t.requests(d))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let count: usize = reqs.iter().map(Vec::len).sum();
        println!(
            "| {} | {} | {} | {} | {} |",
            t.name(),
            t.version(),
            n,
            count,
            &requests_hash(&reqs)[..16]
        );
    }
    println!();
    for (g, members) in GROUPS {
        println!("group {g}: {}", members.join(", "));
    }
    Ok(())
}
