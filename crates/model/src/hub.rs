//! Models named by Hugging Face Hub id (`meta-llama/Llama-2-7b-hf`, `org/name@revision`), as
//! transformers 4.46 / huggingface_hub 0.36 resolve them:
//!
//! 1. a spec that exists on disk is a local path (it wins over a Hub id of the same name);
//! 2. otherwise `org/name` or `name`, with `@revision` (branch, tag or 40-hex commit), is
//!    looked up in the local Hub cache ([`HubEnv::cache_dir`]): `models--{org}--{name}/refs/{rev}`
//!    holds a commit hash and `snapshots/{commit}/` the files (in real caches, relative
//!    symlinks into `blobs/`, which the file system follows); a commit goes straight to
//!    `snapshots/{commit}`;
//! 3. the snapshot must hold every file the use reads ([`Need`]); when it does not and
//!    `HF_HUB_OFFLINE` is not set, the missing files are downloaded into the same cache with
//!    the `hf-hub` crate (its `download` writes huggingface_hub's layout: blobs by etag,
//!    snapshot symlinks, `refs/{rev}`); offline, the error names the repository, revision,
//!    missing file and the cache directory, on one line.
//!
//! The download half is `hf-hub`'s; what is hand-written here is the cache *lookup* (a few
//! `read_to_string`/`is_file` calls on the documented layout), because `hf-hub` 0.5 has no
//! offline mode, no `HF_HUB_CACHE`/`TRANSFORMERS_CACHE`/`XDG_CACHE_HOME` and no commit pins.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What one use of a model reads: a snapshot missing any of it is completed (online) or
/// refused (offline) before loading starts, so nothing fails half-way through a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A model directory (LLaMA, original-layout LLaVA, llava-hf): `config.json`, weights
    /// (`model.safetensors`, or the index and every shard, or `pytorch_model.bin` [+ index])
    /// and `tokenizer.json`.
    Model,
    /// `tokenizer.json` alone (tokenizing data with a model's tokenizer).
    Tokenizer,
    /// A PEFT LoRA adapter: `adapter_config.json` + `adapter_model.safetensors` or `.bin`.
    Adapter,
    /// A CLIP vision tower: `config.json` + weights (+ `preprocessor_config.json` when the
    /// repository has one).
    VisionTower,
    /// A LLaVA stage-1 projector: `mm_projector.safetensors` or `mm_projector.bin` (+ the run's
    /// `config.json` when present); resolves to the projector file itself.
    Projector,
}

/// Weight files in the order `Weights::from_dir` prefers them (transformers' order).
const WEIGHTS: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];
const ADAPTER_WEIGHTS: [&str; 2] = ["adapter_model.safetensors", "adapter_model.bin"];
const PROJECTOR_FILES: [&str; 2] = ["mm_projector.safetensors", "mm_projector.bin"];

impl Need {
    /// What the use is called in errors.
    fn what(self) -> &'static str {
        match self {
            Need::Model => "model",
            Need::Tokenizer => "tokenizer",
            Need::Adapter => "adapter",
            Need::VisionTower => "vision tower",
            Need::Projector => "projector",
        }
    }

    /// Files read when present but not required (downloaded when the repository lists them).
    fn optional(self) -> &'static [&'static str] {
        match self {
            Need::Model => &[
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json",
                "preprocessor_config.json",
            ],
            Need::Tokenizer => &["tokenizer_config.json", "special_tokens_map.json"],
            Need::Adapter => &[],
            Need::VisionTower => &["preprocessor_config.json"],
            Need::Projector => &["config.json"],
        }
    }

    /// Required single files (the weights, one of several names, are separate).
    fn required(self) -> &'static [&'static str] {
        match self {
            Need::Model => &["config.json", "tokenizer.json"],
            Need::Tokenizer => &["tokenizer.json"],
            Need::Adapter => &["adapter_config.json"],
            Need::VisionTower => &["config.json"],
            Need::Projector => &[],
        }
    }

    /// The weight file names, in preference order (one of them is needed).
    fn weights(self) -> &'static [&'static str] {
        match self {
            Need::Model | Need::VisionTower => &WEIGHTS,
            Need::Adapter => &ADAPTER_WEIGHTS,
            Need::Projector => &PROJECTOR_FILES,
            Need::Tokenizer => &[],
        }
    }
}

