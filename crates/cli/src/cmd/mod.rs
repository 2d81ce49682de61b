//! One file per subcommand.

pub mod api_args;
pub mod convert;
pub mod data;
pub mod eval;
pub mod generate;
pub mod merge;
pub mod merge_lora;
pub mod model_args;
pub mod report;
pub mod score;
pub mod scoring_args;
pub mod serve;
pub mod study;
pub mod tasks;
pub mod train;
