//! LLaVA: a CLIP vision tower, a projector and a LLaMA decoder that reads the projected image
//! features spliced into its token sequence (`spec/llava-model.md`).
//!
//! Three ways to get one, chosen by `config.json`, never by the directory's name:
//! - **original LLaVA** (`LlavaLlamaForCausalLM`): decoder tensors under `model.`, the projector
//!   under `model.mm_projector.`, the vision tower named by `mm_vision_tower` (a local path,
//!   absolute or relative to the model directory, or a Hub id such as
//!   `openai/clip-vit-large-patch14`, resolved by [`sightline_model::hub`]) unless
//!   [`LlavaOptions::vision_tower`] overrides it;
//! - **llava-hf** (`LlavaForConditionalGeneration`): everything in one checkpoint;
//! - **a stage-1 projector on a text LLM** ([`LlavaOptions::mm_projector`]): `mm_projector.bin`
//!   or `.safetensors` from LLaVA's pretraining, applied on top of `--model`.
//!
//! Prompts mark the image with `<image>`. The original layout tokenizes the text around it
//! chunk by chunk (`tokenizer_image_token`: each chunk is a separate tokenizer call, BOS kept
//! once); llava-hf tokenizes the whole prompt, `<image>` being a token of its vocabulary, as
//! `LlavaProcessor` does. Either way the image's feature rows replace the placeholder, and
//! position ids run over the spliced sequence.
//!
//! Files: [`load`] (the three layouts, vision tower, stage-1 files), [`score`] (log-likelihood
//! requests with images); prompts, pixels, features and the splice are here.

mod load;
mod score;

pub use load::check_mm_config;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sightline_model::config::{read_checkpoint_config, CheckpointLayout};
use sightline_model::generate::{generate_embeds, GenerateOptions, Generation};
use sightline_model::hub::{self, Need};
use sightline_model::{LoadOptions, Tokenizer};

use crate::batch_generate::{generate_batched, BatchPrompt, Decoding, OutputSink};
use crate::clip::{ClipVisionTower, SelectFeature};
use crate::error::{Error, Result};
use crate::preprocess::{
    normalization_table, pixel_values, resize_and_crop, AspectMode, ImageProcessorConfig,
};
use crate::projector::Projector;
use crate::splice::splice_rows;

/// LLaVA's `IMAGE_TOKEN_INDEX`: the id that marks the image in a tokenized prompt. Never a
/// vocabulary id.
pub const IMAGE_TOKEN_INDEX: i64 = -200;
/// The placeholder users write in prompts.
pub const IMAGE_PLACEHOLDER: &str = "<image>";
/// LLaVA's extra tokens, in the order its training adds them to the vocabulary.
pub const IM_PATCH: &str = "<im_patch>";
pub const IM_START: &str = "<im_start>";
pub const IM_END: &str = "<im_end>";

/// How to load a LLaVA model.
#[derive(Debug, Clone, Default)]
pub struct LlavaOptions {
    /// dtype, device and an optional LoRA adapter for the decoder.
    pub base: LoadOptions,
    /// A CLIP vision tower directory or Hub id; overrides `mm_vision_tower`.
    pub vision_tower: Option<PathBuf>,
    /// A stage-1 projector file (`mm_projector.bin` / `.safetensors`), or a Hub id whose
    /// repository holds one, to apply on top of a text LLM given as the model.
    pub mm_projector: Option<PathBuf>,
    /// Overrides the checkpoint's `image_aspect_ratio` (`square` / `pad`).
    pub aspect: Option<AspectMode>,
}

/// How the prompt's `<image>` is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageTokens {
    /// `tokenizer_image_token`: split the text on `<image>`, tokenize each chunk.
    SplitPrompt,
    /// The tokenizer has an `<image>` token with this id (llava-hf).
    TokenId(u32),
}

