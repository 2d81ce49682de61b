//! `sightline-guard`: what a file from elsewhere may make sightline do.
//!
//! sightline reads training JSON written by other tools, task files, checkpoints from hubs and
//! images from the web. Three questions are answered once, here, for every reader:
//!
//! - [`paths`]: may a path named *inside* such a file (a record's `image`, a shard in an
//!   index) leave the folder it is relative to? Not unless the user says so
//!   (`--allow-outside-paths`).
//! - [`limits`]: how big may a declared size (a header, a vocabulary, an image) be before
//!   anything is allocated for it? Each limit has a documented default and an environment
//!   variable that raises it for legitimate giants.
//! - [`temp`]: under which name is an output written before it is complete, and who removes
//!   the temporaries a killed run left? (`.<name>.tmp-<pid>`, swept by the next run.)
//!
//! The crate sits on floor 0 (std and `thiserror` only) so that every reader can use it.

pub mod limits;
pub mod paths;
pub mod temp;

pub use limits::{read_capped, Limit, LimitError, ReadError};
pub use paths::{Folder, PathError, ALLOW_OUTSIDE_FLAG};
