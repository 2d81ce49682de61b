//! COCO and Flickr30k captioning (Karpathy test splits) as Sight-Beyond-Text's
//! `evaluate_coco_flickr` runs them (`spec/multimodal-eval.md` E5). User-supplied: SBT's
//! post-processed files (Google-Drive links in SBT's `llava/eval/README.md`) in one folder,
//! `--coco-caption-dir DIR` (`mscoco_train.json`, `mscoco_test.json`, `test_images/`) or
//! `--flickr30k-caption-dir DIR` (`flickr30k_train.json`, `flickr30k_test.json`,
//! `test_images/`); `--image-root` overrides `test_images/`. Each file is a list of
//! `{"image_name", "captions": [...], "image_id"?}`; the image is `image_name`, or
//! `COCO_test2014_%012d.jpg` when `image_id` is present (as SBT names it).
//!
//! Demos: numpy `seed(42)`, a pool of `choice(len(train), 5000, replace=False)`; for each test
//! image `random.sample(pool, 3)` and, per demo, `np.random.choice(captions).strip()`, each
//! demo asking "Please provide a description of the picture.". SBT leaves Python's `random`
//! unseeded there, so its demos cannot be reproduced; sightline seeds it with 42 (recorded in
//! the docs). The whole test file is evaluated.
//!
//! Prediction: the protocol's answer text with every `"` removed (under `sbt` the raw output,
//! capped at 10 new tokens as SBT's scripts leave it, `###` included). Scores: PTB-tokenised
//! BLEU-1..4, ROUGE-L and CIDEr-D (`sightline_metrics::caption`, equal to pycocoevalcap),
//! multiplied by 100 as SBT reports them. **METEOR and SPICE are absent**: they need Java and
//! their jars, which sightline does not run; they are not in the results rather than faked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sightline_guard::Folder;
use sightline_metrics::caption::score;
use sightline_random::{PyRandom, RandomState};

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::mm::{doc_demos, doc_protocol, image_request};
use crate::task::{int_field, Metric, Request, Response, Task};

/// SBT's `max_generation_length` default (captions are capped too).
const SBT_MAX_NEW_TOKENS: usize = 10;
const POOL: usize = 5000;
const DEMOS: usize = 3;
/// SBT's captioning query.
pub const QUERY: &str = "Please provide a description of the picture.";

const METRICS: &[Metric] = &[
    Metric::corpus("BLEU_1"),
    Metric::corpus("BLEU_2"),
    Metric::corpus("BLEU_3"),
    Metric::corpus("BLEU_4"),
    Metric::corpus("ROUGE_L"),
    Metric::corpus("CIDEr"),
];

/// One captioning benchmark.
pub struct Caption {
    pub name: &'static str,
    /// File prefix: `mscoco` or `flickr30k`.
    pub prefix: &'static str,
    pub flag: &'static str,
}

pub const COCO: Caption = Caption {
    name: "coco_caption",
    prefix: "mscoco",
    flag: "--coco-caption-dir",
};
pub const FLICKR30K: Caption = Caption {
    name: "flickr30k_caption",
    prefix: "flickr30k",
    flag: "--flickr30k-caption-dir",
};

/// One record of SBT's caption files.
struct Entry {
    image: String,
    captions: Vec<String>,
}

