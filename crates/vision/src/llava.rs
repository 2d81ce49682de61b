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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sightline_model::config::{read_checkpoint_config, CheckpointLayout};
use sightline_model::generate::{generate_embeds, GenerateOptions, Generation};
use sightline_model::hub::{self, Need};
use sightline_model::llama::logprob_and_greedy;
use sightline_model::score::{Request, ScoreOptions, Scored};
use sightline_model::{assemble, LlamaConfig, LoadOptions, Tokenizer, Weights};

use crate::batch_generate::{generate_batched, BatchPrompt, Decoding, OutputSink};
use crate::clip::{ClipVisionConfig, ClipVisionTower, SelectFeature};
use crate::error::{Error, Result};
use crate::preprocess::{
    normalization_table, pixel_values, resize_and_crop, AspectMode, ImageProcessorConfig,
};
use crate::projector::{Projector, ProjectorKind};
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

/// `key` of a JSON object as the type serde gives, or an error naming the file and field.
fn field<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    key: &str,
    path: &Path,
) -> Result<Option<T>> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => serde_json::from_value(x.clone())
            .map(Some)
            .map_err(|e| Error::format(path, format!("field `{key}`: {e}"))),
    }
}

fn select_feature(s: &str, key: &str, path: &Path) -> Result<SelectFeature> {
    match s {
        "patch" | "default" => Ok(SelectFeature::Patch),
        "cls_patch" | "full" => Ok(SelectFeature::ClsPatch),
        other => Err(Error::format(
            path,
            format!("{key} `{other}` is not supported (expected patch/default or cls_patch/full)"),
        )),
    }
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

impl Llava {
    /// Loads a LLaVA checkpoint directory (or Hub id), or a text LLM plus `opts.mm_projector`.
    pub fn load(model: &Path, opts: &LlavaOptions) -> Result<Self> {
        let model_dir = &hub::resolve_path(model, Need::Model)?.path;
        if !model_dir.is_dir() {
            return Err(Error::format(
                model_dir,
                "not a model directory (a LLaVA checkpoint, or a LLaMA one with --mm-projector)",
            ));
        }
        let config_path = model_dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::format(model_dir, "no config.json"));
        }
        let (layout, cfg, raw) = read_checkpoint_config(&config_path)?;
        let dtype = opts.base.dtype;
        let device = &opts.base.device;
        let weights = Weights::from_dir(model_dir, dtype, device)?;
        let mut tokenizer = Tokenizer::from_dir(
            model_dir,
            LlamaConfig::token_ids(&cfg.bos_token_id).first().copied(),
            LlamaConfig::token_ids(&cfg.eos_token_id).first().copied(),
        )?;
        match (layout, &opts.mm_projector) {
            (CheckpointLayout::LlavaHf, Some(_)) | (CheckpointLayout::LlavaOriginal, Some(_)) => {
                Err(Error::format(
                    &config_path,
                    "--mm-projector applies a stage-1 projector to a text LLM, but this is already a LLaVA checkpoint",
                ))
            }
            (CheckpointLayout::LlavaHf, None) => {
                Self::load_hf(&config_path, &raw, cfg, &weights, tokenizer, opts)
            }
            (CheckpointLayout::LlavaOriginal, None) => {
                let mm = MmConfig::from_value(&raw, &config_path)?;
                Self::from_original_parts(
                    cfg,
                    &weights,
                    &weights,
                    tokenizer,
                    mm,
                    model_dir,
                    &config_path,
                    &config_path,
                    opts,
                )
            }
            (CheckpointLayout::Llama, None) => Err(Error::format(
                &config_path,
                "a text-only LLaMA checkpoint: images need a LLaVA checkpoint, or a stage-1 projector given with --mm-projector (and --vision-tower)",
            )),
            (CheckpointLayout::Llama, Some(proj)) => {
                let proj_path = &hub::resolve_path(proj, Need::Projector)?.path;
                let stage1 = Stage1::open(proj_path, &cfg, dtype, device)?;
                let mut cfg = cfg;
                let llm_weights = if let Some(embed) = &stage1.embed_tokens {
                    // Training grew the vocabulary by <im_patch>, <im_start>, <im_end>; the
                    // tokenizer of the base LLM lacks them.
                    for t in [IM_PATCH, IM_START, IM_END] {
                        tokenizer.add_special_token(t);
                    }
                    let grown = grow_vocabulary(&weights, &cfg, embed, proj_path)?;
                    cfg.vocab_size = embed.dim(0)?;
                    grown
                } else {
                    weights.clone()
                };
                Self::from_original_parts(
                    cfg,
                    &llm_weights,
                    &stage1.weights,
                    tokenizer,
                    stage1.mm.clone(),
                    model_dir,
                    &config_path,
                    proj_path,
                    opts,
                )
            }
        }
    }

    /// The original-LLaVA assembly shared by full checkpoints and stage-1 projectors: the
    /// decoder from `llm_weights`, the tower from `--vision-tower`/`mm_vision_tower`, the
    /// projector from `projector_weights` (`model.mm_projector.*`). `mm_source` names the file
    /// the `mm_*` settings came from in errors.
    #[allow(clippy::too_many_arguments)]
    fn from_original_parts(
        cfg: LlamaConfig,
        llm_weights: &Weights,
        projector_weights: &Weights,
        tokenizer: Tokenizer,
        mut mm: MmConfig,
        model_dir: &Path,
        config_path: &Path,
        mm_source: &Path,
        opts: &LlavaOptions,
    ) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let llm = assemble(
            cfg,
            llm_weights,
            tokenizer.clone(),
            config_path,
            &model_dir.display().to_string(),
            &opts.base,
        )?
        .model;
        let (dtype, device) = (opts.base.dtype, &opts.base.device);
        let (tower, pre, tower_hub) = load_tower(&mm, opts, model_dir, mm_source, dtype, device)?;
        mm.processor_config = pre;
        let projector = Projector::load_original(
            mm.projector,
            &projector_weights.pp("model.mm_projector"),
            mm.mm_hidden_size.unwrap_or(tower.config.hidden_size),
            hidden,
        )?;
        let mut llava = Self::finish(llm, tokenizer, tower, projector, &mm, opts, mm_source)?;
        llava.tower_hub = tower_hub;
        Ok(llava)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        llm: sightline_model::Llama,
        tokenizer: Tokenizer,
        tower: ClipVisionTower,
        projector: Projector,
        mm: &MmConfig,
        opts: &LlavaOptions,
        config_path: &Path,
    ) -> Result<Self> {
        if projector.in_dim != tower.config.hidden_size {
            return Err(Error::format(
                config_path,
                format!(
                    "the vision tower's hidden size is {} but the projector takes {} features (mm_hidden_size): wrong --vision-tower?",
                    tower.config.hidden_size, projector.in_dim
                ),
            ));
        }
        if mm.mm_use_im_start_end {
            for t in [IM_START, IM_END] {
                if tokenizer.token_to_id(t).is_none() {
                    return Err(Error::format(
                        &tokenizer.path,
                        format!("mm_use_im_start_end is set but the tokenizer has no `{t}` token"),
                    ));
                }
            }
        }
        let processor = match &mm.processor_config {
            Some(p) => ImageProcessorConfig::from_file(p)?,
            None => ImageProcessorConfig::clip(tower.config.image_size),
        };
        Ok(Self {
            llm,
            tokenizer,
            tower,
            projector,
            select: mm.select,
            processor,
            aspect: opts.aspect.unwrap_or(mm.aspect),
            layout: CheckpointLayout::LlavaOriginal,
            mm_use_im_start_end: mm.mm_use_im_start_end,
            tower_hub: None,
            image_tokens: ImageTokens::SplitPrompt,
        })
    }

    fn load_hf(
        config_path: &Path,
        raw: &serde_json::Value,
        cfg: LlamaConfig,
        weights: &Weights,
        tokenizer: Tokenizer,
        opts: &LlavaOptions,
    ) -> Result<Self> {
        let dir = config_path.parent().unwrap_or(Path::new("."));
        let vision_value = match raw.get("vision_config") {
            Some(v) if v.is_object() => v.clone(),
            // transformers' LlavaConfig default: CLIP ViT-L/14 at 336 px.
            _ => serde_json::json!({"hidden_size": 1024, "intermediate_size": 4096,
                "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14,
                "image_size": 336}),
        };
        let vcfg = ClipVisionConfig::from_value(&vision_value, config_path)?;
        let layer: i64 = field(raw, "vision_feature_layer", config_path)?.unwrap_or(-2);
        let strategy: String = field(raw, "vision_feature_select_strategy", config_path)?
            .unwrap_or_else(|| "default".into());
        let select = select_feature(&strategy, "vision_feature_select_strategy", config_path)?;
        let act: String =
            field(raw, "projector_hidden_act", config_path)?.unwrap_or_else(|| "gelu".into());
        let bias: bool = field(raw, "multimodal_projector_bias", config_path)?.unwrap_or(true);
        let image_id: u32 = field(raw, "image_token_index", config_path)?.unwrap_or(32000);
        if opts.vision_tower.is_some() {
            return Err(Error::format(
                config_path,
                "--vision-tower is for original-layout LLaVA checkpoints; a llava-hf checkpoint carries its own tower",
            ));
        }
        match tokenizer.id_to_token(image_id) {
            Some(t) if t == IMAGE_PLACEHOLDER => {}
            other => {
                return Err(Error::format(
                    &tokenizer.path,
                    format!(
                        "image_token_index {image_id} ({}) is not the tokenizer's `<image>` token (found {other:?})",
                        config_path.display()
                    ),
                ))
            }
        }
        let tower = ClipVisionTower::new(
            &vcfg,
            &weights.pp("vision_tower.vision_model"),
            layer,
            config_path,
        )?;
        let projector = Projector::load_hf(
            &weights.pp("multi_modal_projector"),
            vcfg.hidden_size,
            cfg.hidden_size,
            &act,
            bias,
            config_path,
        )?;
        let llm = assemble(
            cfg,
            &weights.pp("language_model"),
            tokenizer.clone(),
            config_path,
            &dir.display().to_string(),
            &opts.base,
        )?
        .model;
        let pre = dir.join("preprocessor_config.json");
        let processor = if pre.is_file() {
            ImageProcessorConfig::from_file(&pre)?
        } else {
            ImageProcessorConfig::clip(vcfg.image_size)
        };
        Ok(Self {
            llm,
            tokenizer,
            tower,
            projector,
            select,
            processor,
            aspect: opts.aspect.unwrap_or_default(),
            layout: CheckpointLayout::LlavaHf,
            mm_use_im_start_end: false,
            tower_hub: None,
            image_tokens: ImageTokens::TokenId(image_id),
        })
    }

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
        let feats = features
            .iter()
            .map(|f| f.to_dtype(self.llm.dtype()))
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

    /// Log-likelihood of each request's continuation given its context and image.
    ///
    /// Requests without an image are scored exactly as a text model's are
    /// ([`sightline_model::score::score`] with `opts`), so a text request's number never depends
    /// on the other requests in the file. Image requests follow lm-eval's `_encode_pair` rules on
    /// the LLaVA prompt (trailing context whitespace moves to the continuation; the continuation
    /// is what tokenizing the whole string adds after the context's tokens; BOS as the
    /// tokenizer says, no truncation). They run in length-sorted batches of `opts.batch_size`,
    /// right-padded: causal attention keeps padding out of every real row, so batching never
    /// changes a result.
    pub fn score(
        &self,
        requests: &[ImageRequest],
        opts: &ScoreOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Scored>> {
        let (with_image, text): (Vec<usize>, Vec<usize>) =
            (0..requests.len()).partition(|&i| requests[i].image.is_some());
        let total = requests.len();
        let text_requests: Vec<Request> = text
            .iter()
            .map(|&i| Request {
                context: requests[i].context.clone(),
                continuation: requests[i].continuation.clone(),
            })
            .collect();
        let mut out: Vec<Option<Scored>> = vec![None; total];
        if !text_requests.is_empty() {
            let scored = sightline_model::score::score(
                &self.llm,
                &self.tokenizer,
                &text_requests,
                opts,
                &mut |done, _| progress(done, total),
            )?;
            for (&i, s) in text.iter().zip(scored) {
                out[i] = Some(s);
            }
        }
        let image_requests: Vec<ImageRequest> =
            with_image.iter().map(|&i| requests[i].clone()).collect();
        let offset = text.len();
        let scored = self.score_images(&image_requests, opts.batch_size, &mut |done, _| {
            progress(offset + done, total)
        })?;
        for (&i, s) in with_image.iter().zip(scored) {
            out[i] = Some(s);
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| Error::Request("internal: a request was not scored".into())))
            .collect()
    }

    fn score_images(
        &self,
        requests: &[ImageRequest],
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Scored>> {
        let mut prepared = Vec::with_capacity(requests.len());
        let mut feature_cache: HashMap<PathBuf, Tensor> = HashMap::new();
        for r in requests {
            prepared.push(self.prepare_request(r, &mut feature_cache)?);
        }
        let mut order: Vec<usize> = (0..prepared.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prepared[i].embeds.dim(0).unwrap_or(0)));
        let mut out: Vec<Option<Scored>> = vec![None; prepared.len()];
        let mut done = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            let max_len = chunk
                .iter()
                .map(|&i| prepared[i].embeds.dim(0))
                .collect::<candle_core::Result<Vec<_>>>()?
                .into_iter()
                .max()
                .unwrap_or(0);
            let hidden = self.llm.config.hidden_size;
            let rows = chunk
                .iter()
                .map(|&i| {
                    let e = &prepared[i].embeds;
                    let pad = max_len - e.dim(0)?;
                    if pad == 0 {
                        Ok(e.clone())
                    } else {
                        let z = Tensor::zeros((pad, hidden), e.dtype(), e.device())?;
                        Ok(Tensor::cat(&[e, &z], 0)?)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let batch = Tensor::stack(&rows, 0)?;
            let hidden_states = self.llm.forward_hidden_embeds(&batch, None)?;
            for (row, &i) in chunk.iter().enumerate() {
                let p = &prepared[i];
                let n = p.targets.len();
                let h = hidden_states.get(row)?.narrow(0, p.first_target_row, n)?;
                let logits: Vec<Vec<f32>> = self.llm.logits(&h)?.to_vec2()?;
                let mut lp = 0.0;
                let mut greedy = true;
                for (row_logits, &t) in logits.iter().zip(&p.targets) {
                    let (l, g) = logprob_and_greedy(row_logits, t);
                    lp += l;
                    greedy &= g;
                }
                out[i] = Some(Scored {
                    logprob: lp,
                    is_greedy: greedy,
                });
            }
            done += chunk.len();
            progress(done, prepared.len());
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| Error::Request("internal: a request was not scored".into())))
            .collect()
    }

    fn prepare_request(
        &self,
        r: &ImageRequest,
        cache: &mut HashMap<PathBuf, Tensor>,
    ) -> Result<PreparedRequest> {
        let context = sightline_metrics::pystr::py_rstrip(&r.context);
        let moved = &r.context[context.len()..];
        let continuation = format!("{moved}{}", r.continuation);
        if continuation.contains(IMAGE_PLACEHOLDER) {
            return Err(Error::Request(format!(
                "the continuation {:?} contains `<image>`: the image belongs in the context",
                r.continuation
            )));
        }
        let ctx_ids = self.tokenize(context)?;
        let whole = self.tokenize(&format!("{context}{continuation}"))?;
        let targets: Vec<u32> = whole
            .get(ctx_ids.len()..)
            .unwrap_or(&[])
            .iter()
            .map(|&t| t as u32)
            .collect();
        if targets.is_empty() || ctx_ids.is_empty() {
            return Err(Error::Request(format!(
                "request {:?} + {:?}: the continuation encodes to no tokens of its own",
                r.context, r.continuation
            )));
        }
        let markers = ctx_ids.iter().filter(|&&t| t == IMAGE_TOKEN_INDEX).count();
        let features = match (&r.image, markers) {
            (Some(path), 1) => {
                let f = match cache.get(path) {
                    Some(f) => f.clone(),
                    None => {
                        let px = self.load_pixels(path)?.unsqueeze(0)?;
                        let f = self.image_features(&px)?.squeeze(0)?;
                        cache.insert(path.clone(), f.clone());
                        f
                    }
                };
                vec![f]
            }
            _ => self.features_for(&ctx_ids, r.image.as_deref(), &r.context)?,
        };
        // Model input = context + continuation without its last token; the continuation's
        // targets are predicted by the rows from the last context position on.
        let mut input = whole.clone();
        input.pop();
        let embeds = self.splice(&input, &features)?;
        let len = embeds.dim(0)?;
        Ok(PreparedRequest {
            first_target_row: len - targets.len(),
            embeds,
            targets,
        })
    }
}

