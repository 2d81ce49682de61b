//! One file per subcommand.

pub mod convert;
pub mod generate;
pub mod model_args;
pub mod score;
