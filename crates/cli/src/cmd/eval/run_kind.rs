//! What kind of `sightline eval` run the flags ask for (text or image tasks, a corruption,
//! the image protocol), checked before any model is loaded.

use anyhow::{bail, Result};
use sightline_eval::mm_lm::ImageCorruption;
use sightline_eval::protocol::Protocol;

use super::{parse_corruption, Args, ProtocolArg};

/// What kind of run the arguments ask for, checked before any model is loaded.
pub(super) struct RunKind {
    /// Image tasks (on a LLaVA model) rather than text tasks.
    pub(super) multimodal: bool,
    pub(super) corruption: Option<ImageCorruption>,
    pub(super) protocol: Protocol,
}

impl RunKind {
    /// Refuses mixed text and image tasks, image tasks on a text model (with `check_model`;
    /// a merge loads no model), a missing `--image-root`, and `--corrupt` without image tasks
    /// (in that order).
    pub(super) fn check(
        a: &Args,
        tasks: &[Box<dyn sightline_eval::task::Task>],
        check_model: bool,
    ) -> Result<Self> {
        let image_tasks: Vec<&str> = tasks
            .iter()
            .filter(|t| t.needs_images())
            .map(|t| t.name())
            .collect();
        let multimodal = !image_tasks.is_empty();
        if multimodal && image_tasks.len() != tasks.len() {
            bail!(
                "image tasks ({}) and text tasks run in separate `sightline eval` calls",
                image_tasks.join(", ")
            );
        }
        if check_model && multimodal && !a.model.is_multimodal()? {
            if let Some((_, name)) = sightline_openai::api_lm::ApiKind::parse(&a.model.model) {
                bail!(
                    "{}: image tasks ({}) go through chat messages with image parts; use openai-chat:{name}",
                    a.model.model,
                    image_tasks.join(", ")
                );
            }
            bail!(
                "{} is a text-only model: image tasks ({}) need a LLaVA checkpoint, or --mm-projector (and --vision-tower) on a LLaMA one",
                a.model.model,
                image_tasks.join(", ")
            );
        }
        if let Some(root) = &a.image_root {
            if !root.is_dir() {
                bail!("--image-root {}: not a directory", root.display());
            }
        }
        let corruption = a
            .corrupt
            .as_deref()
            .map(|s| parse_corruption(s, a.corrupt_seed))
            .transpose()?;
        if corruption.is_some() && !multimodal {
            bail!(
                "--corrupt applies to image tasks only ({} has none)",
                a.tasks
            );
        }
        let protocol = match a.protocol {
            ProtocolArg::Sbt => Protocol::Sbt,
            ProtocolArg::Greedy => Protocol::Greedy,
        };
        Ok(Self {
            multimodal,
            corruption,
            protocol,
        })
    }

    /// Results named by corruption: runs at several corruptions can share --output.
    pub(super) fn suffix(&self) -> String {
        self.corruption
            .map(|c| format!("_{}_{}", c.kind.name(), c.severity))
            .unwrap_or_default()
    }

    pub(super) fn results_name(&self) -> String {
        format!("results{}.json", self.suffix())
    }
}
