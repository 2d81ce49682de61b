//! Building a run from its [`TrainConfig`]: the base LLM with LLaVA's vocabulary growth
//! (spec llava-model.md M6), the frozen CLIP tower, the projector and the tokenized data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sightline_data::labels::{Options, Preprocess};
use sightline_data::preprocess::Template;
use sightline_model::hub::{self, Need};
use sightline_model::{CheckpointLayout, LlamaConfig, Tokenizer, Weights};
use sightline_vision::clip::{ClipVisionTower, SelectFeature};
use sightline_vision::llava::{IM_END, IM_PATCH, IM_START};
use sightline_vision::preprocess::ImageProcessorConfig;

use crate::config::TrainConfig;
use crate::dataset::{on_mismatch, Dataset, LoadSettings};
use crate::error::{Error, Result};
use sightline_model::Llama;
use sightline_vision::projector::{Projector, ProjectorKind};

/// How a new vocabulary row is initialised (M6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowInit {
    /// `[PAD]` under `v0`: the mean of the old rows (`smart_tokenizer_and_embedding_resize`).
    MeanOfOld,
    /// `<im_patch>`: HF's default init N(0, initializer_range).
    Normal,
    /// `<im_start>`/`<im_end>`: the mean of all preceding rows, `<im_patch>` included.
    MeanOfPreceding,
}

/// The frozen vision side of a multimodal run.
pub struct Vision {
    pub tower: ClipVisionTower,
    pub processor: ImageProcessorConfig,
    pub select: SelectFeature,
    /// The tower as recorded in saved configs' `mm_vision_tower`: a local directory
    /// canonicalised, or the Hub id as given (as LLaVA records it).
    pub dir: PathBuf,
    /// Features of images seen before (the tower is frozen, so they never change), kept while
    /// they fit in [`FEATURE_CACHE_BYTES`]: small multi-epoch runs decode each image once.
    cache: std::cell::RefCell<(HashMap<PathBuf, Tensor>, usize)>,
}

/// Memory the feature cache may hold.
pub const FEATURE_CACHE_BYTES: usize = 512 << 20;

