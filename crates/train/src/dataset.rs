//! Training data: LLaVA JSON records → token ids and labels (spec T2, T6, via
//! [`sightline_data::labels`]), the seeded epoch order, and collation into micro-batches
//! (T7: truncate to `model_max_length`, right-pad ids with the pad id and labels with −100).
//!
//! Records are tokenized once when the run starts (LLaVA's `lazy_preprocess` does it per item;
//! the result is the same), so a bad record stops the run before the first step, with its file,
//! index and field. Images are loaded per batch.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sightline_data::labels::{OnMismatch, Preprocess, IMAGE_TOKEN_INDEX};
use sightline_data::stream::{self, Flow};
use sightline_data::Record;
use sightline_guard::Folder;

use crate::error::{Error, Result};
use crate::loss::IGNORE_INDEX;

/// One tokenized training record.
#[derive(Debug, Clone)]
pub struct TrainSample {
    /// 0-based index in the data file (for messages and the recorded order).
    pub index: usize,
    pub id: Option<String>,
    /// Token ids; [`IMAGE_TOKEN_INDEX`] (−200) where the image features go.
    pub input_ids: Vec<i64>,
    /// Same length; −100 where no loss is taken.
    pub labels: Vec<i64>,
    /// The image file, resolved against the image folder.
    pub image: Option<PathBuf>,
}

/// The tokenized training set.
pub struct Dataset {
    pub samples: Vec<TrainSample>,
    /// Records skipped because LLaVA's round arithmetic disagreed with the tokenization
    /// (only with `skip_mismatched_samples`).
    pub skipped_mismatch: usize,
    pub path: PathBuf,
}

/// How records become samples.
pub struct LoadSettings<'a> {
    pub preprocess: &'a Preprocess<'a>,
    /// Where `image` paths resolve; None = the data file's directory.
    pub image_folder: Option<&'a Path>,
    /// Let `image` paths leave the image folder (`allow_outside_paths`); off, a record whose
    /// image is absolute, climbs out with `..` or goes through a symlink out is refused.
    pub allow_outside_paths: bool,
    /// A vision tower is loaded: image records are allowed (and their images must exist).
    pub multimodal: bool,
    pub skip_mismatched: bool,
}

