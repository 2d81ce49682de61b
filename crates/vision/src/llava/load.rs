//! Opening a LLaVA model: original LLaVA checkpoints, llava-hf checkpoints, and a stage-1
//! projector on a text LLM; the vision tower named by the config; the `mm_*` settings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sightline_model::config::{read_checkpoint_config, CheckpointLayout};
use sightline_model::hub::{self, Need};
use sightline_model::{assemble, LlamaConfig, Tokenizer, Weights};

use super::{ImageTokens, Llava, LlavaOptions, IMAGE_PLACEHOLDER, IM_END, IM_PATCH, IM_START};
use crate::clip::{ClipVisionConfig, ClipVisionTower, SelectFeature};
use crate::error::{Error, Result};
use crate::preprocess::{AspectMode, ImageProcessorConfig};
use crate::projector::{Projector, ProjectorKind};

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
        let HfMmConfig {
            vcfg,
            layer,
            select,
            act,
            bias,
            image_id,
        } = HfMmConfig::from_value(raw, config_path)?;
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
}

/// Checks the multimodal settings of a parsed `config.json` of `layout` as [`Llava::load`]
/// reads them (original LLaVA's `mm_*` keys; llava-hf's `vision_config` and projector keys),
/// without opening weights, tokenizer or tower. `load` reads them only after it has found the
/// weights and tokenizer; this is public so that the fuzz targets (`crates/fuzzing`) reach the
/// same parsing from a `config.json` alone.
pub fn check_mm_config(
    layout: CheckpointLayout,
    raw: &serde_json::Value,
    path: &Path,
) -> Result<()> {
    match layout {
        CheckpointLayout::Llama => Ok(()),
        CheckpointLayout::LlavaOriginal => MmConfig::from_value(raw, path).map(drop),
        CheckpointLayout::LlavaHf => HfMmConfig::from_value(raw, path).map(drop),
    }
}

/// The multimodal keys of a llava-hf `config.json` (`vision_config` and the projector's).
struct HfMmConfig {
    vcfg: ClipVisionConfig,
    layer: i64,
    select: SelectFeature,
    act: String,
    bias: bool,
    image_id: u32,
}

impl HfMmConfig {
    fn from_value(raw: &serde_json::Value, config_path: &Path) -> Result<Self> {
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
        Ok(Self {
            vcfg,
            layer,
            select,
            act,
            bias,
            image_id,
        })
    }
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