impl Vision {
    /// Selected CLIP features `[n, patches, vision_dim]` of image files (no gradient: frozen).
    pub fn features(&self, paths: &[&Path], device: &Device) -> Result<Tensor> {
        let mut cache = self.cache.borrow_mut();
        let missing: Vec<&Path> = paths
            .iter()
            .copied()
            .filter(|p| !cache.0.contains_key(*p))
            .collect();
        let mut fresh = HashMap::new();
        if !missing.is_empty() {
            let px = missing
                .iter()
                .map(|p| {
                    sightline_vision::preprocess::pixel_values(
                        p,
                        &self.processor,
                        sightline_vision::preprocess::AspectMode::Square,
                        device,
                    )
                })
                .collect::<sightline_vision::Result<Vec<_>>>()?;
            let feats = self
                .tower
                .features(&Tensor::stack(&px, 0)?, self.select)?
                .detach();
            for (i, p) in missing.iter().enumerate() {
                fresh.insert(p.to_path_buf(), feats.get(i)?);
            }
        }
        let rows = paths
            .iter()
            .map(|p| {
                fresh
                    .get(*p)
                    .or_else(|| cache.0.get(*p))
                    .cloned()
                    .ok_or_else(|| Error::Batch(format!("no features for {}", p.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        for (p, t) in fresh {
            let bytes = t.elem_count() * t.dtype().size_in_bytes();
            if cache.1 + bytes <= FEATURE_CACHE_BYTES {
                cache.1 += bytes;
                cache.0.insert(p, t);
            }
        }
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// Everything a run needs before its first step.
pub struct Setup {
    pub model: Llama,
    pub projector: Option<Projector>,
    pub vision: Option<Vision>,
    pub tokenizer: Tokenizer,
    pub data: Dataset,
    /// The pad id of the collator (T7).
    pub pad_id: u32,
    /// The base config with the grown vocabulary (what saved checkpoints get).
    pub llm_config: serde_json::Value,
    pub base_dir: PathBuf,
    /// The base model's vocabulary before growth.
    pub base_vocab: usize,
}

fn usage(msg: String) -> Error {
    Error::Config(msg)
}

/// Loads the base model, grows the vocabulary, opens the tower and the data.
pub fn build(cfg: &TrainConfig, device: &Device) -> Result<Setup> {
    let Base {
        dir: base_dir,
        config_path,
        mut llm_cfg,
        raw,
        mut tokenizer,
    } = open_base(cfg)?;
    let template = Template::new(&cfg.version)?;
    let multimodal = cfg.vision_tower.is_some();
    let added = grow_tokenizer(cfg, &template, &mut tokenizer);
    let weights = Weights::from_dir(&base_dir, DType::F32, device)?;
    let old_vocab = llm_cfg.vocab_size;
    let new_vocab = tokenizer.id_bound().max(old_vocab);
    let vision = open_vision(cfg, device)?;
    let vision_dim = vision.as_ref().map_or(0, |v| v.tower.config.hidden_size);
    let hidden = llm_cfg.hidden_size;
    // The stage-1 file, opened once for its projector and its embedding rows.
    let stage1 = match &cfg.pretrain_mm_mlp_adapter {
        Some(p) if multimodal => {
            let p = hub::resolve(p, Need::Projector)?.path;
            let w = Weights::from_file(&p, DType::F32, device)?;
            Some((p, w))
        }
        _ => None,
    };
    let projector = build_projector(cfg, stage1.as_ref(), vision_dim, hidden, device)?;
    let weights = if new_vocab > old_vocab {
        let growth = Growth {
            added: &added,
            old_vocab,
            new_vocab,
            hidden,
            std: raw
                .get("initializer_range")
                .and_then(|x| x.as_f64())
                .unwrap_or(0.02),
        };
        let overrides = grown_rows(cfg, &growth, &weights, &llm_cfg, stage1.as_ref(), device)?;
        llm_cfg.vocab_size = new_vocab;
        weights.with_overrides(overrides, config_path.clone())
    } else {
        weights
    };
    let trainable = cfg.trainable()?;
    let compute = cfg.compute_dtype();
    let model = Llama::new_trainable_in(&llm_cfg, &weights, &config_path, &trainable, compute)?;
    let projector = projector.map(|p| p.computed_in(compute)).transpose()?;
    let (data, pad_id) = load_data(cfg, &tokenizer, template, multimodal)?;
    let mut llm_config = raw;
    if let Some(o) = llm_config.as_object_mut() {
        o.insert("vocab_size".into(), new_vocab.into());
        if let Some(pad) = tokenizer.token_to_id("[PAD]") {
            o.insert("pad_token_id".into(), pad.into());
        }
    }
    Ok(Setup {
        model,
        projector,
        vision,
        tokenizer,
        data,
        pad_id,
        llm_config,
        base_dir,
        base_vocab: old_vocab,
    })
}

/// The base LLM's directory, config and tokenizer.
struct Base {
    dir: PathBuf,
    config_path: PathBuf,
    llm_cfg: LlamaConfig,
    raw: serde_json::Value,
    tokenizer: Tokenizer,
}

/// Resolves `model_name_or_path` to an HF LLaMA directory (a LLaVA checkpoint is refused:
/// training starts from the text LLM, as LLaVA's scripts do).
fn open_base(cfg: &TrainConfig) -> Result<Base> {
    let dir = hub::resolve(&cfg.model_name_or_path, Need::Model)?.path;
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(usage(format!(
            "model_name_or_path {}: no config.json (expected an HF LLaMA directory or Hub id)",
            dir.display()
        )));
    }
    let (layout, llm_cfg, raw) = sightline_model::config::read_checkpoint_config(&config_path)?;
    if layout != CheckpointLayout::Llama {
        return Err(usage(format!(
            "{}: a LLaVA checkpoint; training starts from the text LLM (model_name_or_path) \
             plus a stage-1 projector (pretrain_mm_mlp_adapter), as LLaVA's scripts do",
            config_path.display()
        )));
    }
    let first = |ids| LlamaConfig::token_ids(ids).first().copied();
    let tokenizer = Tokenizer::from_dir(
        &dir,
        first(&llm_cfg.bos_token_id),
        first(&llm_cfg.eos_token_id),
    )?;
    Ok(Base {
        dir,
        config_path,
        llm_cfg,
        raw,
        tokenizer,
    })
}

/// M6.3: the tokens LLaVA adds, in its order, each with how its embedding row starts.
fn grow_tokenizer(
    cfg: &TrainConfig,
    template: &Template,
    tokenizer: &mut Tokenizer,
) -> Vec<(u32, RowInit)> {
    let mut added: Vec<(u32, RowInit)> = Vec::new();
    let mut add = |tok: &mut Tokenizer, t: &str, init: RowInit| {
        if tok.token_to_id(t).is_none() {
            added.push((tok.add_special_token(t), init));
        }
    };
    if matches!(template.name(), "v0" | "default") {
        add(tokenizer, "[PAD]", RowInit::MeanOfOld);
    }
    if cfg.vision_tower.is_some() {
        if cfg.mm_use_im_patch_token {
            add(tokenizer, IM_PATCH, RowInit::Normal);
        }
        if cfg.mm_use_im_start_end {
            add(tokenizer, IM_START, RowInit::MeanOfPreceding);
            add(tokenizer, IM_END, RowInit::MeanOfPreceding);
        }
    }
    added
}

/// The frozen CLIP tower of a multimodal run, with its image processor.
fn open_vision(cfg: &TrainConfig, device: &Device) -> Result<Option<Vision>> {
    let Some(spec) = &cfg.vision_tower else {
        return Ok(None);
    };
    let resolved = hub::resolve(spec, Need::VisionTower)?;
    let dir = resolved.path.clone();
    let tower = ClipVisionTower::from_dir(&dir, cfg.mm_vision_select_layer, DType::F32, device)?;
    let pre = dir.join("preprocessor_config.json");
    let processor = if pre.is_file() {
        ImageProcessorConfig::from_file(&pre)?
    } else {
        ImageProcessorConfig::clip(tower.config.image_size)
    };
    let select = match cfg.mm_vision_select_feature.as_str() {
        "cls_patch" => SelectFeature::ClsPatch,
        _ => SelectFeature::Patch,
    };
    let dir = match resolved.hub {
        Some(_) => PathBuf::from(spec),
        None => dir.canonicalize().map_err(|e| Error::io(&dir, e))?,
    };
    Ok(Some(Vision {
        tower,
        processor,
        select,
        dir,
        cache: Default::default(),
    }))
}

/// The projector: from the stage-1 file when one is given, else freshly initialised; None
/// for a text-only run (which must not name a stage-1 file).
fn build_projector(
    cfg: &TrainConfig,
    stage1: Option<&(PathBuf, Weights)>,
    vision_dim: usize,
    hidden: usize,
    device: &Device,
) -> Result<Option<Projector>> {
    if cfg.vision_tower.is_none() {
        if cfg.pretrain_mm_mlp_adapter.is_some() {
            return Err(usage(
                "pretrain_mm_mlp_adapter needs a vision_tower (a text-only run has no projector)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    // Checked by `TrainConfig::validate` (linear or mlp2x_gelu).
    let kind = ProjectorKind::parse_name(&cfg.mm_projector_type).ok_or_else(|| {
        usage(format!(
            "mm_projector_type `{}` is not supported",
            cfg.mm_projector_type
        ))
    })?;
    let Some((p, w)) = stage1 else {
        return Ok(Some(Projector::new_random(
            kind, vision_dim, hidden, cfg.seed, device,
        )?));
    };
    let proj = Projector::trainable_from_stage1(w, p, vision_dim, hidden)?;
    if proj.kind != kind {
        return Err(usage(format!(
            "{}: a {} projector, but mm_projector_type is {}",
            p.display(),
            proj.kind.name(),
            kind.name()
        )));
    }
    Ok(Some(proj))
}

/// What the vocabulary grows by.
struct Growth<'a> {
    added: &'a [(u32, RowInit)],
    old_vocab: usize,
    new_vocab: usize,
    hidden: usize,
    /// `initializer_range` of the base config (HF's default init for `Normal` rows).
    std: f64,
}

/// The embedding (and untied head) matrices with the new vocabulary's rows appended (M6.3),
/// and stage 2's trained `<im_start>`/`<im_end>` rows from the stage-1 file (M6.4).
fn grown_rows(
    cfg: &TrainConfig,
    g: &Growth,
    weights: &Weights,
    llm_cfg: &LlamaConfig,
    stage1: Option<&(PathBuf, Weights)>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let (h, v, new_vocab) = (g.hidden, g.old_vocab, g.new_vocab);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_0e3b);
    let grow = |old: Tensor, rng: &mut ChaCha8Rng| -> Result<Tensor> {
        let mut rows: Vec<Vec<f32>> = old.to_vec2::<f32>()?;
        let old_mean = mean_rows(&rows[..v]);
        for id in v..new_vocab {
            let init = g
                .added
                .iter()
                .find(|(i, _)| *i as usize == id)
                .map(|(_, k)| *k)
                .unwrap_or(RowInit::MeanOfOld);
            let row = match init {
                RowInit::MeanOfOld => old_mean.clone(),
                RowInit::Normal => (0..h).map(|_| (normal(rng) * g.std) as f32).collect(),
                RowInit::MeanOfPreceding => mean_rows(&rows),
            };
            rows.push(row);
        }
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (new_vocab, h), device)?)
    };
    let mut overrides = HashMap::new();
    let mut embed = grow(weights.get(&[v, h], "model.embed_tokens.weight")?, &mut rng)?;
    if let (Some((p, w)), true) = (stage1, cfg.mm_use_im_start_end) {
        embed = stage1_rows(p, w, embed)?;
    }
    overrides.insert("model.embed_tokens.weight".to_string(), embed);
    // Tied without its own head: one matrix, already grown.
    if !llm_cfg.tie_word_embeddings || weights.contains("lm_head.weight") {
        let head = grow(weights.get(&[v, h], "lm_head.weight")?, &mut rng)?;
        overrides.insert("lm_head.weight".to_string(), head);
    }
    Ok(overrides)
}

/// The tokenized training data under the run's template, and the collator's pad id.
fn load_data(
    cfg: &TrainConfig,
    tokenizer: &Tokenizer,
    template: Template,
    multimodal: bool,
) -> Result<(Dataset, u32)> {
    let mut opts = Options::for_template(&template, tokenizer);
    opts.mm_use_im_start_end = cfg.mm_use_im_start_end;
    opts.model_max_length = cfg.model_max_length;
    opts.on_mismatch = on_mismatch(cfg.skip_mismatched_samples);
    let pad_id = opts.pad_id.ok_or_else(|| {
        usage(format!(
            "{}: the tokenizer has no unknown token to pad with as LLaVA does under template {} \
             (tokenizer_config.json names no `unk_token` in the vocabulary, and there is no `<unk>`)",
            tokenizer.path.display(),
            template.name()
        ))
    })?;
    let pre = Preprocess::new(tokenizer, template, opts);
    let image_folder = cfg.image_folder.as_ref().map(PathBuf::from);
    let data = Dataset::load(
        Path::new(&cfg.data_path),
        &LoadSettings {
            preprocess: &pre,
            image_folder: image_folder.as_deref(),
            allow_outside_paths: cfg.allow_outside_paths,
            multimodal,
            skip_mismatched: cfg.skip_mismatched_samples,
        },
    )?;
    Ok((data, pad_id))
}

/// A standard normal draw (Box–Muller); torch's generator cannot be reproduced anyway.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn mean_rows(rows: &[Vec<f32>]) -> Vec<f32> {
    let h = rows.first().map_or(0, Vec::len);
    let mut acc = vec![0f64; h];
    for r in rows {
        for (a, x) in acc.iter_mut().zip(r) {
            *a += *x as f64;
        }
    }
    acc.into_iter()
        .map(|a| (a / rows.len().max(1) as f64) as f32)
        .collect()
}

/// LLaVA's `initialize_vision_tokenizer` with `pretrain_mm_mlp_adapter` (M6.4): copy the last
/// 2 rows of the saved `model.embed_tokens.weight` when it has the current shape, or its rows
/// when it has exactly 2; any other shape is an error (stages 1 and 2 grew different vocabs).
fn stage1_rows(path: &Path, w: &Weights, embed: Tensor) -> Result<Tensor> {
    if !w.contains("model.embed_tokens.weight") {
        return Ok(embed);
    }
    let saved = w.get_any_shape("model.embed_tokens.weight")?;
    let (rows, width) = saved.dims2()?;
    let (v, h) = embed.dims2()?;
    let tail = if (rows, width) == (v, h) {
        saved.narrow(0, v - 2, 2)?
    } else if (rows, width) == (2, h) {
        saved
    } else {
        return Err(usage(format!(
            "{}: model.embed_tokens.weight is [{rows}, {width}], this run's vocabulary is \
             [{v}, {h}] (stage 1 and stage 2 must use templates that grow the vocabulary \
             alike, e.g. v0_plain then v1/llava_llama_2)",
            path.display()
        )));
    };
    Ok(Tensor::cat(&[&embed.narrow(0, 0, v - 2)?, &tail], 0)?)
}
