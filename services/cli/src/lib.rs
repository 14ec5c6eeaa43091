//! The `tether` command's building blocks, usable from tests and tools.

pub mod login;
pub mod policy;
