//! Parameters and results per method family, shared by the agent and Rust consoles.

pub mod sys;