/// Where a Hub spec resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSource {
    /// `org/name`.
    pub repo: String,
    /// The revision asked for (`main` when none was given).
    pub revision: String,
    /// The commit the revision pointed to.
    pub commit: String,
}

/// A resolved spec: a local path, or a file or directory inside a Hub cache snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The directory to load from ([`Need::Projector`]: the projector file).
    pub path: PathBuf,
    /// Set when the spec was a Hub id.
    pub hub: Option<HubSource>,
}

impl Resolved {
    /// What identifies the content for caches: `repo@commit` for a Hub id (so a moved branch
    /// is a different model), the spec as given for a local path.
    pub fn identity(&self, spec: &str) -> String {
        match &self.hub {
            Some(h) => format!("{}@{}", h.repo, h.commit),
            None => spec.to_string(),
        }
    }
}

/// The settings huggingface_hub reads from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEnv {
    /// The Hub cache: `TRANSFORMERS_CACHE` (transformers 4.46 passes it as `cache_dir`), else
    /// `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE` (or the legacy `TRANSFORMERS_OFFLINE`) is 1/ON/YES/TRUE.
    pub offline: bool,
    /// `HF_ENDPOINT` (default `https://huggingface.co`), without a trailing `/`.
    pub endpoint: String,
    /// `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`), else the token file (`HF_TOKEN_PATH`, default
    /// `$HF_HOME/token`).
    pub token: Option<String>,
}

