//! The operator's commands behind the `libero` binary. Each command is a module, usable
//! from tests and scripts as a library too.

pub mod account;
pub mod adopt;
pub mod analytics;
pub mod args;
pub mod cli;
pub mod migrate;
pub mod pg;
pub mod push;
pub mod runtime_config;
pub mod stripe;
