//! Evaluation metrics (pure Rust, no ML dependencies).