fn read_entries(path: &Path) -> Result<Vec<Entry>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::data(&name, e.line(), format!("not valid JSON: {e}")))?;
    let items = v
        .as_array()
        .ok_or_else(|| Error::data(&name, 0, "expected a JSON array of records"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let captions = r["captions"]
                .as_array()
                .ok_or_else(|| Error::data(&name, i + 1, "no `captions` list"))?
                .iter()
                .map(|c| {
                    c.as_str().map(str::to_string).ok_or_else(|| {
                        Error::data(&name, i + 1, "field `captions` holds a non-string")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if captions.is_empty() {
                return Err(Error::data(&name, i + 1, "empty `captions`"));
            }
            let image = match r.get("image_id").and_then(Value::as_i64) {
                Some(id) => format!("COCO_test2014_{id:012}.jpg"),
                None => r["image_name"]
                    .as_str()
                    .ok_or_else(|| Error::data(&name, i + 1, "no string `image_name`"))?
                    .to_string(),
            };
            Ok(Entry { image, captions })
        })
        .collect()
}

fn prediction(doc: &Value, r: &[Response]) -> Result<String> {
    let p = doc_protocol(doc)?;
    let raw = r.first().map(Response::text).unwrap_or("");
    Ok(p.answer_text(raw).replace('"', ""))
}

impl Caption {
    fn dir<'a>(&self, data: &'a DataSource) -> Option<&'a PathBuf> {
        match self.prefix {
            "mscoco" => data.coco_caption_dir.as_ref(),
            _ => data.flickr30k_caption_dir.as_ref(),
        }
    }
}

impl Task for Caption {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> u32 {
        0
    }
    fn needs_images(&self) -> bool {
        true
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        let dir = self.dir(data).ok_or_else(|| {
            Error::Config(format!(
                "{}: not bundled: pass {} DIR (SBT's {p}_train.json, {p}_test.json and test_images/)",
                self.name,
                self.flag,
                p = self.prefix
            ))
        })?;
        let train = read_entries(&dir.join(format!("{}_train.json", self.prefix)))?;
        let test = read_entries(&dir.join(format!("{}_test.json", self.prefix)))?;
        if train.len() < POOL || train.len() > u32::MAX as usize {
            return Err(Error::Config(format!(
                "{}: {} training records; SBT draws its demo pool of {POOL} from them",
                dir.join(format!("{}_train.json", self.prefix)).display(),
                train.len()
            )));
        }
        let images = data
            .image_root
            .clone()
            .unwrap_or_else(|| dir.join("test_images"));
        // Image names come from the test file; they may not leave the image folder.
        let test_file = dir.join(format!("{}_test.json", self.prefix));
        let images = Folder::new(&images, data.allow_outside_paths)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut np = RandomState::from_u32(42);
        let pool = np.choice_without_replacement(train.len(), POOL);
        let mut py = PyRandom::from_int(42);
        test.iter()
            .enumerate()
            .map(|(i, e)| {
                let picks = py
                    .sample_indices(POOL, DEMOS)
                    .ok_or_else(|| Error::Config("internal: demo sampling".into()))?;
                let demos: Vec<Value> = picks
                    .iter()
                    .map(|&j| {
                        let caps = &train[pool[j]].captions;
                        json!([
                            QUERY,
                            caps[np.randint(0, caps.len() as i64) as usize].trim()
                        ])
                    })
                    .collect();
                Ok(json!({
                    "record": i,
                    "image": e.image,
                    "image_ref": images
                        .join(&e.image)
                        .map_err(|err| {
                            Error::data(
                                &test_file.display().to_string(),
                                i,
                                format!("field `image`: {err}"),
                            )
                        })?
                        .display()
                        .to_string(),
                    "captions": e.captions,
                    "demos": demos,
                    "protocol": data.protocol.name(),
                }))
            })
            .collect()
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        let p = doc_protocol(doc)?;
        let demos = doc_demos(doc);
        let record = int_field(doc, "record")? as usize;
        Ok(vec![image_request(
            doc,
            p.prompt(QUERY, &demos)?,
            p.decoding(SBT_MAX_NEW_TOKENS, record),
        )?])
    }
    fn process_results(&self, _doc: &Value, _r: &[Response]) -> Result<Vec<f64>> {
        Ok(vec![f64::NAN; METRICS.len()])
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        let mut cands = Vec::with_capacity(docs.len());
        let mut refs: HashMap<String, Vec<String>> = HashMap::new();
        for (doc, r) in docs.iter().zip(responses) {
            let id = int_field(doc, "record")?.to_string();
            let caps: Vec<String> = doc["captions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            refs.insert(id.clone(), caps);
            cands.push((id, prediction(doc, r)?));
        }
        let s = score(&cands, &refs).map_err(|e| Error::Config(format!("{}: {e}", self.name)))?;
        let mut out: Vec<f64> = s.bleu.iter().map(|b| 100.0 * b).collect();
        out.push(100.0 * s.rouge_l);
        out.push(100.0 * s.cider_d);
        Ok(out)
    }
    fn extracted(&self, doc: &Value, r: &[Response]) -> Option<Value> {
        prediction(doc, r).ok().map(Value::String)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;

    pub(crate) fn write_split(dir: &Path, prefix: &str, n_train: usize, n_test: usize) {
        let train: Vec<Value> = (0..n_train)
            .map(|i| json!({"image_name": format!("t{i}.jpg"), "captions": [format!(" train {i} a "), format!("train {i} b")]}))
            .collect();
        let test: Vec<Value> = (0..n_test)
            .map(|i| json!({"image_name": format!("x{i}.jpg"), "captions": ["a dog on the grass", "a brown dog runs"]}))
            .collect();
        std::fs::write(
            dir.join(format!("{prefix}_train.json")),
            json!(train).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}_test.json")),
            json!(test).to_string(),
        )
        .unwrap();
    }

    #[test]
    fn demos_come_from_the_seeded_pool_and_scores_are_times_100() {
        let tmp = tempfile::tempdir().unwrap();
        write_split(tmp.path(), "mscoco", 20_000, 2);
        let data = DataSource {
            coco_caption_dir: Some(tmp.path().to_path_buf()),
            protocol: Protocol::Sbt,
            ..Default::default()
        };
        let docs = COCO.docs(&data).unwrap();
        assert_eq!(docs.len(), 2);
        // Pool = numpy choice(20000, 5000) (starts 10650, 2041, 8668); the first test image's
        // demos are Python's seed-42 `sample(range(5000), 3)` of it.
        let pool = RandomState::from_u32(42).choice_without_replacement(20_000, POOL);
        let picks = PyRandom::from_int(42).sample_indices(POOL, 3).unwrap();
        // CPython 3.11: random.seed(42); random.sample(range(5000), 3)
        assert_eq!(picks, [912, 204, 2253]);
        let got: Vec<&str> = docs[0]["demos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[1].as_str().unwrap())
            .collect();
        for (g, j) in got.iter().zip(picks) {
            assert!(g.starts_with(&format!("train {} ", pool[j])), "{g}");
            assert_eq!(*g, g.trim());
        }
        let ctx = match &COCO.requests(&docs[0]).unwrap()[0] {
            Request::GenerateImage { context, .. } => context.clone(),
            other => panic!("{other:?}"),
        };
        assert!(ctx.ends_with(
            "###Human: <image>\nPlease provide a description of the picture.###Assistant:"
        ));
        assert_eq!(ctx.matches("Please provide a description").count(), 4);
        let r1 = [Response::Generated(" \"a dog on the grass\"###".into())];
        let r2 = [Response::Generated(" a cat".into())];
        let d: Vec<&Value> = docs.iter().collect();
        let m = COCO.corpus_metrics(&d, &[&r1, &r2]).unwrap();
        assert_eq!(m.len(), 6);
        assert!(m.iter().all(|x| x.is_finite() && *x >= 0.0));
        assert!(
            m[0] > 1.0,
            "BLEU-1 is reported on SBT's 0..100 scale: {m:?}"
        );
        assert_eq!(
            COCO.extracted(&docs[0], &r1),
            Some(json!(" a dog on the grass###"))
        );
    }

    #[test]
    fn absent_data_names_the_flag() {
        let e = FLICKR30K
            .docs(&DataSource::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--flickr30k-caption-dir"), "{e}");
    }
}