impl HubEnv {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `var` (tests pass a map instead of mutating the process
    /// environment). Empty values count as unset.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let home = get("HOME").unwrap_or_default();
        let expand = |v: String| match v.strip_prefix("~/") {
            Some(rest) if !home.is_empty() => Path::new(&home).join(rest),
            _ => PathBuf::from(v),
        };
        let hf_home = get("HF_HOME").map(&expand).unwrap_or_else(|| {
            let xdg = get("XDG_CACHE_HOME")
                .map(&expand)
                .unwrap_or_else(|| Path::new(&home).join(".cache"));
            xdg.join("huggingface")
        });
        let cache_dir = [
            "TRANSFORMERS_CACHE",
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
        ]
        .iter()
        .find_map(|k| get(k))
        .map(&expand)
        .unwrap_or_else(|| hf_home.join("hub"));
        let truthy = |v: Option<String>| {
            v.is_some_and(|v| matches!(v.to_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
        };
        let offline = truthy(get("HF_HUB_OFFLINE").or_else(|| get("TRANSFORMERS_OFFLINE")));
        let endpoint = get("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_string();
        let token_file = get("HF_TOKEN_PATH")
            .map(&expand)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = get("HF_TOKEN")
            .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        Self {
            cache_dir,
            offline,
            endpoint,
            token,
        }
    }
}

/// A spec split into repository and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

/// huggingface_hub's `validate_repo_id`: `name` or `namespace/name`, each of word characters,
/// `-` and `.`, starting and ending with a word character, the name at most 96 characters, no
/// `--` or `..`, not ending in `.git`.
fn valid_repo_id(id: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars().all(|c| word(c) || c == '-' || c == '.')
            && p.starts_with(word)
            && p.ends_with(word)
    };
    let parts: Vec<&str> = id.split('/').collect();
    let name = parts[parts.len() - 1];
    parts.len() <= 2
        && parts.iter().all(|p| part_ok(p))
        && name.chars().count() <= 96
        && !id.contains("--")
        && !id.contains("..")
        && !id.ends_with(".git")
}

/// A 40-hex lowercase commit hash (huggingface_hub's `REGEX_COMMIT_HASH`).
fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

impl HubId {
    /// Parses `org/name[@revision]`; `None` when the spec is not a Hub id.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (spec, "main"),
        };
        let rev_ok = !revision.is_empty()
            && !revision.starts_with('/')
            && !revision
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..");
        (valid_repo_id(repo) && rev_ok).then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// `models--org--name`, the repository's folder in the cache.
    pub fn folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// The commit the revision names in `cache`, if the cache knows it.
    fn cached_commit(&self, cache: &Path) -> Option<String> {
        if is_commit(&self.revision) {
            return Some(self.revision.clone());
        }
        let r = cache.join(self.folder()).join("refs").join(&self.revision);
        let c = std::fs::read_to_string(r).ok()?.trim().to_string();
        is_commit(&c).then_some(c)
    }

    fn describe(&self) -> String {
        format!("Hub model `{}` (revision {})", self.repo, self.revision)
    }
}

/// Resolves `spec` with the process environment: see [`resolve_with`].
pub fn resolve(spec: &str, need: Need) -> Result<Resolved> {
    resolve_with(spec, need, &HubEnv::from_env())
}

/// [`resolve`] for a path argument (a non-UTF-8 path can only be local).
pub fn resolve_path(path: &Path, need: Need) -> Result<Resolved> {
    match path.to_str() {
        Some(s) => resolve(s, need),
        None => Ok(local(path)),
    }
}

fn local(path: &Path) -> Resolved {
    Resolved {
        path: path.to_path_buf(),
        hub: None,
    }
}

/// Resolves a local path or a Hub id to what to load from (see the module docs). A local
/// path is returned as given, unchecked: the loader's own errors describe what is wrong in it.
pub fn resolve_with(spec: &str, need: Need, env: &HubEnv) -> Result<Resolved> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(local(p));
    }
    let Some(id) = HubId::parse(spec) else {
        return Err(Error::format(
            p,
            format!(
                "no such file or directory, and not a Hub model id (expected a local {} path or \
                 org/name[@revision])",
                need.what()
            ),
        ));
    };
    let cache = &env.cache_dir;
    let cached = id.cached_commit(cache).map(|c| {
        let dir = cache.join(id.folder()).join("snapshots").join(&c);
        (c, dir)
    });
    let problem = match &cached {
        Some((commit, dir)) => match missing(dir, need)? {
            None => return Ok(finish(&id, commit, dir, need)),
            Some(file) => format!(
                "{file} is not in the cache {} (snapshot {commit})",
                cache.display()
            ),
        },
        None => format!(
            "the revision is not in the cache {} (no {}/refs/{})",
            cache.display(),
            id.folder(),
            id.revision
        ),
    };
    if env.offline {
        return Err(Error::Hub(format!(
            "{}: {problem}, and HF_HUB_OFFLINE is set so nothing is downloaded (not a local \
             path either)",
            id.describe()
        )));
    }
    let (commit, dir) = download::fetch(&id, need, env).map_err(|e| {
        Error::Hub(format!(
            "{}: {problem}, and the download failed: {e} (not a local path either)",
            id.describe()
        ))
    })?;
    match missing(&dir, need)? {
        None => Ok(finish(&id, &commit, &dir, need)),
        Some(file) => Err(Error::Hub(format!(
            "{} (commit {commit}): {file} is missing after the download into {}",
            id.describe(),
            dir.display()
        ))),
    }
}

fn finish(id: &HubId, commit: &str, dir: &Path, need: Need) -> Resolved {
    let path = match need {
        // `missing` returned None, so one of them is there.
        Need::Projector => PROJECTOR_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|f| f.is_file())
            .unwrap_or_else(|| dir.join(PROJECTOR_FILES[1])),
        _ => dir.to_path_buf(),
    };
    Resolved {
        path,
        hub: Some(HubSource {
            repo: id.repo.clone(),
            revision: id.revision.clone(),
            commit: commit.to_string(),
        }),
    }
}

/// The first file `need` lacks in `dir`, or `None` when the snapshot is complete. Weights are
/// taken in [`WEIGHTS`] order as the loader takes them: an index counts only with every shard.
fn missing(dir: &Path, need: Need) -> Result<Option<String>> {
    if !dir.is_dir() {
        return Ok(Some(format!("the snapshot directory {}", dir.display())));
    }
    if let Some(f) = need.required().iter().find(|f| !dir.join(f).is_file()) {
        return Ok(Some((*f).to_string()));
    }
    let names = need.weights();
    if names.is_empty() {
        return Ok(None);
    }
    for name in names {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        if !name.ends_with(".index.json") {
            return Ok(None);
        }
        let shards = shard_names(&path)?;
        return Ok(shards.into_iter().find(|s| !dir.join(s).is_file()));
    }
    Ok(Some(format!("{} (or {})", names[0], names[1..].join(", "))))
}

