//! The image tasks' shared document plumbing (`spec/multimodal-eval.md` E3): where images come
//! from and how they are decoded, a document's protocol and demos, its generation request, and
//! reading record files. How the requests prompt and decode is [`crate::protocol`].
//!
//! Images: a document's `image_ref` is a file path, or `bundled:<path under data/>` for the
//! images compiled into the binary. Every image is decoded by [`load_image`], the one place a
//! later image transformation (corruptions) hooks in.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sightline_guard::Folder;
use sightline_vision::preprocess::decode_rgb;
use sightline_vision::RgbImage;

use crate::data::{bundled_image, DataSource};
use crate::error::{Error, Result};
use crate::protocol::{MmDecoding, Protocol};
use crate::task::{field, Request};

/// Prefix of `image_ref`s that name a bundled image.
pub const BUNDLED: &str = "bundled:";

/// The `image_ref` of an image at `rel` under the task's image root: `--image-root/rel`, else
/// `--data-dir/<bundled_dir>/rel` or the bundled copy when the task bundles its images, else
/// `null` (the task needs `--image-root`). `rel` comes from a task file (`file`, record
/// `record`): it may not leave its folder unless `--allow-outside-paths` was given.
pub fn image_ref(
    data: &DataSource,
    rel: &str,
    bundled_dir: Option<&str>,
    (file, record): (&str, usize),
) -> Result<Value> {
    let inside = |folder: &Path| {
        Folder::new(folder, data.allow_outside_paths)
            .and_then(|f| f.join(rel))
            .map(|p| json!(p.display().to_string()))
            .map_err(|e| Error::data(file, record, format!("field `image`: {e}")))
    };
    match (&data.image_root, bundled_dir, &data.dir) {
        (Some(root), _, _) => inside(root),
        (None, Some(b), Some(dir)) => inside(&dir.join(b)),
        (None, Some(b), None) => Ok(json!(format!("{BUNDLED}{b}/{rel}"))),
        (None, None, _) => Ok(Value::Null),
    }
}

/// Whether the image an `image_ref` names exists.
pub fn image_available(image_ref: &str) -> bool {
    match image_ref.strip_prefix(BUNDLED) {
        Some(rel) => bundled_image(rel).is_some(),
        None => Path::new(image_ref).is_file(),
    }
}

/// Decodes the image an `image_ref` names into RGB (Pillow's `convert("RGB")`). Every image of
/// every image task passes through here: the hook for transforming decoded images.
pub fn load_image(image_ref: &str) -> Result<RgbImage> {
    let (bytes, path) = image_bytes(image_ref)?;
    decode_rgb(&bytes, &path).map_err(|e| Error::Config(e.to_string()))
}

/// The file an `image_ref` names, as stored (what an API model is sent), and the path it is
/// reported under.
pub fn image_bytes(image_ref: &str) -> Result<(Vec<u8>, PathBuf)> {
    Ok(match image_ref.strip_prefix(BUNDLED) {
        Some(rel) => (
            bundled_image(rel)
                .ok_or_else(|| Error::Config(format!("no bundled image data/{rel}")))?
                .to_vec(),
            PathBuf::from(format!("<embedded>/data/{rel}")),
        ),
        None => {
            let p = PathBuf::from(image_ref);
            (std::fs::read(&p).map_err(|e| Error::io(&p, e))?, p)
        }
    })
}

/// The protocol an image document was built under (its `protocol` field).
pub fn doc_protocol(doc: &Value) -> Result<Protocol> {
    Protocol::parse(field(doc, "protocol")?)
        .ok_or_else(|| Error::Config(format!("document has an unknown protocol: {doc}")))
}

/// A document's demonstration turns (`demos`: `[[question, answer], ...]`); none when absent.
pub fn doc_demos(doc: &Value) -> Vec<(String, String)> {
    doc["demos"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    (
                        d[0].as_str().unwrap_or("").to_string(),
                        d[1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The generation request of an image document (`image` and `image_ref` fields) for `context`.
pub fn image_request(doc: &Value, context: String, decoding: MmDecoding) -> Result<Request> {
    Ok(Request::GenerateImage {
        context,
        image: doc
            .get("image")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Config(format!("document has no `image`: {doc}")))?
            .to_string(),
        image_ref: doc["image_ref"].as_str().unwrap_or("").to_string(),
        decoding,
    })
}

/// Parses a JSON array file of records (Unicorn) or JSON Lines (POPE's `.json` files are JSON
/// Lines); errors name the file and the 1-based record.
pub fn read_records(data: &DataSource, rel: &str, json_lines: bool) -> Result<Vec<Value>> {
    let text = data.read_text(rel)?;
    let name = data.describe(rel);
    if json_lines {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::data(&name, i + 1, e.to_string()))
            })
            .collect()
    } else {
        match serde_json::from_str(&text) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(_) => Err(Error::data(&name, 0, "expected a JSON array of records")),
            Err(e) => Err(Error::data(&name, e.line(), e.to_string())),
        }
    }
}

/// A string field of a data record, or an error naming the file, record and field.
pub fn str_field<'a>(rec: &'a Value, key: &str, file: &str, record: usize) -> Result<&'a str> {
    rec.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::data(file, record, format!("no string field `{key}`")))
}