impl Dataset {
    /// Reads and tokenizes every record of `path`.
    pub fn load(path: &Path, s: &LoadSettings) -> Result<Self> {
        let folder = s
            .image_folder
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
        let guard = Folder::new(&folder, s.allow_outside_paths)
            .map_err(|e| Error::Data(format!("image_folder: {e}")))?;
        let mut samples = Vec::new();
        let mut skipped = 0;
        stream::for_each(path, |index, value| {
            let record = Record::from_value(&value).map_err(|problem| {
                sightline_data::Error::record(
                    path,
                    index,
                    sightline_data::record::id_of(&value).as_deref(),
                    problem,
                )
            })?;
            let at = |msg: String| {
                sightline_data::Error::record(
                    path,
                    index,
                    record.id.as_deref(),
                    sightline_data::Problem::new("image", msg),
                )
            };
            let image = match &record.image {
                None => None,
                Some(_) if !s.multimodal => {
                    return Err(at(
                        "the record has an image but the run has no vision_tower (a text-only \
                         run: remove images with `sightline data strip-images`, or set \
                         vision_tower)"
                            .into(),
                    ))
                }
                Some(rel) => {
                    let p = guard.join(rel).map_err(|e| at(e.to_string()))?;
                    if !p.is_file() {
                        return Err(at(format!(
                            "image file {} does not exist (image_folder is {})",
                            p.display(),
                            folder.display()
                        )));
                    }
                    Some(p)
                }
            };
            let sample = match s.preprocess.sample(&record) {
                Ok(sample) if sample.mismatch => {
                    skipped += 1;
                    return Ok(Flow::Continue);
                }
                Ok(sample) => sample,
                Err(e) => return Err(e.at(path, index)),
            };
            if sample
                .input_ids
                .iter()
                .filter(|&&t| t == IMAGE_TOKEN_INDEX)
                .count()
                > 1
            {
                return Err(at(
                    "more than one <image> after preprocessing (sightline trains one image per \
                     record)"
                        .into(),
                ));
            }
            samples.push(TrainSample {
                index,
                id: record.id.clone(),
                input_ids: sample.input_ids,
                labels: sample.labels,
                image,
            });
            Ok(Flow::Continue)
        })?;
        if samples.is_empty() {
            return Err(Error::Data(format!(
                "{}: no training samples ({skipped} skipped for tokenization mismatches)",
                path.display()
            )));
        }
        Ok(Self {
            samples,
            skipped_mismatch: skipped,
            path: path.to_path_buf(),
        })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// What [`Preprocess`] should do on a mismatch for `skip`.
pub fn on_mismatch(skip: bool) -> OnMismatch {
    if skip {
        OnMismatch::MaskAll
    } else {
        OnMismatch::Error
    }
}

/// The order of epoch `epoch`: a permutation of the sample indices drawn from
/// `seed + epoch` by [`sightline_data::sample::permutation`] (ChaCha20 + Fisher–Yates,
/// machine-independent). HF's `RandomSampler` draws from torch's generator, which cannot be
/// reproduced outside torch (spec T10.7); the order used is written to the run directory.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    sightline_data::sample::permutation(n, seed.wrapping_add(epoch as u64))
}

/// A collated micro-batch before image features are attached.
pub struct Collated {
    /// `[b, t]` u32 (the image marker replaced by the pad id; its position is in `image_pos`).
    pub input_ids: Tensor,
    /// `[b, t]` i64.
    pub labels: Tensor,
    /// Per row: where the image goes and its file.
    pub images: Vec<Option<(usize, PathBuf)>>,
}

/// T7: truncate each sample to `max_len` (before splicing, so a spliced row can be longer),
/// right-pad ids with `pad_id` and labels with −100.
pub fn collate(
    samples: &[&TrainSample],
    max_len: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Collated> {
    let t = samples
        .iter()
        .map(|s| s.input_ids.len().min(max_len))
        .max()
        .unwrap_or(0);
    if t == 0 {
        return Err(Error::Batch("a micro-batch has no tokens".into()));
    }
    let b = samples.len();
    let mut ids = vec![pad_id; b * t];
    let mut labels = vec![IGNORE_INDEX; b * t];
    let mut images = Vec::with_capacity(b);
    for (r, s) in samples.iter().enumerate() {
        let n = s.input_ids.len().min(max_len);
        let mut pos = None;
        for (i, (&id, &label)) in s.input_ids[..n].iter().zip(&s.labels[..n]).enumerate() {
            if id == IMAGE_TOKEN_INDEX {
                pos = Some(i);
                ids[r * t + i] = pad_id;
            } else {
                ids[r * t + i] = u32::try_from(id).map_err(|_| {
                    Error::Batch(format!("record {}: token id {id} is negative", s.index))
                })?;
            }
            labels[r * t + i] = label;
        }
        images.push(match (&s.image, pos) {
            (Some(path), Some(p)) => Some((p, path.clone())),
            // Truncation cut the marker off (LLaVA would then splice nothing either).
            (Some(_), None) => None,
            (None, Some(_)) => {
                return Err(Error::Batch(format!(
                    "record {}: an image marker but no image file",
                    s.index
                )))
            }
            (None, None) => None,
        });
    }
    Ok(Collated {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        labels: Tensor::from_vec(labels, (b, t), device)?,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(index: usize, ids: &[i64], labels: &[i64], image: bool) -> TrainSample {
        TrainSample {
            index,
            id: None,
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
            image: image.then(|| PathBuf::from("x.png")),
        }
    }

    #[test]
    fn collate_truncates_pads_and_finds_the_image() {
        let a = sample(0, &[1, -200, 5, 6, 7], &[-100, -100, 5, 6, 7], true);
        let b = sample(1, &[1, 9], &[-100, 9], false);
        let c = collate(&[&a, &b], 4, 0, &Device::Cpu).expect("collate");
        assert_eq!(
            c.input_ids.to_vec2::<u32>().expect("ids"),
            vec![vec![1, 0, 5, 6], vec![1, 9, 0, 0]]
        );
        assert_eq!(
            c.labels.to_vec2::<i64>().expect("labels"),
            vec![vec![-100, -100, 5, 6], vec![-100, 9, -100, -100]]
        );
        assert_eq!(c.images[0].as_ref().map(|x| x.0), Some(1));
        assert!(c.images[1].is_none());
    }

    #[test]
    fn epoch_orders_differ_per_epoch_and_repeat_per_seed() {
        assert_eq!(epoch_order(20, 42, 0), epoch_order(20, 42, 0));
        assert_ne!(epoch_order(20, 42, 0), epoch_order(20, 42, 1));
    }
}
