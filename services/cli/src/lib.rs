//! The `tether` command's building blocks, usable from tests and tools.

pub mod audit;
pub mod login;
pub mod policy;
pub mod quarantine;
pub mod session;