/// A scoring request with an optional image (`sightline score` JSONL: `"image": path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    pub context: String,
    pub continuation: String,
    pub image: Option<PathBuf>,
}

struct PreparedRequest {
    embeds: Tensor,
    targets: Vec<u32>,
    first_target_row: usize,
}

/// The `mm_*` keys of an original-layout config (or a stage-1 run's config.json).
#[derive(Debug, Clone)]
struct MmConfig {
    vision_tower: Option<String>,
    mm_hidden_size: Option<usize>,
    select_layer: i64,
    select: SelectFeature,
    projector: ProjectorKind,
    mm_use_im_start_end: bool,
    aspect: AspectMode,
    /// preprocessor_config.json to use, when known (found in the tower directory).
    processor_config: Option<PathBuf>,
}

impl MmConfig {
    fn from_value(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let select: String =
            field(v, "mm_vision_select_feature", path)?.unwrap_or_else(|| "patch".into());
        let projector_type: Option<String> = field(v, "mm_projector_type", path)?;
        let aspect: Option<String> = field(v, "image_aspect_ratio", path)?;
        let aspect = match aspect.as_deref() {
            None => AspectMode::Square,
            Some(s) => AspectMode::parse(s).ok_or_else(|| {
                Error::format(
                    path,
                    format!("image_aspect_ratio `{s}` is not supported (expected square or pad)"),
                )
            })?,
        };
        Ok(Self {
            vision_tower: field(v, "mm_vision_tower", path)?.or(field(v, "vision_tower", path)?),
            mm_hidden_size: field(v, "mm_hidden_size", path)?,
            // The dataclass default is -1 but every LLaVA script passes -2.
            select_layer: field(v, "mm_vision_select_layer", path)?.unwrap_or(-2),
            select: select_feature(&select, "mm_vision_select_feature", path)?,
            projector: ProjectorKind::parse(projector_type.as_deref(), path)?,
            mm_use_im_start_end: field(v, "mm_use_im_start_end", path)?.unwrap_or(false),
            aspect,
            processor_config: None,
        })
    }
}

