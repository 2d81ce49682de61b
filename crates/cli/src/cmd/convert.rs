//! `sightline convert llama2c BIN TOK OUT` and `sightline convert builtin NAME OUT`.

use std::path::PathBuf;

use anyhow::{bail, Result};
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
    /// A model built into the binary → a directory: `stories260k` (HF LLaMA directory) or
    /// `tiny-clip` (a CLIP vision tower with seeded random weights, for the embedded study).
    Builtin {
        /// stories260k or tiny-clip (with or without the `builtin:` prefix).
        name: String,
        /// New output directory (must not exist).
        out: PathBuf,
        /// stories260k: declare this context length instead of 512 (RoPE has no learned
        /// positions: the weights are unchanged, longer prompts become possible).
        #[arg(long, value_name = "N")]
        max_position_embeddings: Option<usize>,
    },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Llama2c { bin, tok, out } => {
            sightline_model::llama2c::convert_to_dir(&bin, &tok, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Builtin {
            name,
            out,
            max_position_embeddings,
        } => {
            let name = name.strip_prefix("builtin:").unwrap_or(&name);
            if sightline_vision::builtin::BUILTIN_TOWERS.contains(&name) {
                if max_position_embeddings.is_some() {
                    bail!(
                        "--max-position-embeddings applies to language models, not builtin:{name}"
                    );
                }
                sightline_vision::builtin::write_dir(name, &out)?;
            } else {
                sightline_model::builtin::write_dir(name, &out, max_position_embeddings)?;
            }
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}
