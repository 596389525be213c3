//! One module per subcommand (as cargo's `commands/<name>.rs`): each turns its flags
//! ([`crate::args`]) into library settings, calls `konv-train`, and prints.

mod dense;
mod eval;
mod filters;
pub(crate) mod folder;
mod predict;
mod tools;
mod train;

pub(crate) use dense::*;
pub(crate) use eval::*;
pub(crate) use filters::*;
pub(crate) use folder::cmd_export;
pub(crate) use predict::*;
pub(crate) use tools::*;
pub(crate) use train::*;
