//! `sightline convert llama2c BIN TOK OUT`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Command {
    /// llama2.c `run.c` checkpoint + `tokenizer.bin` → HF directory (config.json,
    /// model.safetensors, tokenizer.json, tokenizer_config.json).
    Llama2c {
        /// Legacy (version-0) llama2.c checkpoint, e.g. stories260K.bin.
        bin: PathBuf,
        /// llama2.c tokenizer export, e.g. tok512.bin.
        tok: PathBuf,
        /// New output directory (must not exist).
        out: PathBuf,
    },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Llama2c { bin, tok, out } => {
            sightline_model::llama2c::convert_to_dir(&bin, &tok, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}
