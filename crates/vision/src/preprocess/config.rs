//! The processor's settings: HF `preprocessor_config.json` of a `CLIPImageProcessor`, read and
//! checked as transformers reads it, and LLaVA's `image_aspect_ratio`.

use std::path::Path;

use crate::{Error, Result};

/// OpenAI CLIP's per-channel mean (`OPENAI_CLIP_MEAN` in transformers).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation (`OPENAI_CLIP_STD` in transformers). Written
/// as transformers writes it; the f32 rounding is the same as numpy's `float32` of those values.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Largest `shortest_edge` / `crop_size` accepted (CLIP towers use 224..448); keeps the output
/// allocation sane whatever a config file says.
const MAX_SIDE: usize = 16_384;

/// Preprocessor settings, = HF `preprocessor_config.json` of a `CLIPImageProcessor`.
///
/// Resampling is always Pillow BICUBIC (`resample: 3`), the only value CLIP checkpoints use;
/// [`ImageProcessorConfig::from_file`] refuses any other.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// `size.shortest_edge`: the short side after resizing (the long side keeps the aspect ratio).
    pub shortest_edge: usize,
    /// Side of the square center crop.
    pub crop_size: usize,
    pub do_resize: bool,
    pub do_center_crop: bool,
    pub do_rescale: bool,
    /// Usually 1/255. Stored as f32; the standard value is mapped back to the exact float64
    /// `1/255` transformers multiplies with (otherwise 126 of 256 levels are one ulp off).
    pub rescale_factor: f32,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self::clip(224)
    }
}

impl ImageProcessorConfig {
    /// openai/clip-vit-large-patch14 settings for a given image size (224, or 336 for the
    /// `-336` tower): shortest edge and crop both `image_size`, rescale 1/255, CLIP mean/std.
    pub fn clip(image_size: usize) -> Self {
        Self {
            shortest_edge: image_size,
            crop_size: image_size,
            do_resize: true,
            do_center_crop: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }

    /// Parses a `preprocessor_config.json`.
    ///
    /// `CLIPImageProcessorFast` configs are accepted too: same fields, and LLaVA loads them with
    /// the (Pillow) `CLIPImageProcessor` class anyway.
    ///
    /// Accepts what transformers reads into a `CLIPImageProcessor`: `size` as an int or
    /// `{"shortest_edge": n}`, `crop_size` as an int or a square `{"height": n, "width": n}`,
    /// the `do_*` flags, `rescale_factor`, `image_mean`/`image_std` (3 numbers, or one number for
    /// all channels). Missing fields take `CLIPImageProcessor`'s defaults (= [`Self::clip`]`(224)`),
    /// unknown fields are ignored. Refused with an error naming the file and field: a processor
    /// type other than CLIP's (`image_processor_type` / `feature_extractor_type`), a fixed
    /// `{"height", "width"}` resize or a `longest_edge`, a non-square crop, `resample` other than
    /// 3 (BICUBIC), zero sizes, std of zero.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                path,
                std::io::Error::new(e.kind(), format!("cannot read preprocessor config: {e}")),
            )
        })?;
        Self::from_json_str(&text, path)
    }

    /// [`Self::from_file`] on text already read; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::format(
                path,
                format!("not valid JSON (expected a preprocessor config): {e}"),
            )
        })?;
        let obj = value.as_object().ok_or_else(|| {
            Error::format(path, "expected a JSON object (a preprocessor_config.json)")
        })?;
        let fields = Fields { obj, path };
        fields.check_processor_type()?;

        let mut cfg = Self::clip(224);
        if let Some(v) = obj.get("size") {
            cfg.shortest_edge = fields.shortest_edge(v)?;
        }
        if let Some(v) = obj.get("crop_size") {
            cfg.crop_size = fields.crop_size(v)?;
        }
        if let Some(v) = obj.get("resample") {
            if v.as_u64() != Some(3) {
                return Err(fields.bad(
                    "resample",
                    "3 (PIL BICUBIC, the only filter implemented)",
                    v,
                ));
            }
        }
        cfg.do_resize = fields.flag("do_resize", cfg.do_resize)?;
        cfg.do_center_crop = fields.flag("do_center_crop", cfg.do_center_crop)?;
        cfg.do_rescale = fields.flag("do_rescale", cfg.do_rescale)?;
        cfg.do_normalize = fields.flag("do_normalize", cfg.do_normalize)?;
        if let Some(v) = obj.get("rescale_factor") {
            match v.as_f64() {
                Some(x) if x.is_finite() => cfg.rescale_factor = x as f32,
                _ => return Err(fields.bad("rescale_factor", "a number", v)),
            }
        }
        if let Some(v) = obj.get("image_mean") {
            cfg.image_mean = fields.triple("image_mean", v)?;
        }
        if let Some(v) = obj.get("image_std") {
            cfg.image_std = fields.triple("image_std", v)?;
            if cfg.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                return Err(fields.bad("image_std", "finite non-zero numbers", v));
            }
        }
        Ok(cfg)
    }

    /// The float64 factor transformers multiplies with. The config keeps an f32, but
    /// transformers rescales in float64 with the JSON's (or its default's) double `1/255`; using
    /// `(1/255f32) as f64` instead changes the float32 result by one ulp for 126 of the 256 grey
    /// levels. So the standard factor maps back to the exact double.
    pub(super) fn rescale_factor_f64(&self) -> f64 {
        if self.rescale_factor == (1.0f64 / 255.0) as f32 {
            1.0 / 255.0
        } else {
            f64::from(self.rescale_factor)
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        for (on, name, v) in [
            (self.do_resize, "shortest_edge", self.shortest_edge),
            (self.do_center_crop, "crop_size", self.crop_size),
        ] {
            if on && !(1..=MAX_SIDE).contains(&v) {
                return Err(Error::Request(format!(
                    "image preprocessing: {name} = {v}, expected 1..={MAX_SIDE}"
                )));
            }
        }
        Ok(())
    }
}