/// The shard files an index lists, sorted, refused when one would leave the snapshot.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for p in crate::weights::shards_from_index(index)? {
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        let inside = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let name = rel.to_str().filter(|_| inside).ok_or_else(|| {
            Error::format(
                index,
                format!(
                    "weight_map names `{}`, not a file inside the repository",
                    rel.display()
                ),
            )
        })?;
        out.push(name.to_string());
    }
    // By file name, so an error names the first missing shard as a listing would.
    out.sort();
    Ok(out)
}

/// Where a Hub id points in the cache, without checking the snapshot or downloading: call it
/// after loading (which downloaded what was missing). `None` for builtins, local paths and ids
/// whose revision the cache does not know.
pub fn cached_source(spec: &str) -> Option<HubSource> {
    if spec.starts_with("builtin:") || Path::new(spec).exists() {
        return None;
    }
    let id = HubId::parse(spec)?;
    let commit = id.cached_commit(&HubEnv::from_env().cache_dir)?;
    Some(HubSource {
        repo: id.repo,
        revision: id.revision,
        commit,
    })
}

/// What a result cache keys a model on: `repo@commit` for a Hub id the cache knows (see
/// [`cached_source`]), else `spec` as given.
pub fn identity(spec: &str) -> String {
    match cached_source(spec) {
        Some(h) => format!("{}@{}", h.repo, h.commit),
        None => spec.to_string(),
    }
}

mod download;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_follow_huggingface_hub() {
        for ok in [
            "gpt2",
            "meta-llama/Llama-2-7b-hf",
            "PahaII/MM-LLaMA-2-7B-lora",
            "openai/clip-vit-large-patch14",
            "a_b/c.d",
        ] {
            assert!(valid_repo_id(ok), "{ok}");
        }
        for bad in [
            "",
            "/abs/path",
            "./x",
            "../x",
            "a/b/c",
            "a--b",
            "a..b",
            "x.git",
            "-x",
            "x.",
            "a/",
            "has space",
        ] {
            assert!(!valid_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn spec_splits_at_the_revision() {
        let id = HubId::parse("org/name@v1.0").expect("id");
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("org/name", "v1.0")
        );
        assert_eq!(HubId::parse("org/name").expect("id").revision, "main");
        assert_eq!(
            HubId::parse("org/name@refs/pr/1").expect("id").revision,
            "refs/pr/1"
        );
        assert!(HubId::parse("org/name@").is_none());
        assert!(HubId::parse("org/name@../x").is_none());
        assert_eq!(HubId::parse("o/n").expect("id").folder(), "models--o--n");
    }

    #[test]
    fn cache_dir_order_follows_transformers() {
        let env = |pairs: &[(&str, &str)]| {
            let m: std::collections::HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            HubEnv::from_lookup(move |k| m.get(k).cloned())
        };
        let all = [
            ("HOME", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("HF_HOME", "/hf"),
            ("HUGGINGFACE_HUB_CACHE", "/legacy"),
            ("HF_HUB_CACHE", "/hub"),
            ("TRANSFORMERS_CACHE", "/tc"),
        ];
        let expect = ["/h/.cache/huggingface/hub", "/x/huggingface/hub", "/hf/hub"];
        for (n, want) in expect.iter().enumerate() {
            assert_eq!(env(&all[..n + 1]).cache_dir, Path::new(want));
        }
        for n in 4..=all.len() {
            assert_eq!(env(&all[..n]).cache_dir, Path::new(all[n - 1].1));
        }
        assert_eq!(env(&[("HF_HUB_CACHE", "~/c")]).cache_dir, Path::new("~/c"));
        assert_eq!(
            env(&[("HOME", "/h"), ("HF_HUB_CACHE", "~/c")]).cache_dir,
            Path::new("/h/c")
        );
        assert!(env(&[("HF_HUB_OFFLINE", "yes")]).offline);
        assert!(env(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
        assert!(!env(&[("HF_HUB_OFFLINE", "0")]).offline);
        let e = env(&[("HF_ENDPOINT", "http://m/"), ("HF_TOKEN", " t ")]);
        assert_eq!(
            (e.endpoint.as_str(), e.token.as_deref()),
            ("http://m", Some("t"))
        );
    }
}
