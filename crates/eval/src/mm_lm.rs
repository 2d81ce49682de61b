//! A LLaVA model behind the evaluator's [`LanguageModel`] interface, for image tasks.
//!
//! Requests are tokenized first and sorted by (spliced length, image), then handled in windows
//! of `16 × batch_size`: each window decodes its images (through [`crate::mm::load_image`], the
//! one hook for transforming decoded images), computes each distinct image's features once,
//! splices the prompts and hands them to [`sightline_vision::batch_generate`], which batches
//! equal-length prompts. Sorting first makes nearly every batch full (evaluation prompts differ
//! by a few question tokens) and keeps the questions about one image together; the window
//! bounds memory (spliced prompts are `len × hidden` each).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use sightline_vision::batch_generate::{BatchPrompt, Decoding, Sampling};
use sightline_vision::llava::{Llava, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX};

use crate::error::{Error, Result};
use crate::lm::{DoneSink, ImageGen, LanguageModel, TextSink, WorkUnit};
use crate::mm::load_image;
use crate::protocol::MmDecoding;

/// An ImageNet-C corruption applied to every image of a run (`--corrupt NAME:S`).
#[derive(Debug, Clone, Copy)]
pub struct ImageCorruption {
    pub kind: sightline_corrupt::Corruption,
    pub severity: u8,
    /// Base seed; each image draws from `derive_seed(seed, file name, kind, severity)`.
    pub seed: u64,
}

impl ImageCorruption {
    /// Spec E8.1 (its ASSUMPTION for SBT's unpublished script): resize the shortest side to 224
    /// (bicubic) and center-crop 224, CLIP's own geometry, then corrupt. The model's processor
    /// then sees a 224×224 image, as it would see SBT's saved PNGs.
    pub fn apply(
        &self,
        rgb: &sightline_vision::RgbImage,
        image_ref: &str,
    ) -> Result<sightline_vision::RgbImage> {
        use sightline_vision::preprocess::{resize_and_crop, AspectMode, ImageProcessorConfig};
        let cfg = ImageProcessorConfig::clip(sightline_corrupt::SIZE as usize);
        let square = resize_and_crop(rgb, &cfg, AspectMode::Square).map_err(vision_err)?;
        let name = Path::new(image_ref)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(image_ref);
        let seed = sightline_corrupt::derive_seed(self.seed, name, self.kind, self.severity);
        sightline_corrupt::corrupt(&square, self.kind, self.severity, seed)
            .map_err(|e| Error::Config(format!("{image_ref}: {}: {e}", self.kind.name())))
    }

    /// `gaussian_noise:3`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind.name(), self.severity)
    }
}

/// Each image request's token ids, and the windows (request indices) they run in.
type Windows = (Vec<Vec<i64>>, Vec<Vec<usize>>);

/// A loaded LLaVA model answering image requests.
pub struct LlavaLm {
    pub llava: Llava,
    /// Prompts per forward pass.
    pub batch_size: usize,
    /// What the model was loaded from (path, vision tower, dtype...), for cache keys.
    pub tag: String,
    /// Applied to every decoded image before the model's preprocessing.
    pub corruption: Option<ImageCorruption>,
}

fn vision_err(e: sightline_vision::Error) -> Error {
    Error::Config(e.to_string())
}

fn decoding_of(d: &MmDecoding) -> Decoding {
    Decoding {
        max_new_tokens: d.max_new_tokens,
        min_new_tokens: d.min_new_tokens,
        sampling: (d.temperature > 0.0).then_some(Sampling {
            temperature: d.temperature,
            top_k: d.top_k,
        }),
        stop: d.stop.clone(),
    }
}

/// Requests sharing decoding settings (the seed aside) can share a batch.
fn decoding_key(d: &MmDecoding) -> String {
    format!(
        "{}|{}|{}|{}|{:?}",
        d.max_new_tokens, d.min_new_tokens, d.temperature, d.top_k, d.stop
    )
}

impl LlavaLm {
    /// Token ids of a prompt, `<image>` written the way the checkpoint expects.
    fn ids(&self, context: &str) -> Result<Vec<i64>> {
        let token = self.llava.image_prompt_token();
        let prompt = if token == IMAGE_PLACEHOLDER {
            context.to_string()
        } else {
            context.replace(IMAGE_PLACEHOLDER, &token)
        };
        let ids = self.llava.tokenize(&prompt).map_err(vision_err)?;
        let markers = ids.iter().filter(|&&t| t == IMAGE_TOKEN_INDEX).count();
        if markers != 1 {
            return Err(Error::Config(format!(
                "an image prompt needs exactly one `<image>`, found {markers}: {context:?}"
            )));
        }
        Ok(ids)
    }