/// Opens the vision tower: `--vision-tower` (a directory or Hub id), else `mm_vision_tower`:
/// a local directory (absolute, or relative to the model directory), else a Hub id, as
/// LLaVA's `CLIPVisionModel.from_pretrained(mm_vision_tower)` takes it. Also returns the
/// tower's `repo@commit` when `mm_vision_tower` was resolved on the Hub.
fn load_tower(
    mm: &MmConfig,
    opts: &LlavaOptions,
    model_dir: &Path,
    config_path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(ClipVisionTower, Option<PathBuf>, Option<String>)> {
    let mut tower_hub = None;
    let dir = match (&opts.vision_tower, &mm.vision_tower) {
        (Some(d), _) => hub::resolve_path(d, Need::VisionTower)?.path,
        (None, Some(name)) => {
            let p = Path::new(name);
            let beside = model_dir.join(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else if beside.is_dir() {
                beside
            } else {
                let r = hub::resolve(name, Need::VisionTower).map_err(|e| {
                    Error::format(
                        config_path,
                        format!("mm_vision_tower: {e} (or pass --vision-tower DIR)"),
                    )
                })?;
                tower_hub = r.hub.as_ref().map(|_| r.identity(name));
                r.path
            }
        }
        (None, None) => {
            return Err(Error::format(
                config_path,
                "no mm_vision_tower in the config: pass --vision-tower DIR",
            ))
        }
    };
    if !dir.is_dir() {
        return Err(Error::format(
            &dir,
            "the vision tower is not a directory (expected a CLIPVisionModel or CLIPModel \
             checkpoint; pass --vision-tower DIR|ID)",
        ));
    }
    let tower = ClipVisionTower::from_dir(&dir, mm.select_layer, dtype, device)?;
    // LLaVA builds its image processor from the tower's repo.
    let pre = dir.join("preprocessor_config.json");
    Ok((tower, pre.is_file().then_some(pre), tower_hub))
}

/// A stage-1 projector file with its run's config.
struct Stage1 {
    weights: Weights,
    mm: MmConfig,
    /// The grown input embedding saved with the projector (when `mm_use_im_start_end`).
    embed_tokens: Option<Tensor>,
}

impl Stage1 {
    fn open(path: &Path, base: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let weights = Weights::from_file(path, dtype, device)?;
        let config_path = path.with_file_name("config.json");
        let mut mm = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
            MmConfig::from_value(&v, &config_path)?
        } else {
            MmConfig::from_value(&serde_json::json!({}), path)?
        };
        // The tensors say which projector this is, whatever the config claims.
        let names = weights.names();
        let depth = (0..)
            .take_while(|i| {
                names
                    .iter()
                    .any(|n| n == &format!("model.mm_projector.{}.weight", 2 * i))
            })
            .count();
        mm.projector = if names.iter().any(|n| n == "model.mm_projector.weight") {
            ProjectorKind::Linear
        } else if depth > 0 {
            ProjectorKind::MlpGelu { depth }
        } else {
            return Err(Error::format(
                path,
                "no `model.mm_projector.*` tensors (expected LLaVA's mm_projector.bin from stage 1)",
            ));
        };
        let embed_tokens = if names.iter().any(|n| n == "model.embed_tokens.weight") {
            let e = weights.get_any_shape("model.embed_tokens.weight")?;
            let (rows, width) = e.dims2()?;
            if width != base.hidden_size || rows < base.vocab_size {
                return Err(Error::format(
                    path,
                    format!(
                        "model.embed_tokens.weight is [{rows}, {width}]; the base model needs [>= {}, {}]",
                        base.vocab_size, base.hidden_size
                    ),
                ));
            }
            mm.mm_use_im_start_end = mm.mm_use_im_start_end || rows > base.vocab_size;
            Some(e)
        } else {
            None
        };
        Ok(Self {
            weights,
            mm,
            embed_tokens,
        })
    }
}

/// The base decoder's weights with the stage-1 input embedding, and `lm_head` grown to the same
/// vocabulary: the new rows are the mean of the old ones, which is what LLaVA's training gives
/// `<im_start>`/`<im_end>` (stage 1 never trains `lm_head`). `<im_patch>`'s row was random and
/// is not saved anywhere; it gets the mean too — the one place this differs from the training
/// run's model, and only in the normalisation of the softmax.
fn grow_vocabulary(
    base: &Weights,
    cfg: &LlamaConfig,
    embed: &Tensor,
    proj_path: &Path,
) -> Result<Weights> {
    let rows = embed.dim(0)?;
    let (v, h) = (cfg.vocab_size, cfg.hidden_size);
    let head = if cfg.tie_word_embeddings && !base.contains("lm_head.weight") {
        embed.clone()
    } else {
        let old = base.get(&[v, h], "lm_head.weight")?;
        let extra = rows - v;
        if extra == 0 {
            old
        } else {
            let mean = old.mean_keepdim(0)?;
            Tensor::cat(&[&old, &mean.broadcast_as((extra, h))?.contiguous()?], 0)?
        }
    };
    let mut over = HashMap::new();
    over.insert("model.embed_tokens.weight".to_string(), embed.clone());
    over.insert("lm_head.weight".to_string(), head);
    Ok(base.with_overrides(over, proj_path.to_path_buf()))
}