/// A loaded LLaVA model.
pub struct Llava {
    pub llm: sightline_model::Llama,
    pub tokenizer: Tokenizer,
    pub tower: ClipVisionTower,
    pub projector: Projector,
    pub select: SelectFeature,
    pub processor: ImageProcessorConfig,
    pub aspect: AspectMode,
    pub layout: CheckpointLayout,
    /// `mm_use_im_start_end`: LLaVA's eval scripts then write `<im_start><image><im_end>`.
    pub mm_use_im_start_end: bool,
    /// `repo@commit` when the tower came from a Hub id in `mm_vision_tower` (part of the
    /// model's identity for result caches: the checkpoint does not pin the tower's commit).
    pub tower_hub: Option<String>,
    image_tokens: ImageTokens,
}

/// Whether a model directory (or Hub id) has a `config.json` that describes a LLaVA checkpoint
/// (either layout).
pub fn is_llava_dir(dir: &Path) -> Result<bool> {
    let path = hub::resolve_path(dir, Need::Model)?
        .path
        .join("config.json");
    if !path.is_file() {
        return Ok(false);
    }
    let (layout, _, _) = read_checkpoint_config(&path)?;
    Ok(layout.is_multimodal())
}

/// A scoring request with an optional image (`sightline score` JSONL: `"image": path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    pub context: String,
    pub continuation: String,
    pub image: Option<PathBuf>,
}

impl Llava {
    /// What LLaVA's eval scripts put before the question: `<im_start><image><im_end>` when the
    /// model was trained with `mm_use_im_start_end`, else `<image>`.
    pub fn image_prompt_token(&self) -> String {
        if self.mm_use_im_start_end {
            format!("{IM_START}{IMAGE_PLACEHOLDER}{IM_END}")
        } else {
            IMAGE_PLACEHOLDER.to_string()
        }
    }

    /// Feature rows per image.
    pub fn image_rows(&self) -> usize {
        self.tower.config.num_patches() + usize::from(self.select == SelectFeature::ClsPatch)
    }

    /// Tokenizes a prompt with BOS; each `<image>` becomes [`IMAGE_TOKEN_INDEX`].
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<i64>> {
        match self.image_tokens {
            ImageTokens::SplitPrompt => {
                // tokenizer_image_token: one tokenizer call per chunk, BOS kept once.
                let mut out: Vec<i64> = Vec::new();
                for (i, chunk) in prompt.split(IMAGE_PLACEHOLDER).enumerate() {
                    let ids = self.tokenizer.encode_prompt(chunk)?;
                    let skip = usize::from(
                        i > 0
                            && self.tokenizer.bos_id.is_some()
                            && ids.first() == self.tokenizer.bos_id.as_ref(),
                    );
                    if i > 0 {
                        out.push(IMAGE_TOKEN_INDEX);
                    }
                    out.extend(ids[skip..].iter().map(|&t| t as i64));
                }
                // LLaVA drops every chunk's BOS only when the first chunk starts with one.
                Ok(out)
            }
            ImageTokens::TokenId(id) => Ok(self
                .tokenizer
                .encode_prompt(prompt)?
                .into_iter()
                .map(|t| if t == id { IMAGE_TOKEN_INDEX } else { t as i64 })
                .collect()),
        }
    }

    /// Reads and preprocesses an image into `[3, S, S]` pixel values.
    pub fn load_pixels(&self, path: &Path) -> Result<Tensor> {
        let px = pixel_values(path, &self.processor, self.aspect, &Device::Cpu)?;
        Ok(px.to_device(self.llm.device())?)
    }

