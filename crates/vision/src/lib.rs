//! `sightline-vision`: LLaVA-style vision-language models.
pub mod batch_generate;
pub mod builtin;
pub mod clip;
pub mod error;
pub use error::{Error, Result};
pub mod conversation;
pub mod llava;
pub mod preprocess;
pub mod projector;
pub mod splice;

/// The decoded RGB image type that image hooks (corruptions) transform.
pub use image::RgbImage;