    /// Each request's token ids, and the windows they run in: requests sorted by (decoding,
    /// length, image, index), cut into runs of at most `16 × batch_size` with one decoding.
    /// Given the requests of whole windows, it cuts the same windows again (a window ends at
    /// its size limit or where the decoding changes, both of which the subset keeps).
    fn windows(&self, requests: &[ImageGen]) -> Result<Windows> {
        let ids: Vec<Vec<i64>> = requests
            .iter()
            .map(|r| self.ids(&r.context))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| {
            decoding_key(&requests[a].decoding)
                .cmp(&decoding_key(&requests[b].decoding))
                .then(ids[a].len().cmp(&ids[b].len()))
                .then(requests[a].image.cmp(&requests[b].image))
                .then(a.cmp(&b))
        });
        let bs = self.batch_size.max(1);
        let mut windows = Vec::new();
        let mut start = 0;
        while start < order.len() {
            // A window: at most 16 batches, all with the same decoding settings.
            let key = decoding_key(&requests[order[start]].decoding);
            let mut end = start;
            while end < order.len()
                && end - start < 16 * bs
                && decoding_key(&requests[order[end]].decoding) == key
            {
                end += 1;
            }
            windows.push(order[start..end].to_vec());
            start = end;
        }
        Ok((ids, windows))
    }

    /// Projected features `[rows, hidden]` of the image an `image_ref` names.
    fn features(&self, image_ref: &str) -> Result<Tensor> {
        let mut rgb = load_image(image_ref)?;
        if let Some(c) = &self.corruption {
            rgb = c.apply(&rgb, image_ref)?;
        }
        let px = self
            .llava
            .pixels_from_rgb(&rgb, Path::new(image_ref))
            .map_err(vision_err)?;
        let f = self
            .llava
            .image_features(&px.unsqueeze(0).map_err(|e| Error::Config(e.to_string()))?)
            .map_err(vision_err)?;
        f.squeeze(0).map_err(|e| Error::Config(e.to_string()))
    }
}

impl LanguageModel for LlavaLm {
    fn identity(&self) -> String {
        match &self.corruption {
            Some(c) => format!("llava|{}|corrupt={}|seed={}", self.tag, c.label(), c.seed),
            None => format!("llava|{}", self.tag),
        }
    }

    fn loglikelihood(
        &self,
        requests: &[(String, String)],
        _skip: &dyn Fn(usize) -> bool,
        _on_done: &mut DoneSink<'_>,
    ) -> Result<()> {
        if requests.is_empty() {
            return Ok(());
        }
        Err(Error::Config(
            "text tasks and image tasks run in separate `sightline eval` calls (a LLaVA model is loaded for image tasks only)".into(),
        ))
    }

    fn generate_until(&self, _context: &str, _until: &[String]) -> Result<String> {
        Err(Error::Config(
            "text tasks and image tasks run in separate `sightline eval` calls (a LLaVA model is loaded for image tasks only)".into(),
        ))
    }

    fn loglikelihood_units(&self, requests: &[(String, String)]) -> Result<Vec<WorkUnit>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        Err(Error::Config(
            "text tasks and image tasks run in separate `sightline eval` calls (a LLaVA model is loaded for image tasks only)".into(),
        ))
    }

    fn image_units(&self, requests: &[ImageGen]) -> Result<Vec<WorkUnit>> {
        let (ids, windows) = self.windows(requests)?;
        Ok(windows
            .into_iter()
            .map(|w| WorkUnit {
                cost: w
                    .iter()
                    .map(|&i| (ids[i].len() + requests[i].decoding.max_new_tokens) as u64)
                    .sum(),
                requests: w,
            })
            .collect())
    }

    fn generate_images(&self, requests: &[ImageGen], on_done: &mut TextSink<'_>) -> Result<()> {
        let (ids, windows) = self.windows(requests)?;
        let bs = self.batch_size.max(1);
        for window in &windows {
            let mut features: HashMap<&str, Tensor> = HashMap::new();
            let mut prompts = Vec::with_capacity(window.len());
            for &i in window {
                let r = &requests[i];
                if !features.contains_key(r.image.as_str()) {
                    features.insert(r.image.as_str(), self.features(&r.image)?);
                }
                let f = features[r.image.as_str()].clone();
                prompts.push(BatchPrompt {
                    embeds: self.llava.splice(&ids[i], &[f]).map_err(vision_err)?,
                    seed: r.decoding.seed,
                });
            }
            let decoding = decoding_of(&requests[window[0]].decoding);
            let mut inner: Option<Error> = None;
            self.llava
                .generate_batched(&prompts, &decoding, bs, &mut |done| {
                    let unit: Vec<(usize, String)> = done
                        .iter()
                        .map(|(k, out)| (window[*k], out.text.clone()))
                        .collect();
                    on_done(&unit).map_err(|e| {
                        let msg = e.to_string();
                        inner = Some(e);
                        sightline_vision::Error::Request(msg)
                    })
                })
                .map_err(|e| inner.take().unwrap_or_else(|| vision_err(e)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The corruption sees the 224×224 CLIP crop, is seeded per image name, and changes it.
    #[test]
    fn corruption_applies_to_the_224_crop_with_a_per_image_seed() -> Result<()> {
        let sketch = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png"
        );
        let rgb = crate::mm::load_image(sketch)?;
        let c = ImageCorruption {
            kind: sightline_corrupt::Corruption::GaussianNoise,
            severity: 3,
            seed: 7,
        };
        let a = c.apply(&rgb, sketch)?;
        assert_eq!(a.dimensions(), (224, 224));
        assert_eq!(a, c.apply(&rgb, sketch)?, "same image, same noise");
        assert_ne!(
            a,
            c.apply(&rgb, "/elsewhere/other.png")?,
            "another name, other noise"
        );
        let cfg = sightline_vision::preprocess::ImageProcessorConfig::clip(224);
        let clean = sightline_vision::preprocess::resize_and_crop(
            &rgb,
            &cfg,
            sightline_vision::preprocess::AspectMode::Square,
        )
        .map_err(vision_err)?;
        assert_ne!(a, clean);
        let seed = sightline_corrupt::derive_seed(7, "5291.png", c.kind, 3);
        let want = sightline_corrupt::corrupt(&clean, c.kind, 3, seed)
            .map_err(|e| Error::Config(e.to_string()))?;
        assert_eq!(a, want);
        Ok(())
    }
}