/// How a non-square image is made square before the processor (LLaVA's `image_aspect_ratio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AspectMode {
    /// The processor directly (resize shortest side, center crop): the SBT default.
    #[default]
    Square,
    /// LLaVA-1.5's `expand2square`: pad to a square with the mean colour, then the processor.
    Pad,
}

impl AspectMode {
    /// Parses LLaVA's `image_aspect_ratio` values `"square"` and `"pad"`. (`"anyres"` is not
    /// supported and gives `None`, like any other string.)
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "square" => Some(Self::Square),
            "pad" => Some(Self::Pad),
            _ => None,
        }
    }
}

/// The fields of one `preprocessor_config.json`, read with errors that name the file and field.
struct Fields<'a> {
    obj: &'a serde_json::Map<String, serde_json::Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn bad(&self, field: &str, expected: &str, got: &serde_json::Value) -> Error {
        Error::format(
            self.path,
            format!("field `{field}`: expected {expected}, got {got}"),
        )
    }

    /// Only CLIP's processor (and its fast and feature-extractor names) is implemented.
    fn check_processor_type(&self) -> Result<()> {
        for (field, allowed) in [
            ("image_processor_type", "CLIPImageProcessor"),
            ("feature_extractor_type", "CLIPFeatureExtractor"),
        ] {
            if let Some(v) = self.obj.get(field) {
                match v.as_str() {
                    Some(s) if s == allowed || s == "CLIPImageProcessorFast" => {}
                    _ => {
                        return Err(self.bad(
                            field,
                            &format!("\"{allowed}\" (only CLIP preprocessing is implemented)"),
                            v,
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn positive(&self, field: &str, v: &serde_json::Value) -> Result<usize> {
        match v.as_u64() {
            Some(n) if n > 0 => usize::try_from(n)
                .map_err(|_| self.bad(field, "a positive integer that fits in memory", v)),
            _ => Err(self.bad(field, "a positive integer", v)),
        }
    }

    fn flag(&self, field: &str, default: bool) -> Result<bool> {
        match self.obj.get(field) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(field, "true or false", v)),
        }
    }

    /// `size`: an int, or `{"shortest_edge": n}`.
    fn shortest_edge(&self, v: &serde_json::Value) -> Result<usize> {
        match v {
            serde_json::Value::Object(m) => {
                if m.contains_key("longest_edge") || !m.contains_key("shortest_edge") {
                    return Err(self.bad(
                        "size",
                        "an integer or {\"shortest_edge\": n} (a fixed {\"height\", \"width\"} \
                         resize or a longest_edge limit is not CLIP's and not implemented)",
                        v,
                    ));
                }
                self.positive("size.shortest_edge", &m["shortest_edge"])
            }
            _ => self.positive("size", v),
        }
    }

    /// `crop_size`: an int, or a square `{"height": n, "width": n}`.
    fn crop_size(&self, v: &serde_json::Value) -> Result<usize> {
        match v {
            serde_json::Value::Object(m) => match (m.get("height"), m.get("width")) {
                (Some(h), Some(w)) => {
                    let (h, w) = (
                        self.positive("crop_size.height", h)?,
                        self.positive("crop_size.width", w)?,
                    );
                    if h != w {
                        return Err(self.bad("crop_size", "a square crop (height == width)", v));
                    }
                    Ok(h)
                }
                _ => Err(self.bad(
                    "crop_size",
                    "an integer or {\"height\": n, \"width\": n}",
                    v,
                )),
            },
            _ => self.positive("crop_size", v),
        }
    }

    /// `image_mean` / `image_std`: 3 numbers, or one number for all channels.
    fn triple(&self, field: &str, v: &serde_json::Value) -> Result<[f32; 3]> {
        let expected = "3 numbers (one per RGB channel) or one number";
        if let Some(x) = v.as_f64() {
            return Ok([x as f32; 3]);
        }
        match v
            .as_array()
            .map(|a| a.iter().map(|x| x.as_f64()).collect::<Vec<_>>())
        {
            Some(xs) if xs.len() == 3 && xs.iter().all(Option::is_some) => {
                let mut out = [0f32; 3];
                for (o, x) in out.iter_mut().zip(xs) {
                    *o = x.unwrap_or_default() as f32;
                }
                Ok(out)
            }
            _ => Err(self.bad(field, expected, v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("cfg/preprocessor_config.json")
    }

    #[test]
    fn aspect_modes_parse() {
        assert_eq!(AspectMode::parse("square"), Some(AspectMode::Square));
        assert_eq!(AspectMode::parse("pad"), Some(AspectMode::Pad));
        assert_eq!(AspectMode::parse("anyres"), None);
        assert_eq!(AspectMode::default(), AspectMode::Square);
    }

    #[test]
    fn config_old_style_clip_large() {
        // openai/clip-vit-large-patch14's preprocessor_config.json (feature-extractor era).
        let text = r#"{
          "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
          "feature_extractor_type": "CLIPFeatureExtractor",
          "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_std": [0.26862954, 0.26130258, 0.27577711],
          "resample": 3, "size": 224
        }"#;
        let cfg = ImageProcessorConfig::from_json_str(text, p()).unwrap();
        assert_eq!(cfg, ImageProcessorConfig::clip(224));
    }

    #[test]
    fn config_new_style_336() {
        let text = r#"{
          "crop_size": {"height": 336, "width": 336}, "do_convert_rgb": true,
          "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
          "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}
        }"#;
        let cfg = ImageProcessorConfig::from_json_str(text, p()).unwrap();
        assert_eq!(cfg, ImageProcessorConfig::clip(336));
        assert_eq!(cfg.rescale_factor_f64(), 1.0 / 255.0);
    }

    #[test]
    fn config_errors_name_file_and_field() {
        let cases = [
            (
                r#"{"image_processor_type": "SiglipImageProcessor"}"#,
                "image_processor_type",
            ),
            (r#"{"size": {"height": 384, "width": 384}}"#, "size"),
            (
                r#"{"size": {"shortest_edge": 224, "longest_edge": 448}}"#,
                "size",
            ),
            (r#"{"size": 0}"#, "size"),
            (r#"{"size": "224"}"#, "size"),
            (
                r#"{"crop_size": {"height": 224, "width": 300}}"#,
                "crop_size",
            ),
            (r#"{"crop_size": {"height": 224}}"#, "crop_size"),
            (r#"{"resample": 2}"#, "resample"),
            (r#"{"do_resize": "yes"}"#, "do_resize"),
            (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
            (r#"{"image_std": [0.5, 0.0, 0.5]}"#, "image_std"),
            (r#"[1, 2]"#, "JSON object"),
            (r#"{"size": 224"#, "JSON"),
        ];
        for (text, field) in cases {
            let err = ImageProcessorConfig::from_json_str(text, p())
                .unwrap_err()
                .to_string();
            assert!(err.contains("cfg/preprocessor_config.json"), "{err}");
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn config_scalar_mean_and_unknown_fields() {
        let text = r#"{"image_mean": 0.5, "image_std": [1, 1, 1], "whatever": {"x": 1}}"#;
        let cfg = ImageProcessorConfig::from_json_str(text, p()).unwrap();
        assert_eq!(cfg.image_mean, [0.5; 3]);
        assert_eq!(cfg.image_std, [1.0; 3]);
    }
}
