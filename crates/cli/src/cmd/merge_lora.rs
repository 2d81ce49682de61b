//! `sightline merge-lora --model BASE --adapter DIR --output OUT`: fold a PEFT LoRA adapter
//! into its base model, refusing if merged and unmerged logits differ by more than 1e-4.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The base model the adapter was trained on: a directory or Hub id (`org/name[@rev]`).
    #[arg(long)]
    model: PathBuf,
    /// The PEFT adapter: a directory or Hub id.
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the merged checkpoint (must not exist).
    #[arg(long)]
    output: PathBuf,
    /// Largest allowed |merged − unmerged| logit on the probe inputs.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let r = sightline_train::merge::merge_lora(&a.model, &a.adapter, &a.output, a.tolerance)?;
    println!(
        "merged {} LoRA layers into {}; merged vs unmerged logits differ by at most {:.2e} on \
         {} probe tokens",
        r.modules,
        r.output.display(),
        r.max_logit_diff,
        r.probe_tokens
    );
    Ok(())
}