    /// Preprocesses an already decoded RGB image into `[3, S, S]` pixel values, exactly as
    /// [`Llava::load_pixels`] does after decoding; `name` only names the image in errors.
    /// Evaluation decodes images itself so that one function can transform the decoded image
    /// (a corruption, say) before this step.
    pub fn pixels_from_rgb(&self, img: &crate::RgbImage, name: &Path) -> Result<Tensor> {
        let crop = resize_and_crop(img, &self.processor, self.aspect).map_err(|e| match e {
            Error::Request(msg) => Error::format(name, msg),
            e => e,
        })?;
        let (w, h) = (crop.width() as usize, crop.height() as usize);
        let table = normalization_table(&self.processor);
        let n = w * h;
        let mut values = vec![0f32; 3 * n];
        for (i, px) in crop.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                values[c * n + i] = table[c][px[c] as usize];
            }
        }
        Ok(Tensor::from_vec(values, (3, h, w), &Device::Cpu)?.to_device(self.llm.device())?)
    }

    /// Generates for spliced prompts in equal-length batches (see [`crate::batch_generate`]).
    pub fn generate_batched(
        &self,
        prompts: &[BatchPrompt],
        decoding: &Decoding,
        batch_size: usize,
        on_done: &mut OutputSink<'_>,
    ) -> Result<()> {
        generate_batched(
            &self.llm,
            &self.tokenizer,
            prompts,
            decoding,
            batch_size,
            on_done,
        )
    }

    /// Projected image features `[b, rows, hidden]` of pixel values `[b, 3, S, S]`.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_dtype(self.llm.dtype())?;
        let feats = self.tower.features(&pixels, self.select)?;
        self.projector.forward(&feats)
    }

    /// Input embeddings `[len, hidden]` of `ids`, each [`IMAGE_TOKEN_INDEX`] replaced by the
    /// next block of `features` (`[rows, hidden]` each), as `prepare_inputs_labels_for_multimodal`
    /// does.
    pub fn splice(&self, ids: &[i64], features: &[Tensor]) -> Result<Tensor> {
        let markers = ids.iter().filter(|&&t| t == IMAGE_TOKEN_INDEX).count();
        if markers != features.len() {
            return Err(Error::Request(format!(
                "the prompt has {markers} `<image>` placeholder(s) but {} image(s) were given",
                features.len()
            )));
        }
        let vocab = self.llm.config.vocab_size;
        let mut text: Vec<u32> = Vec::with_capacity(ids.len());
        let mut positions = Vec::with_capacity(markers);
        for (i, &id) in ids.iter().enumerate() {
            if id == IMAGE_TOKEN_INDEX {
                // Any valid id: the marker's embedding row is replaced below.
                positions.push(i);
                text.push(0);
            } else if id < 0 || id as usize >= vocab {
                return Err(Error::Request(format!(
                    "token id {id} is outside the vocabulary ({vocab})"
                )));
            } else {
                text.push(id as u32);
            }
        }
        let t = Tensor::from_vec(text, (1, ids.len()), self.llm.device())?;
        let embeds = self.llm.embed(&t)?.squeeze(0)?;
        // The text rows' dtype: the compute dtype, or f32 rows of a trained master under bf16.
        let feats = features
            .iter()
            .map(|f| f.to_dtype(embeds.dtype()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        splice_rows(&embeds, &positions, &feats)
    }

    /// The spliced embeddings `[1, len, hidden]` of a prompt and its image (if any).
    pub fn prompt_embeds(&self, prompt: &str, image: Option<&Path>) -> Result<Tensor> {
        let ids = self.tokenize(prompt)?;
        let features = self.features_for(&ids, image, prompt)?;
        Ok(self.splice(&ids, &features)?.unsqueeze(0)?)
    }

    /// Checks that the prompt has exactly one placeholder when an image is given and none
    /// otherwise, and computes the image's features.
    fn features_for(&self, ids: &[i64], image: Option<&Path>, prompt: &str) -> Result<Vec<Tensor>> {
        let markers = ids.iter().filter(|&&t| t == IMAGE_TOKEN_INDEX).count();
        match (image, markers) {
            (Some(path), 1) => {
                let px = self.load_pixels(path)?.unsqueeze(0)?;
                Ok(vec![self.image_features(&px)?.squeeze(0)?])
            }
            (Some(path), n) => Err(Error::Request(format!(
                "the prompt has {n} `<image>` placeholders; with one image ({}) it needs exactly one: {prompt:?}",
                path.display()
            ))),
            (None, 0) => Ok(vec![]),
            (None, n) => Err(Error::Request(format!(
                "the prompt has {n} `<image>` placeholder(s) but no image was given: {prompt:?}"
            ))),
        }
    }

    /// Generates a reply to `prompt` (with `<image>` where the image goes) about `image`.
    pub fn generate(
        &self,
        prompt: &str,
        image: Option<&Path>,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        let embeds = self.prompt_embeds(prompt, image)?;
        Ok(generate_embeds(&self.llm, &self.tokenizer, &embeds, opts)?)
    }
}
